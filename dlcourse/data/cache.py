"""The on-disk cache of generated images: fingerprinted `.npz` files, written atomically.

A cache file holds uint8 images (N × H × W × 3), int64 labels, the attributes as
JSON, and the fingerprint = SHA-256 of the generator version and every parameter.
The fingerprint is in the file name and inside the file; a file whose inside does
not match, or that cannot be read (truncated, corrupt), is rebuilt with a note.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..files import is_writable_dir, write_atomically
from ..validation import describe, fail

REPO_CACHE = Path(__file__).resolve().parents[2] / "data" / "cache"
USER_CACHE = Path.home() / ".cache" / "dlcourse"


def _check_cache_dir(cache_dir) -> Path:
    if not isinstance(cache_dir, (str, os.PathLike)):
        raise fail("cache_dir", "a folder path (str or Path) or None", describe(cache_dir))
    return Path(cache_dir).expanduser()


def candidate_dirs(cache_dir=None) -> list[Path]:
    """Folders to look in for a cache, in order: ``cache_dir`` alone if given, else the repo's, then the user's."""
    return [_check_cache_dir(cache_dir)] if cache_dir is not None else [REPO_CACHE, USER_CACHE]


def writable_dir(folders: list[Path]) -> Path | None:
    """The first of ``folders`` this user can write to (created if needed), or None."""
    return next((folder for folder in folders if is_writable_dir(folder)), None)


def fingerprint(params: dict) -> str:
    """SHA-256 (hex) of the parameters as canonical JSON; include the generator version in ``params``."""
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def cache_path(folder: Path, stem: str, params: dict) -> Path:
    return folder / f"{stem}_{fingerprint(params)[:16]}.npz"


def load(path: Path, params: dict, image_shape: tuple[int, int, int] | None = None, n_labels: int | None = None):
    """(images, labels, attributes) from ``path``, or None when absent, stale or unreadable (with a note).

    With ``image_shape`` (H, W, C) and ``n_labels``, a file whose images have another shape or
    dtype, or whose labels fall outside [0, n_labels), counts as unreadable and is rebuilt.
    """
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["fingerprint"]) != fingerprint(params):
                print(f"note: cache {path.name} was made with other parameters or an older generator; rebuilding it")
                return None
            images, labels = f["images"], f["labels"]
            attributes = json.loads(str(f["attributes"]))
        if len(images) != len(labels) or len(labels) != len(attributes):
            raise ValueError("images, labels and attributes differ in length")
        if image_shape is not None and (images.dtype != np.uint8 or images.shape[1:] != tuple(image_shape)):
            raise ValueError(f"images of shape {images.shape} and dtype {images.dtype}, expected N x "
                             f"{' x '.join(map(str, image_shape))} uint8")
        if n_labels is not None and (labels.dtype.kind not in "iu" or labels.ndim != 1
                                     or (labels.size and (labels.min() < 0 or labels.max() >= n_labels))):
            raise ValueError(f"labels outside [0, {n_labels})")
        if "n" in params and len(images) != params["n"]:
            raise ValueError(f"{len(images)} images, expected {params['n']}")
        return images, labels, attributes
    except Exception as err:  # a truncated, corrupt or wrong-shaped file: say so and rebuild
        print(f"note: cache {path.name} is unreadable ({type(err).__name__}: {str(err)[:200]}); rebuilding it")
        return None


def save(path: Path, params: dict, images: np.ndarray, labels: np.ndarray, attributes: list[dict]) -> None:
    """Write atomically: a temporary file in the same folder, then ``os.replace``."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez(f, images=images, labels=labels, attributes=np.array(json.dumps(attributes)),
                     fingerprint=np.array(fingerprint(params)))

    write_atomically(path, write)
