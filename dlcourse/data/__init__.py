"""Data for the course: the embedded procedural flowers, and real images through the same API.

``load_flowers()`` draws the five TF-Flowers classes by code (deterministic, seconds,
cached under ``data/cache/``); ``source=`` switches to an image folder, a Hugging Face
hub dataset or FashionMNIST. Every loader returns an ``ImageDataset`` with images
x ∈ [−1, 1] of shape N × 3 × H × W. See ``data/README.md``.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..validation import check_bool, check_int, check_seed, describe, fail
from . import cache
from .dataset import ImageDataset, to_display, to_pil, uint8_to_images
from .flowers import (BACKGROUNDS, CLASSES, GENERATOR_VERSION, PETAL_COLOURS, SIZES, SUPERSAMPLE, caption,
                      generate)
from .real import load_fashion_mnist, load_folder, load_hub

__all__ = ["load_flowers", "ImageDataset", "to_display", "to_pil", "CLASSES", "PETAL_COLOURS", "BACKGROUNDS",
           "SIZES", "GENERATOR_VERSION", "DEFAULT_SIZES"]

DEFAULT_SIZES = {"train": 10_000, "test": 2_000}
_DATA_ROOT = Path(__file__).resolve().parents[2] / "data"


def _check_args(split, image_size, n, seed, source, progress) -> None:
    if split not in DEFAULT_SIZES:
        raise fail("split", "'train' or 'test'", describe(split))
    check_int(image_size, "image_size", low=8, expected="an int >= 8 (the side in pixels, e.g. 32)")
    if n is not None:
        check_int(n, "n", low=1, expected="a positive int (number of images) or None (the split's default size)")
    check_seed(seed)
    if not isinstance(source, (str, os.PathLike)):
        raise fail("source", "'procedural', 'fashion_mnist', 'hf:<hub id>' or a folder path", describe(source))
    check_bool(progress, "progress")


def _procedural(split: str, image_size: int, n: int | None, seed: int, cache_dir, progress: bool) -> ImageDataset:
    n = DEFAULT_SIZES[split] if n is None else int(n)
    image_size, seed = int(image_size), int(seed)
    params = {"generator": GENERATOR_VERSION, "supersample": SUPERSAMPLE, "split": split,
              "image_size": image_size, "n": n, "seed": seed}
    stem = f"flowers_{split}_{image_size}px_n{n}_seed{seed}"
    folders = cache.candidate_dirs(cache_dir)
    loaded = None
    for folder in folders:  # a valid cache is used even where this user cannot write
        loaded = cache.load(cache.cache_path(folder, stem, params), params, (image_size, image_size, 3), len(CLASSES))
        if loaded is not None:
            break
    if loaded is None:
        loaded = generate(split, image_size, n, seed, progress=progress)
        folder = cache.writable_dir(folders)
        if folder is None and cache_dir is not None:
            raise fail("cache_dir", "a folder this user can write to (it holds no valid cache of these images)",
                       repr(str(folders[0])))
        if folder is None:
            print(f"note: cannot write a cache in {str(folders[0])!r} or {str(folders[1])!r}: the images were drawn "
                  "in memory and will be drawn again next time (pass cache_dir= a folder you can write)")
        else:
            path = cache.cache_path(folder, stem, params)
            cache.save(path, params, *loaded)
            for stale in folder.glob(f"{stem}_*.npz"):  # same parameters, older generator
                if stale != path:
                    print(f"note: removing stale cache {stale.name} (made by another generator version)")
                    stale.unlink(missing_ok=True)
    images, labels, attributes = loaded
    return ImageDataset(uint8_to_images(images), torch.from_numpy(labels).long(), CLASSES,
                        [caption(a) for a in attributes], attributes)


def load_flowers(split: str = "train", image_size: int = 32, n: int | None = None, seed: int = 0,
                 source: str | os.PathLike = "procedural", cache_dir=None, *, progress: bool = True) -> ImageDataset:
    """Load a split of flowers (or real images) as an ``ImageDataset`` with x ∈ [−1, 1], N × 3 × image_size².

    source: "procedural" (default; drawn by code, cached), a folder path (one subfolder per class),
    "hf:<hub id>" (Hugging Face hub, needs the internet once) or "fashion_mnist" (torchvision files
    under ``cache_dir`` or ``data/``). n=None: the split's default size (procedural: train 10 000,
    test 2 000; real data: all images); otherwise a prefix (procedural) or a seeded subset (real).
    """
    _check_args(split, image_size, n, seed, source, progress)
    if isinstance(source, str) and source == "procedural":
        return _procedural(split, image_size, n, seed, cache_dir, progress)
    if isinstance(source, str) and source == "fashion_mnist":
        root = Path(cache_dir).expanduser() if cache_dir is not None else _DATA_ROOT
        return load_fashion_mnist(split, image_size, n, seed, root)
    if isinstance(source, str) and source.startswith("hf:"):
        return load_hub(source[3:], split, image_size, n, seed, cache_dir, progress)
    return load_folder(source, split, image_size, n, seed, cache_dir, progress)
