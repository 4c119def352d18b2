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
import tempfile
from pathlib import Path

import numpy as np

from ..files import write_atomically
from ..validation import describe, fail

REPO_CACHE = Path(__file__).resolve().parents[2] / "data" / "cache"
USER_CACHE = Path.home() / ".cache" / "dlcourse"


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def resolve_cache_dir(cache_dir=None) -> Path:
    """``cache_dir`` if given (created if needed), else the repo's ``data/cache``, else ``~/.cache/dlcourse``."""
    if cache_dir is not None:
        if not isinstance(cache_dir, (str, os.PathLike)):
            raise fail("cache_dir", "a folder path (str or Path) or None", describe(cache_dir))
        folder = Path(cache_dir).expanduser()
        if not _writable(folder):
            raise fail("cache_dir", "a folder this user can write to", f"{str(folder)!r}")
        return folder
    return REPO_CACHE if _writable(REPO_CACHE) else USER_CACHE


def fingerprint(params: dict) -> str:
    """SHA-256 (hex) of the parameters as canonical JSON; include the generator version in ``params``."""
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def cache_path(folder: Path, stem: str, params: dict) -> Path:
    return folder / f"{stem}_{fingerprint(params)[:16]}.npz"


def load(path: Path, params: dict):
    """(images, labels, attributes) from ``path``, or None when absent, stale or unreadable (with a note)."""
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
        return images, labels, attributes
    except Exception as err:  # a truncated or corrupt file: say so and rebuild
        print(f"note: cache {path.name} is unreadable ({type(err).__name__}: {err}); rebuilding it")
        return None


def save(path: Path, params: dict, images: np.ndarray, labels: np.ndarray, attributes: list[dict]) -> None:
    """Write atomically: a temporary file in the same folder, then ``os.replace``."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez(f, images=images, labels=labels, attributes=np.array(json.dumps(attributes)),
                     fingerprint=np.array(fingerprint(params)))

    write_atomically(path, write)
