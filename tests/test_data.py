"""dlcourse.data: procedural flowers (determinism, splits, cache), real-data loaders, conversions."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import dlcourse.data as data
from dlcourse.data import (BACKGROUNDS, CLASSES, PETAL_COLOURS, SIZES, ImageDataset, cache, load_flowers,
                           to_display, to_pil)
from dlcourse.data.flowers import _PETAL_RGB


def flowers(tmp_path, **kwargs) -> ImageDataset:
    kwargs.setdefault("n", 20)
    return load_flowers(cache_dir=tmp_path, progress=False, **kwargs)


def test_constants():
    assert CLASSES == ("daisy", "dandelion", "rose", "sunflower", "tulip")
    assert {"white", "yellow", "red", "pink", "orange", "purple"} == set(PETAL_COLOURS)


def test_procedural_dataset_contents(tmp_path):
    ds = flowers(tmp_path, n=40, image_size=16)
    assert len(ds) == 40 and ds.classes == CLASSES
    assert ds.images.shape == (40, 3, 16, 16) and ds.images.dtype == torch.float32
    assert ds.images.min() >= -1 and ds.images.max() <= 1
    assert ds.images.std() > 0.2  # real pictures, not a constant
    assert ds.labels.dtype == torch.long
    assert ds.labels.tolist() == [i % 5 for i in range(40)]  # balanced classes
    image, label = ds[7]
    assert torch.equal(image, ds.images[7]) and int(label) == 2
    for label, attrs, cap in zip(ds.labels.tolist(), ds.attributes, ds.captions):
        assert set(attrs) == {"class", "petal_colour", "centre_colour", "size", "background"}
        assert attrs["class"] == CLASSES[label]
        assert attrs["petal_colour"] in PETAL_COLOURS
        assert attrs["size"] in SIZES and attrs["background"] in BACKGROUNDS
        assert cap.startswith(f"a {attrs['size']} {attrs['petal_colour']} {attrs['class']}")
    tulip = ds.attributes[4]
    assert tulip["centre_colour"] == "none" and "centre" not in ds.captions[4]


def test_petal_colour_is_visible(tmp_path):
    """Every image shows pixels whose nearest named colour is its petal colour (within 80 of its RGB)."""
    ds = flowers(tmp_path, n=100)
    rgb = ((ds.images + 1) * 127.5).permute(0, 2, 3, 1).reshape(100, -1, 1, 3)
    ref = torch.tensor([_PETAL_RGB[c] for c in PETAL_COLOURS], dtype=torch.float32)
    dist = (rgb - ref).norm(dim=-1)  # 100 × pixels × colours
    nearest = dist.argmin(-1)
    for i, attrs in enumerate(ds.attributes):
        k = PETAL_COLOURS.index(attrs["petal_colour"])
        count = int(((nearest[i] == k) & (dist[i, :, k] < 80)).sum())
        assert count >= 3, (i, attrs, count)


def test_deterministic_and_prefix(tmp_path):
    small = flowers(tmp_path / "a", n=10)
    large = flowers(tmp_path / "b", n=25)
    again = flowers(tmp_path / "c", n=10)  # a fresh draw, not the cache
    assert torch.equal(small.images, again.images) and small.captions == again.captions
    assert torch.equal(large.images[:10], small.images)
    assert large.attributes[:10] == small.attributes
    other_seed = flowers(tmp_path / "a", n=10, seed=1)
    assert not torch.equal(other_seed.images, small.images)


def test_train_and_test_are_disjoint(tmp_path):
    train = flowers(tmp_path, split="train", n=300, image_size=8)
    test = flowers(tmp_path, split="test", n=300, image_size=8)
    train_bytes = {x.numpy().tobytes() for x in train.images}
    assert len(train_bytes) == 300
    assert not any(x.numpy().tobytes() in train_bytes for x in test.images)


def test_default_sizes():
    assert data.DEFAULT_SIZES == {"train": 10_000, "test": 2_000}


def test_cache_is_reused_and_named_by_parameters(tmp_path, monkeypatch):
    first = flowers(tmp_path, n=12)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1

    def no_drawing(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(data, "generate", no_drawing)
    cached = flowers(tmp_path, n=12)
    assert torch.equal(cached.images, first.images) and cached.attributes == first.attributes
    monkeypatch.undo()
    for kwargs in ({"n": 13}, {"n": 12, "seed": 3}, {"n": 12, "image_size": 16}, {"n": 12, "split": "test"}):
        flowers(tmp_path, **kwargs)
    assert len(set(tmp_path.glob("*.npz"))) == 5


def test_corrupt_cache_is_rebuilt(tmp_path, capsys):
    original = flowers(tmp_path, n=15)
    (path,) = tmp_path.glob("*.npz")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated
    capsys.readouterr()
    rebuilt = flowers(tmp_path, n=15)
    assert "unreadable" in capsys.readouterr().out
    assert torch.equal(rebuilt.images, original.images)
    assert torch.equal(flowers(tmp_path, n=15).images, original.images)  # the rewritten file is good
    assert "rebuilding" not in capsys.readouterr().out


def test_mismatched_fingerprint_is_rebuilt(tmp_path, capsys):
    flowers(tmp_path, n=8, seed=1)
    (wrong,) = tmp_path.glob("*.npz")
    expected = flowers(tmp_path / "ref", n=8, seed=2)
    (target,) = (tmp_path / "ref").glob("*.npz")
    (tmp_path / target.name).write_bytes(wrong.read_bytes())  # seed-1 contents under the seed-2 name
    capsys.readouterr()
    got = flowers(tmp_path, n=8, seed=2)
    assert "other parameters" in capsys.readouterr().out
    assert torch.equal(got.images, expected.images)


def test_older_generator_cache_is_removed(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data, "GENERATOR_VERSION", "0-old")
    flowers(tmp_path, n=6)
    (old,) = tmp_path.glob("*.npz")
    monkeypatch.undo()
    capsys.readouterr()
    flowers(tmp_path, n=6)
    assert "stale" in capsys.readouterr().out
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and files[0] != old


def _rewrite_cache(folder, transform):
    (path,) = folder.glob("flowers_*.npz")
    with np.load(path, allow_pickle=False) as f:
        arrays = dict(f)
    transform(arrays)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize("transform", [
    lambda a: a.update(images=a["images"][:, :16, :16]),  # wrong image size, same fingerprint
    lambda a: a.update(labels=a["labels"] + 100),  # labels out of range
    lambda a: a.update(images=a["images"].astype(np.float32)),
], ids=["shape", "labels", "dtype"])
def test_a_cache_with_the_right_fingerprint_but_wrong_arrays_is_rebuilt(tmp_path, capsys, transform):
    first = flowers(tmp_path, split="test", n=6)
    _rewrite_cache(tmp_path, transform)
    capsys.readouterr()
    again = flowers(tmp_path, split="test", n=6)
    assert "rebuilding it" in capsys.readouterr().out
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    flowers(tmp_path, split="test", n=6)  # not stuck: the rebuilt cache is used
    assert "rebuilding" not in capsys.readouterr().out


def test_a_read_only_folder_holding_a_valid_cache_is_used(tmp_path, monkeypatch):
    first = flowers(tmp_path, split="test", n=6)
    monkeypatch.setattr(cache, "is_writable_dir", lambda folder: False)  # root ignores chmod: pretend instead
    monkeypatch.setattr("dlcourse.data.generate", lambda *a, **k: pytest.fail("the cache should be used"))
    assert torch.equal(flowers(tmp_path, split="test", n=6).images, first.images)


def test_an_unwritable_cache_dir_without_a_cache_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "is_writable_dir", lambda folder: False)
    with pytest.raises(ValueError, match="cache_dir: expected a folder this user can write to"):
        flowers(tmp_path, split="test", n=6)


def test_no_writable_default_folder_draws_in_memory_with_a_note(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cache, "REPO_CACHE", tmp_path / "repo")
    monkeypatch.setattr(cache, "USER_CACHE", tmp_path / "home" / ".cache")
    monkeypatch.setattr(cache, "is_writable_dir", lambda folder: False)  # a read-only checkout and home
    ds = load_flowers("test", n=4, image_size=16, progress=False)
    assert ds.images.shape == (4, 3, 16, 16)
    assert "cannot write a cache" in capsys.readouterr().out


@pytest.mark.parametrize("kwargs, name", [
    ({"split": "val"}, "split"),
    ({"image_size": 4}, "image_size"),
    ({"image_size": 32.0}, "image_size"),
    ({"n": 0}, "n"),
    ({"n": True}, "n"),
    ({"n": 2.5}, "n"),
    ({"seed": -1}, "seed"),
    ({"source": 3}, "source"),
    ({"progress": "yes"}, "progress"),
])
def test_bad_arguments_name_the_argument(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}: expected"):
        load_flowers(cache_dir=tmp_path, **kwargs)


def test_to_display_and_to_pil():
    x = torch.tensor([-3.0, -1.0, 0.0, 1.0, 2.0])
    assert torch.allclose(to_display(x), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    images = torch.full((2, 3, 4, 5), -1.0)
    images[1, 0] = 1.0  # red
    pils = to_pil(images)
    assert [p.mode for p in pils] == ["RGB", "RGB"] and pils[0].size == (5, 4)
    assert pils[0].getpixel((0, 0)) == (0, 0, 0) and pils[1].getpixel((2, 1)) == (255, 0, 0)
    gray = to_pil(torch.zeros(1, 4, 4))
    assert len(gray) == 1 and gray[0].mode == "L" and gray[0].getpixel((0, 0)) in (127, 128)
    with pytest.raises(ValueError, match="^x: expected"):
        to_pil(torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="^x: expected"):
        to_pil(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))


def test_image_dataset_checks_labels():
    with pytest.raises(ValueError, match="^labels: expected"):
        ImageDataset(torch.zeros(2, 3, 8, 8), torch.tensor([0, 5]), ("a", "b"))
    with pytest.raises(ValueError, match="^labels: expected"):
        ImageDataset(torch.zeros(2, 3, 8, 8), torch.tensor([0.0, 1.0]), ("a", "b"))


# ----------------------------------------------------------------------------- real data

def write_folder(root, classes=("bee", "fly"), per_class=3):
    """Wide 30×10 PNGs: the centre 10×10 square is the class colour, the sides green (cut by the centre crop)."""
    colours = {"bee": (255, 0, 0), "fly": (0, 0, 255)}
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.zeros((10, 30, 3), np.uint8)
            pixels[:] = (0, 255, 0)
            pixels[:, 10:20] = colours[name]
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_folder_source(tmp_path):
    root = write_folder(tmp_path / "insects")
    ds = load_flowers(source=str(root), image_size=8, cache_dir=tmp_path / "cache", progress=False)
    assert ds.classes == ("bee", "fly")
    assert ds.images.shape == (6, 3, 8, 8)
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.captions[0] == "a photo of a bee" and ds.attributes[-1] == {"class": "fly"}
    red = torch.tensor([1.0, -1.0, -1.0])[:, None, None]
    blue = torch.tensor([-1.0, -1.0, 1.0])[:, None, None]
    assert torch.allclose(ds.images[0], red.expand(3, 8, 8), atol=0.02)  # no green: centre-cropped
    assert torch.allclose(ds.images[5], blue.expand(3, 8, 8), atol=0.02)
    sub = load_flowers(source=root, image_size=8, n=4, seed=1, cache_dir=tmp_path / "cache", progress=False)
    assert len(sub) == 4
    with pytest.raises(ValueError, match="^n: expected at most 6"):
        load_flowers(source=root, n=7, cache_dir=tmp_path / "cache", progress=False)


def test_folder_with_split_subfolders(tmp_path):
    write_folder(tmp_path / "ds" / "train")
    write_folder(tmp_path / "ds" / "test", per_class=1)
    test = load_flowers("test", source=tmp_path / "ds", image_size=8, cache_dir=tmp_path / "c", progress=False)
    assert len(test) == 2 and test.classes == ("bee", "fly")


def test_folder_layout_errors(tmp_path):
    with pytest.raises(ValueError, match="not an existing folder"):
        load_flowers(source=tmp_path / "missing")
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (4, 4)).save(flat / "loose.png")
    with pytest.raises(ValueError, match="no subfolders"):
        load_flowers(source=flat)
    empty = tmp_path / "empty"
    (empty / "rose").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"have no images: \['rose'\]"):
        load_flowers(source=empty)
    with pytest.raises(ValueError, match="^split: expected 'train' for a folder without split subfolders"):
        load_flowers("test", source=write_folder(tmp_path / "ok"))


def test_fashion_mnist_missing_files_says_how_to_download(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_flowers(source="fashion_mnist", cache_dir=tmp_path)
    message = str(info.value)
    assert f"torchvision.datasets.FashionMNIST({str(tmp_path)!r}, download=True)" in message
    assert "python -c" in message


def test_hub_failure_says_what_to_do(tmp_path, monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no internet")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match="connect to the internet") as info:
        load_flowers(source="hf:someone/flowers", cache_dir=tmp_path)
    assert "source='<folder>'" in str(info.value) and "no internet" in str(info.value)


def test_hub_dataset_is_converted(tmp_path, monkeypatch):
    import datasets

    features = datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=["p", "q"])})
    fake = datasets.Dataset.from_dict(
        {"img": [Image.new("RGB", (6, 9), (255, 255, 255)), Image.new("L", (9, 6), 0)], "y": [1, 0]}, features=features)
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: fake)
    ds = load_flowers(source="hf:someone/pq", image_size=8, cache_dir=tmp_path, progress=False)
    assert ds.classes == ("p", "q") and ds.labels.tolist() == [1, 0]
    assert ds.images.shape == (2, 3, 8, 8)
    assert torch.allclose(ds.images[0], torch.ones(3, 8, 8)) and torch.allclose(ds.images[1], -torch.ones(3, 8, 8))
