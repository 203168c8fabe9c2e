"""Image folders: one subfolder per class, optionally inside ``train/``, ``val/``, ``test/``.

Layouts::

    root/train/<class>/*.png   root/test/<class>/*.png   (val/ optional, test/ optional)
    root/<class>/*.jpg                                   (no splits: a val fraction is carved)

Class names are the subfolder names, sorted; a class's index is its position in the
training classes. Files are taken in sorted order, by extension (hidden files and other
extensions are ignored; entries named like images that are not regular files, such as a
FIFO, are skipped with a warning, never opened). Each image is decoded by
:func:`cnncli.imageio.load_image`, the decoder ``cnn predict`` and ``cnn augment`` use too:
turned upright from its EXIF orientation, reduced to grey or RGB (16-bit grey scaled by
1/65535, not clipped; palette expanded; alpha dropped), then fitted to the target size and
channel count by the rule in :mod:`cnncli.data.fit`. Images differ in size, so fitting
happens here, per image. An unreadable image is an error naming the file: training on
silently fewer images than the folder holds would be worse.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnncli.data.fit import describe_channels, describe_sizes
from cnncli.data.source import RawSplit, Source
from cnncli.errors import DataError
from cnncli.imageio import IMAGE_EXTENSIONS, load_image, scan_images

__all__ = ["IMAGE_EXTENSIONS", "is_image_folder", "load_image", "read_image_folder"]

SPLITS = ("train", "val", "test")


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(folder: Path, skipped: list[str] | None = None) -> list[Path]:
    """Image files of a class folder; FIFOs and devices named like images are skipped (a
    read would block or never end) and listed in ``skipped``."""
    found, others = scan_images(folder)
    if skipped is not None:
        skipped += [f"{p}: {why}" for p, why in others]
    return found


def _has_split_layout(root: Path) -> bool:
    return (root / "train").is_dir() and bool(_subdirs(root / "train"))


def is_image_folder(root: Path) -> bool:
    """True when ``root`` holds class subfolders with images (directly or under train/)."""
    base = root / "train" if _has_split_layout(root) else root
    return any(_images(d) for d in _subdirs(base))


def _read_split(
    folder: Path, classes: list[str], h: int, w: int, c: int, sizes: list, c0s: list,
    skipped: list[str],
) -> RawSplit:
    index = {name: i for i, name in enumerate(classes)}
    files: list[Path] = []
    labels: list[int] = []
    for d in _subdirs(folder):
        if d.name not in index:
            raise DataError(f"{d}: class '{d.name}' is not among the training classes")
        found = _images(d, skipped)
        files += found
        labels += [index[d.name]] * len(found)
    if not files:
        raise DataError(f"{folder}: no images found in its class subfolders")
    x = np.empty((len(files), c, h, w), dtype=np.float32)
    for i, f in enumerate(files):
        x[i], size, c0 = load_image(f, h, w, c)
        sizes.append(size)
        c0s.append(c0)
    return RawSplit(x, np.asarray(labels, dtype=np.int64), str(folder), str(folder))


def read_image_folder(root: Path, h: int, w: int, c: int) -> Source:
    """Read an image-folder dataset, fitting every image to ``[c, h, w]`` as it is read."""
    split_layout = _has_split_layout(root)
    train_dir = root / "train" if split_layout else root
    class_dirs = _subdirs(train_dir)
    if not class_dirs:
        raise DataError(f"{train_dir}: no class subfolders")
    for d in class_dirs:
        if not _images(d):
            raise DataError(f"{d}: class folder has no images")
    classes = [d.name for d in class_dirs]
    sizes: list[tuple[int, int]] = []
    c0s: list[int] = []
    skipped: list[str] = []
    splits = {"train": _read_split(train_dir, classes, h, w, c, sizes, c0s, skipped)}
    if split_layout:
        for name in ("val", "test"):
            if (root / name).is_dir():
                splits[name] = _read_split(root / name, classes, h, w, c, sizes, c0s, skipped)
    counts = ", ".join(f"{k} {len(s.y)}" for k, s in splits.items())
    note = (
        f"image folder {root} ({len(classes)} classes; {counts} images): "
        f"{describe_sizes(sizes, h, w)}; {describe_channels(c0s, c)}"
    )
    warnings = tuple(f"skipped {w}" for w in skipped)
    return Source("folder", splits, classes, note, fitted=True, warnings=warnings)
