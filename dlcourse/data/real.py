"""Real images behind the `load_flowers` API: an image folder, a Hugging Face hub dataset, FashionMNIST.

Every image is centre-cropped to a square, resized to ``image_size``, converted to
3 channels and mapped to [−1, 1]; captions are "a photo of a {class}" and
attributes ``{"class": ...}``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..validation import fail
from .dataset import ImageDataset, uint8_to_images

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
FOLDER_LAYOUT = (
    "a folder with one subfolder per class holding that class's images, e.g. "
    "flowers/daisy/001.jpg, flowers/rose/002.jpg (optionally split first: flowers/train/daisy/..., flowers/test/daisy/...)"
)


def square_resize(image: Image.Image, image_size: int) -> np.ndarray:
    """Centre-crop a PIL image to a square, resize it to image_size² (Lanczos), return uint8 H × W × 3."""
    image = image.convert("RGB")
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    image = image.crop((left, top, left + side, top + side))
    return np.asarray(image.resize((image_size, image_size), Image.LANCZOS))


def _subset(total: int, n: int | None, seed: int, what: str) -> np.ndarray:
    """All indices when n is None, else n distinct ones drawn with ``seed`` (sorted)."""
    if n is None:
        return np.arange(total)
    if n > total:
        raise fail("n", f"at most {total} (the number of images in {what})", n)
    return np.sort(np.random.default_rng(seed).permutation(total)[:n])


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*") if p.is_file())


def check_folder(source, split: str) -> Path:
    """The folder of ``split`` inside ``source``, after checking it has the class-subfolder layout."""
    root = Path(source).expanduser()
    if not root.is_dir():
        raise fail("source", f"'procedural', 'fashion_mnist', 'hf:<hub id>' or {FOLDER_LAYOUT}",
                   f"{str(source)!r}, which is not an existing folder")
    names = {p.name for p in _class_folders(root)}
    if "train" in names:  # split layout: root/train/<class>/..., root/test/<class>/...
        if split not in names:
            raise fail("split", f"a split present in {str(root)!r} (it has subfolders {sorted(names)})",
                       f"{split!r}; add {str(root / split)!r} with one subfolder per class")
        root = root / split
    elif split != "train":
        raise fail("split", f"'train' for a folder without split subfolders ({str(root)!r} holds the classes directly; "
                   f"for a test split use root/train/<class>/... and root/test/<class>/...)", repr(split))
    classes = _class_folders(root)
    if not classes:
        raise fail("source", FOLDER_LAYOUT, f"{str(root)!r}, which has no subfolders")
    empty = [p.name for p in classes if not _has_images(p)]
    if empty:
        raise fail("source", f"{FOLDER_LAYOUT}, each with at least one image ({', '.join(sorted(IMAGE_SUFFIXES))})",
                   f"{str(root)!r}, where these class folders have no images: {empty}")
    return root


def _from_hf(ds, image_size: int, n: int | None, seed: int, progress: bool, what: str) -> ImageDataset:
    """Convert a Hugging Face ``Dataset`` with an Image column and a ClassLabel column."""
    import datasets
    from tqdm.auto import tqdm

    image_col = next((k for k, f in ds.features.items() if isinstance(f, datasets.Image)), None)
    label_col = next((k for k, f in ds.features.items() if isinstance(f, datasets.ClassLabel)), None)
    if image_col is None or label_col is None:
        raise fail("source", "a dataset with an image column and a class-label column", f"{what} with features {dict(ds.features)}")
    classes = tuple(ds.features[label_col].names)
    ds = ds.select(_subset(len(ds), n, seed, what).tolist())
    images = np.empty((len(ds), image_size, image_size, 3), np.uint8)
    labels = np.empty(len(ds), np.int64)
    rows = tqdm(ds, total=len(ds), desc=f"resizing {what}", disable=not progress, leave=False)
    for i, row in enumerate(rows):
        images[i] = square_resize(row[image_col], image_size)
        labels[i] = row[label_col]
    return ImageDataset(uint8_to_images(images), torch.from_numpy(labels), classes)


def load_folder(source, split: str, image_size: int, n: int | None, seed: int, cache_dir, progress: bool) -> ImageDataset:
    """Images from ``source/<class>/*`` through the Hugging Face ``imagefolder`` builder."""
    import datasets

    folder = check_folder(source, split)
    hf_cache = str(Path(cache_dir) / "huggingface") if cache_dir is not None else None
    ds = datasets.load_dataset("imagefolder", data_dir=str(folder), split="train", cache_dir=hf_cache)
    if "label" not in ds.features:  # one class folder only: the builder adds no label column
        ds = ds.add_column("label", [0] * len(ds)).cast_column(
            "label", datasets.ClassLabel(names=[p.name for p in _class_folders(folder)]))
    return _from_hf(ds, image_size, n, seed, progress, f"folder {str(folder)!r}")


def load_hub(hub_id: str, split: str, image_size: int, n: int | None, seed: int, cache_dir, progress: bool) -> ImageDataset:
    """A dataset from the Hugging Face hub (``source="hf:<id>"``); needs the internet the first time."""
    import datasets

    if not hub_id:
        raise fail("source", "'hf:<hub id>', e.g. 'hf:<user>/<dataset>'", "'hf:' with no id")
    hf_cache = str(Path(cache_dir) / "huggingface") if cache_dir is not None else None
    try:
        ds = datasets.load_dataset(hub_id, split=split, cache_dir=hf_cache)
    except Exception as err:
        raise RuntimeError(
            f"source: could not load the hub dataset {hub_id!r} (split {split!r}): {type(err).__name__}: {err}\n"
            "What to do: connect to the internet and run this again (the download is cached for next time), "
            "or, on a machine with internet, save the dataset's images as a folder with one subfolder per class "
            f"(<folder>/<class>/<image>.png), copy it here and call load_flowers(source='<folder>')."
        ) from err
    return _from_hf(ds, image_size, n, seed, progress, f"hub dataset {hub_id!r}")


def load_fashion_mnist(split: str, image_size: int, n: int | None, seed: int, root: Path) -> ImageDataset:
    """FashionMNIST from ``root`` (torchvision, ``download=False``), resized and made 3-channel."""
    import torchvision

    try:
        fmnist = torchvision.datasets.FashionMNIST(str(root), train=split == "train", download=False)
    except RuntimeError as err:
        raise FileNotFoundError(
            f"source='fashion_mnist': the FashionMNIST files are not in {str(root / 'FashionMNIST' / 'raw')!r}. "
            "Download them once (needs the internet) with:\n"
            f"    python -c \"import torchvision; torchvision.datasets.FashionMNIST({str(root)!r}, download=True)\"\n"
            "then run this again."
        ) from err
    idx = torch.from_numpy(_subset(len(fmnist.data), n, seed, "FashionMNIST"))
    x = fmnist.data[idx].float().div(127.5).sub(1.0).unsqueeze(1)  # N × 1 × 28 × 28 in [−1, 1]
    if image_size != x.shape[-1]:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    labels = fmnist.targets[idx].long()
    return ImageDataset(x.clamp(-1, 1).repeat(1, 3, 1, 1).contiguous(), labels, tuple(fmnist.classes))
