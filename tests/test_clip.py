"""dlcourse.clip: the contrastive loss, TinyCLIP, tokenizer, held-out split, embedding drop, prompt guidance."""
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dlcourse.clip import (HELD_OUT, TinyCLIP, Tokenizer, combination_mask, contrastive_loss, drop_embeddings,
                           drop_features, prompt_guided_eps_fn, random_caption, retrieval_accuracy, similarity,
                           without_combinations, zero_shot_predict)
from dlcourse.data import load_flowers
from dlcourse.data.flowers import caption
from dlcourse.guidance import cfg_eps, guided_eps_fn
from dlcourse.models import load_model, save_model

VOCAB = ["<pad>", "<unk>", "a", "red", "white", "rose", "tulip", "on", "grass"]


def test_contrastive_loss_on_a_hand_computed_3x3_case():
    # f̂ = e1, e2, e3 and ĝ = e1, e1, e3 (given unnormalised), s = 2:
    # S = 2·[[1, 1, 0], [0, 0, 0], [0, 0, 1]]
    image = torch.tensor([[3.0, 0, 0], [0, 0.5, 0], [0, 0, 2.0]])
    text = torch.tensor([[0.2, 0, 0], [4.0, 0, 0], [0, 0, 7.0]])
    e2 = math.e ** 2
    rows = [math.log(2 * e2 + 1) - 2, math.log(3), math.log(e2 + 2) - 2]      # CE(S, 0…2)
    columns = [math.log(e2 + 2) - 2, math.log(e2 + 2), math.log(e2 + 2) - 2]  # CE(Sᵀ, 0…2)
    expected = (sum(rows) / 3 + sum(columns) / 3) / 2
    assert contrastive_loss(image, text, 2.0).item() == pytest.approx(expected, abs=1e-6)
    assert contrastive_loss(image, text, torch.tensor(2.0)).item() == pytest.approx(expected, abs=1e-6)


def test_contrastive_loss_limits_and_errors():
    same = torch.ones(5, 4)
    assert contrastive_loss(same, same, 10.0).item() == pytest.approx(math.log(5), abs=1e-6)
    eye = torch.eye(4)
    assert contrastive_loss(eye, eye, 100.0).item() < 1e-30 + 1e-6
    with pytest.raises(ValueError, match="text_features: expected one row per image"):
        contrastive_loss(torch.randn(3, 4), torch.randn(2, 4), 1.0)
    with pytest.raises(ValueError, match="text_emb: expected embeddings of the image embeddings' size D = 4"):
        similarity(torch.randn(3, 4), torch.randn(3, 5))


def test_tiny_clip_embeddings_are_normalised_and_shaped():
    torch.manual_seed(0)
    clip = TinyCLIP(VOCAB, embed_dim=8, image_size=8, widths=(4, 8), text_width=16, heads=2, context_length=6)
    text = clip.encode_text(["a red rose", "a white tulip on grass"])
    image = clip.encode_image(torch.rand(3, 3, 16, 16) * 2 - 1)  # resized to 8×8 inside
    assert text.shape == (2, 8) and image.shape == (3, 8)
    assert torch.allclose(text.norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.allclose(image.norm(dim=1), torch.ones(3), atol=1e-5)
    logits = clip(torch.zeros(3, 3, 8, 8), clip.tokenizer.encode(["a rose", "a tulip"], 6))
    assert logits.shape == (3, 2)
    # padding is ignored: the same words give the same embedding at any context position count
    assert torch.allclose(clip.encode_text(["a rose"]), clip.encode_text(["a rose"]), atol=0)


def test_tiny_clip_token_features_keep_one_normalised_vector_per_word_and_zero_the_padding():
    torch.manual_seed(0)
    clip = TinyCLIP(VOCAB, embed_dim=8, image_size=8, widths=(4,), text_width=16, heads=2, context_length=6).eval()
    texts = ["a red rose", "a white tulip on grass"]
    ids = clip.tokenize(texts)
    y, mask = clip.token_features(ids)
    assert y.shape == (2, 6, 16) and clip.text_width == 16
    assert mask.dtype == torch.bool and torch.equal(mask, ids != 0) and mask.sum(1).tolist() == [3, 5]
    assert (y[~mask] == 0).all()
    words = y[mask]  # the encoder's LayerNorm at its initial weight 1 and bias 0: mean 0, variance 1 per word
    assert torch.allclose(words.mean(1), torch.zeros(len(words)), atol=1e-5)
    assert torch.allclose(words.var(1, unbiased=False), torch.ones(len(words)), atol=1e-3)
    alone, alone_mask = clip.encode_tokens(texts[:1])  # a prompt's features do not depend on the batch
    assert torch.allclose(alone, y[:1], atol=1e-6) and torch.equal(alone_mask, mask[:1])
    other, _ = clip.encode_tokens(["a white rose"])  # the Transformer mixes words: "rose" reads "white"
    assert not torch.allclose(other[0, 2], y[0, 2], atol=1e-4)
    with pytest.raises(ValueError, match="token_ids: expected a long tensor"):
        clip.token_features(ids.float())


def test_tiny_clip_word_features_are_each_words_normalised_embedding_whatever_the_prompt():
    torch.manual_seed(0)
    clip = TinyCLIP(VOCAB, embed_dim=8, image_size=8, widths=(4,), text_width=16, heads=2, context_length=6).eval()
    y, mask = clip.encode_words(["a red rose", "a white tulip on grass"])
    assert y.shape == (2, 6, 16) and mask.sum(1).tolist() == [3, 5] and (y[~mask] == 0).all()
    rose = clip.token_embedding.weight[clip.tokenizer.encode(["rose"], 6)[0, 0]]
    torch.testing.assert_close(y[0, 2], (rose - rose.mean()) / (rose.var(unbiased=False) + 1e-5).sqrt())
    other, _ = clip.encode_words(["white rose"])  # no Transformer, no position: "rose" reads nothing else
    torch.testing.assert_close(other[0, 1], y[0, 2])
    tokens, _ = clip.encode_tokens(["a red rose"])
    assert not torch.allclose(tokens[0, 2], y[0, 2], atol=1e-3)
    with pytest.raises(ValueError, match="token_ids: expected a long tensor"):
        clip.word_features(torch.zeros(2, 5, dtype=torch.long))


def test_tokenizer_round_trip_unknown_words_and_length():
    tok = Tokenizer.from_texts(["a red rose", "A white tulip on grass."])
    assert tok.vocab == VOCAB[:2] + sorted(VOCAB[2:])
    ids = tok.encode(["a red rose", "a white tulip on grass"], 6)
    assert ids.shape == (2, 6) and ids.dtype == torch.long and ids[0, 3:].eq(0).all()
    assert tok.decode(ids) == ["a red rose", "a white tulip on grass"]
    assert tok.encode(["a blue rose"], 4)[0].tolist() == [tok.ids["a"], 1, tok.ids["rose"], 0]
    assert tok.unknown_words(["a blue rose", "a photo of a rose"]) == ["blue", "of", "photo"]
    with pytest.raises(ValueError, match="texts: expected at most context_length = 2 words"):
        tok.encode(["a red rose"], 2)
    with pytest.raises(ValueError, match="texts: expected a list of strings"):
        tok.encode("a rose", 4)
    clip = TinyCLIP(tok.vocab, embed_dim=4, image_size=8, widths=(4,), text_width=8, heads=2, context_length=6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clip.encode_text(["a blue rose"])
    assert len(caught) == 1 and "['blue']" in str(caught[0].message) and "<unk>" in str(caught[0].message)


def test_tiny_clip_save_and_load_give_identical_embeddings(tmp_path):
    torch.manual_seed(1)
    clip = TinyCLIP(VOCAB, embed_dim=8, image_size=8, widths=(4, 8), text_width=16, heads=2, context_length=6).eval()
    save_model(clip, tmp_path / "clip")
    loaded = load_model(tmp_path / "clip")
    assert isinstance(loaded, TinyCLIP) and loaded.config["vocab"] == VOCAB
    images = torch.rand(4, 3, 8, 8) * 2 - 1
    texts = ["a red rose", "a white tulip on grass"]
    assert torch.equal(loaded.encode_text(texts), clip.encode_text(texts))
    assert torch.equal(loaded.encode_image(images), clip.encode_image(images))


def test_held_out_combinations_are_absent_from_the_training_split():
    full = load_flowers("train", image_size=16, n=600, progress=False)
    held = combination_mask(full.attributes, HELD_OUT)
    assert held.any(), "the test needs the held-out combinations to exist in the full split"
    kept = without_combinations(full, HELD_OUT)
    pairs = {(a["class"], a["petal_colour"]) for a in kept.attributes}
    assert not pairs & set(HELD_OUT)
    assert len(kept) == len(full) - int(held.sum()) == len(kept.captions) == kept.labels.shape[0]
    for cls, colour in HELD_OUT:  # both words still appear in training, only never together
        assert any(a["class"] == cls for a in kept.attributes)
        assert any(a["petal_colour"] == colour for a in kept.attributes)
    assert torch.equal(kept.images[0], full.images[int((~held).nonzero()[0])])


def test_random_caption_keeps_everything_or_part():
    ds = load_flowers("train", image_size=16, n=20, progress=False)
    rng = np.random.default_rng(0)
    for a in ds.attributes:
        assert random_caption(a, rng, keep=1.0, generic=0.0) == caption(a)
        assert random_caption(a, rng, keep=0.0, generic=0.0) == f"a {a['class']}"
        assert random_caption(a, rng, keep=0.0, generic=1.0) == "a flower"


def test_whole_embedding_drop():
    c = torch.randn(20_000, 16) + 3  # no zeros by chance
    dropped, mask = drop_embeddings(c, 0.1, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (20_000,) and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert (dropped[mask == 0] == 0).all()
    assert torch.equal(dropped[mask == 1], c[mask == 1])
    rate = 1 - mask.mean().item()
    assert abs(rate - 0.1) < 4 * math.sqrt(0.1 * 0.9 / 20_000)
    features = drop_features(c, 0.1, generator=torch.Generator().manual_seed(0))
    zero_share = (features == 0).float().mean().item()
    assert abs(zero_share - 0.1) < 4 * math.sqrt(0.1 * 0.9 / c.numel())
    assert not (features == 0).all(dim=1).any()  # p^D = 1e-16: single-feature dropout never gives the null row
    with pytest.raises(ValueError, match="c: expected a batch of embeddings"):
        drop_embeddings(torch.randn(4), 0.1)


def test_retrieval_and_zero_shot():
    sim = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.2, 0.1], [0.0, 0.3, 0.5]])
    # text 0 → image 0 ✓; text 1 → image 2 (0.3) ✗, its image 1 is 2nd; text 2 → image 2 ✓
    assert retrieval_accuracy(sim, 1) == pytest.approx(2 / 3)
    assert retrieval_accuracy(sim, 2) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="sim: expected a square"):
        retrieval_accuracy(torch.randn(2, 3))

    class ColourCLIP:  # embeds an image by its mean colour and a prompt by a fixed colour
        colours = {"a red": [1.0, 0, 0], "a green": [0, 1.0, 0], "a blue": [0, 0, 1.0]}

        def encode_text(self, texts):
            return torch.tensor([self.colours[t] for t in texts])

        def encode_image(self, images):
            return F.normalize(images.mean(dim=(2, 3)) + 1, dim=-1)

    images = -torch.ones(3, 3, 2, 2)
    images[0, 0], images[1, 2], images[2, 1] = 1, 1, 1
    assert zero_shot_predict(ColourCLIP(), images, ["a red", "a green", "a blue"]).tolist() == [0, 2, 1]


class LinearEps(torch.nn.Module):
    """model(x, t, c, c_mask) = x·0.5 + (m·c)·v: the context enters linearly, so guidance is checkable."""

    def forward(self, x, t, c, c_mask):
        c = c * c_mask[:, None]
        return 0.5 * x + c.sum(1)[:, None, None, None] + 0.1 * c[:, :1, None, None]


def test_prompt_guided_eps_fn_with_and_without_negative_prompt():
    model = LinearEps()
    x, t = torch.randn(4, 3, 2, 2), torch.zeros(4, dtype=torch.long)
    c, c_neg = torch.randn(4, 5), torch.randn(4, 5)
    ones = torch.ones(4)
    for w in (-1.0, 0.0, 2.5):
        eps_c, eps_neg = model(x, t, c, ones), model(x, t, c_neg, ones)
        got = prompt_guided_eps_fn(model, c, w, c_neg)(x, t)
        assert torch.allclose(got, eps_neg + (1 + w) * (eps_c - eps_neg), atol=1e-6)
        assert torch.allclose(got, cfg_eps(eps_c, eps_neg, w), atol=1e-6)
        assert torch.allclose(prompt_guided_eps_fn(model, c, w)(x, t), guided_eps_fn(model, c, w)(x, t), atol=1e-6)
    with pytest.raises(ValueError, match=r"c_neg: expected the shape of c \(4, 5\)"):
        prompt_guided_eps_fn(model, c, 1.0, c_neg[:2])
