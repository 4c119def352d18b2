"""dlcourse.clip.load_pretrained: a small randomly initialised open_clip model saved to disk and loaded back
offline, and the errors for missing weights or a missing open_clip."""
import sys

import pytest
import torch
import torch.nn.functional as F

from dlcourse.clip import load_pretrained

TINY = ('{"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, '
        '"patch_size": 16}, "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, '
        '"layers": 1}}')


@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory):
    open_clip = pytest.importorskip("open_clip")
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("open_clip")
    (folder / "dlcourse-tiny-test.json").write_text(TINY)
    open_clip.add_model_config(folder / "dlcourse-tiny-test.json")
    torch.manual_seed(0)
    model = open_clip.create_model("dlcourse-tiny-test").eval()
    weights = folder / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return open_clip, model, weights


def test_a_locally_saved_open_clip_model_loads_with_the_same_interface(tiny_open_clip):
    open_clip, model, weights = tiny_open_clip
    clip = load_pretrained("dlcourse-tiny-test", weights)
    texts = ["a red rose", "a white tulip on green grass"]
    text = clip.encode_text(texts)
    with torch.no_grad():
        expected_text = F.normalize(model.encode_text(open_clip.get_tokenizer("dlcourse-tiny-test")(texts)), dim=-1)
    assert text.shape == (2, 16) and torch.allclose(text, expected_text, atol=1e-5)
    assert torch.allclose(text.norm(dim=1), torch.ones(2), atol=1e-5)

    images = torch.rand(3, 3, 16, 16) * 2 - 1  # [−1, 1] at 16×16: resized to 32×32 and normalised inside
    image = clip.encode_image(images)
    x = F.interpolate((images + 1) / 2, size=(32, 32), mode="bicubic", align_corners=False).clamp(0, 1)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN)[None, :, None, None]
    std = torch.tensor(open_clip.OPENAI_DATASET_STD)[None, :, None, None]
    with torch.no_grad():
        expected_image = F.normalize(model.encode_image((x - mean) / std), dim=-1)
    assert image.shape == (3, 16) and torch.allclose(image, expected_image, atol=1e-5)
    assert clip.image_size == 32 and clip.embed_dim == 16


def test_missing_weights_say_what_to_download_and_where(tiny_open_clip, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no weights on disk .*missing\.safetensors is not a file"):
        load_pretrained("dlcourse-tiny-test", tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError, match=r"(?s)'ViT-B-32', 'openai'.*no weights on disk.*download "
                                                r"\S+.*Hugging Face cache.*or pass the path"):
        load_pretrained("ViT-B-32", "openai")
    with pytest.raises(ValueError, match="model_name: expected an open_clip architecture name"):
        load_pretrained("no-such-model", "openai")


def test_without_open_clip_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[clip\]"'):
        load_pretrained("ViT-B-32", "openai")


def test_a_tag_is_loaded_from_the_local_cache_without_network(tiny_open_clip, monkeypatch):
    open_clip, model, weights = tiny_open_clip
    import huggingface_hub

    asked = []
    cfg = {"hf_hub": "someone/tiny-clip/", "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda name, tag: cfg if tag == "cached-tag" else {})
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache",
                        lambda repo, name: asked.append((repo, name)) or str(weights))
    clip = load_pretrained("dlcourse-tiny-test", "cached-tag")
    assert asked == [("someone/tiny-clip", "open_clip_model.safetensors")]
    images = torch.zeros(1, 3, 32, 32)  # grey: (0.5 − 0.5) / 0.25 = 0 after the tag's normalisation
    with torch.no_grad():
        expected = F.normalize(model.encode_image(torch.zeros(1, 3, 32, 32)), dim=-1)
    assert torch.allclose(clip.encode_image(images), expected, atol=1e-5)
