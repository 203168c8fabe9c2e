"""Image folders: one subfolder per class, optionally inside ``train/``, ``val/``, ``test/``.

Layouts::

    root/train/<class>/*.png   root/test/<class>/*.png   (val/ optional, test/ optional)
    root/<class>/*.jpg                                   (no splits: a val fraction is carved)

Class names are the subfolder names, sorted; a class's index is its position in the
training classes. Files are taken in sorted order, by extension (hidden files and other
extensions are ignored). Each image is decoded with Pillow, turned upright from its EXIF
orientation, reduced to grey or RGB (16-bit grey scaled by 1/65535, not clipped; palette
expanded; alpha dropped), then fitted to the target size and channel count by the rule in
:mod:`cnncli.data.fit`. Images differ in size, so fitting happens here, per image.
An unreadable image is an error naming the file: training on silently fewer images than the
folder holds would be worse.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cnncli.data.fit import describe_channels, describe_sizes, fit_array, plan_fit, to_channels
from cnncli.data.source import RawSplit, Source
from cnncli.errors import DataError

__all__ = ["IMAGE_EXTENSIONS", "is_image_folder", "load_image", "read_image_folder"]

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
SPLITS = ("train", "val", "test")


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _has_split_layout(root: Path) -> bool:
    return (root / "train").is_dir() and bool(_subdirs(root / "train"))


def is_image_folder(root: Path) -> bool:
    """True when ``root`` holds class subfolders with images (directly or under train/)."""
    base = root / "train" if _has_split_layout(root) else root
    return any(_images(d) for d in _subdirs(base))


def _to_array(img: Any) -> tuple[np.ndarray, int]:
    """A Pillow image as float32 ``[C, H, W]`` in [0, 1] and its channel count (1, 3, 4)."""
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(img, dtype=np.float32) / np.float32(65535.0)
        return a[None], 1
    if mode == "F":
        return np.asarray(img, dtype=np.float32)[None], 1
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("1", "LA", "La"):
        img = img.convert("L")
    elif mode in ("PA", "RGBa"):
        img = img.convert("RGBA")
    elif mode not in ("L", "RGB", "RGBA"):
        img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX
    a = np.asarray(img, dtype=np.float32) * np.float32(1.0 / 255.0)
    if a.ndim == 2:
        return a[None], 1
    return np.ascontiguousarray(a.transpose(2, 0, 1)), a.shape[2]


def load_image(path: Path, h: int, w: int, c: int) -> tuple[np.ndarray, tuple[int, int], int]:
    """Decode and fit one image: float32 ``[c, h, w]``, its original (H, W), its channels."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            W, H = im.size
            plan = plan_fit(H, W, h, w)
            if plan.kind == "resize" and im.mode in ("L", "RGB", "RGBA"):  # resample 8-bit
                nh, nw = plan.size
                im = im.resize((nw, nh), Image.Resampling.BILINEAR)
                im = im.crop((plan.left, plan.top, plan.left + w, plan.top + h))
            arr, c0 = _to_array(im)
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image (unknown or broken format)") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: image too large to decode safely ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from None
    x = fit_array(to_channels(arr[None], c), h, w)[0]
    return x, (H, W), c0


def _read_split(
    folder: Path, classes: list[str], h: int, w: int, c: int, sizes: list, c0s: list
) -> RawSplit:
    index = {name: i for i, name in enumerate(classes)}
    files: list[Path] = []
    labels: list[int] = []
    for d in _subdirs(folder):
        if d.name not in index:
            raise DataError(f"{d}: class '{d.name}' is not among the training classes")
        found = _images(d)
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
    splits = {"train": _read_split(train_dir, classes, h, w, c, sizes, c0s)}
    if split_layout:
        for name in ("val", "test"):
            if (root / name).is_dir():
                splits[name] = _read_split(root / name, classes, h, w, c, sizes, c0s)
    counts = ", ".join(f"{k} {len(s.y)}" for k, s in splits.items())
    note = (
        f"image folder {root} ({len(classes)} classes; {counts} images): "
        f"{describe_sizes(sizes, h, w)}; {describe_channels(c0s, c)}"
    )
    return Source("folder", splits, classes, note, fitted=True)
