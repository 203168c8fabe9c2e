"""Shared fixtures for the augmentation tests: real images copied into tests/data/images."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[1] / "data" / "images"
EDGE = DATA / "edge"
PHOTOS = DATA / "photos"
DIGITS = DATA / "digits"


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def photo_tree(tmp_path: Path) -> Path:
    """A small class-folder tree of real photos and digits (a private copy)."""
    root = tmp_path / "in"
    shutil.copytree(PHOTOS, root / "photos")
    shutil.copytree(DIGITS, root / "digits")
    return root


@pytest.fixture
def rgb() -> np.ndarray:
    """A real 64x80 RGB photo crop (uint8), with texture in every channel."""
    from PIL import Image

    with Image.open(PHOTOS / "cat" / "chelsea_crop_face.jpg") as im:
        arr = np.array(im.convert("RGB"))
    return np.ascontiguousarray(arr[60:124, 100:180])
