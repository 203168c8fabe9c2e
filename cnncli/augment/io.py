"""Writing augmented images back like their sources (reading is :mod:`cnncli.imageio`).

:func:`encode_image` encodes pixels in the source's mode where the output format allows
(palette images mapped back onto their palette, 16-bit grey kept 16-bit for PNG/TIFF/PGM,
1-bit PBM thresholded back to 1 bit) and rescales or flattens where it does not (16 bits to 8
for JPEG/WebP/BMP/GIF as ``round(v * 255 / 65535)``, alpha over white for JPEG and PPM).
Files are written with :func:`cnncli.fileio.atomic_write_bytes`.

The reading API (:func:`read_image`, :class:`ImageMeta`, :class:`ImageReadError`,
:data:`IMAGE_EXTENSIONS`) is re-exported from :mod:`cnncli.imageio`, the one decoder.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from cnncli.imageio import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    WRITE_FORMATS,
    ImageMeta,
    ImageReadError,
    read_image,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "WRITE_FORMATS",
    "ImageMeta",
    "ImageReadError",
    "encode_image",
    "output_format",
    "read_image",
    "rgbx_base",
    "to_palette",
    "to_pil",
]

_WRITABLE = frozenset(WRITE_FORMATS.values())


def output_format(src_format: str, wanted: str) -> str:
    """Pillow format to write: ``keep`` keeps the source's, else ``PNG`` or ``JPEG``."""
    if wanted == "keep":
        return src_format if src_format in _WRITABLE else "PNG"
    return {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG"}[wanted]


def _to_8bit(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _flatten_alpha(arr: np.ndarray, background: int = 255) -> np.ndarray:
    """Composite grey+alpha / RGBA over a white background (for formats without alpha)."""
    if arr.shape[2] not in (2, 4):
        return arr
    colour = arr[..., :-1].astype(np.uint32)
    alpha = arr[..., -1:].astype(np.uint32)
    top = 255
    out = (colour * alpha + background * (top - alpha) + top // 2) // top
    return out.astype(np.uint8)


def rgbx_base(arr: np.ndarray) -> np.ndarray | None:
    """The (H, W, 4) uint8 array whose first three channels ``arr`` is, or None: how an RGB
    image held 4 bytes per pixel (by :func:`read_image`, ``functional.to_rgbx`` or a packed
    kernel) is recognised."""
    base = arr.base
    if (
        arr.ndim == 3
        and arr.shape[2] == 3
        and arr.size
        and isinstance(base, np.ndarray)
        and base.shape == (*arr.shape[:2], 4)
        and base.dtype == np.uint8
        and base.flags.c_contiguous
        and arr.strides == base.strides
        and np.shares_memory(arr[0, 0, :1], base[0, 0, :1])  # starts where base starts
    ):
        return base
    return None


def to_pil(arr: np.ndarray, *, rgbx: bool = False) -> Any:
    """(H, W, C) uint8/uint16 array -> Pillow image (L, LA, RGB, RGBA or I;16).

    An RGB image held 4 bytes per pixel (:func:`rgbx_base`) becomes, with ``rgbx``, an "RGBX"
    image that shares its memory (JPEG writes it as RGB, byte for byte the same file).
    """
    from PIL import Image

    base = rgbx_base(arr)
    if base is not None:
        h, w = arr.shape[:2]
        im = Image.frombuffer("RGBX", (w, h), base, "raw", "RGBX", 0, 1)
        return im if rgbx else im.convert("RGB")

    if arr.dtype == np.uint16:
        if arr.shape[2] != 1:
            raise ValueError("16-bit images must be greyscale")
        return Image.fromarray(np.ascontiguousarray(arr[:, :, 0], dtype="<u2"))
    data = arr[:, :, 0] if arr.shape[2] == 1 else arr
    return Image.fromarray(np.ascontiguousarray(data))  # L, LA, RGB or RGBA from the shape


def to_palette(arr: np.ndarray, palette_image: Any) -> Any:
    """Map RGB pixels onto the nearest colours of ``palette_image``'s palette (a "P" image).

    Exact nearest neighbour in RGB (first entry on ties), computed once per distinct colour;
    Pillow's own ``quantize(palette=...)`` uses a coarse colour cube and moves colours that are
    in the palette. Unchanged pixels therefore keep their original index.
    """
    from PIL import Image

    pal = np.array(palette_image.getpalette() or [0, 0, 0], dtype=np.int32).reshape(-1, 3)
    rgb = arr.reshape(-1, 3).astype(np.int32)
    packed = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
    uniq, inverse = np.unique(packed, return_inverse=True)
    colours = np.stack([uniq >> 16, (uniq >> 8) & 255, uniq & 255], axis=1)
    nearest = np.empty(len(uniq), dtype=np.uint8)
    for start in range(0, len(uniq), 4096):
        block = colours[start : start + 4096]
        dist = ((block[:, None, :] - pal[None, :, :]) ** 2).sum(axis=2)
        nearest[start : start + 4096] = dist.argmin(axis=1)
    index = np.ascontiguousarray(nearest[inverse.reshape(-1)])
    out = Image.frombytes("P", (arr.shape[1], arr.shape[0]), index.tobytes())
    out.putpalette(palette_image.getpalette() or [0, 0, 0])
    return out


def encode_image(
    arr: np.ndarray, meta: ImageMeta, fmt: str, *, quality: int = 95, png_level: int = 1
) -> bytes:
    """Encode pixels in Pillow format ``fmt``, in the source's mode where the format allows."""
    if fmt in ("JPEG", "WEBP", "BMP", "GIF") and arr.dtype == np.uint16:
        arr = _to_8bit(arr)
    if fmt in ("JPEG", "PPM"):
        arr = _flatten_alpha(arr)
    if fmt in ("JPEG", "BMP") and arr.shape[2] == 2:
        arr = _flatten_alpha(arr)
    if meta.palette is not None and fmt in ("PNG", "BMP", "TIFF", "GIF") and arr.shape[2] == 3:
        im = to_palette(arr, meta.palette)
    else:
        im = to_pil(arr, rgbx=fmt == "JPEG")
    if fmt == "PPM" and meta.mode == "1" and im.mode == "L":  # a PBM stays 1-bit
        from PIL import Image

        im = im.convert("1", dither=Image.Dither.NONE)
    kwargs: dict[str, Any] = {}
    if meta.icc_profile and fmt in ("JPEG", "PNG", "TIFF", "WEBP"):
        kwargs["icc_profile"] = meta.icc_profile
    if fmt == "JPEG":
        kwargs.update(quality=quality)
    elif fmt == "PNG":
        kwargs.update(compress_level=png_level)
    elif fmt == "WEBP":
        kwargs.update(quality=quality)
    elif fmt == "TIFF":
        kwargs.update(compression="tiff_deflate")
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()
