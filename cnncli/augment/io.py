"""Reading and writing images robustly.

Reading (:func:`read_image`) returns the pixels as an (H, W, C) ``uint8`` or ``uint16`` array
plus what is needed to write them back in the same mode:

* EXIF orientation is applied (a phone photo stored sideways comes out upright).
* Modes: L, LA, RGB, RGBA stay as they are; palette images are expanded to RGB (RGBA when the
  palette has transparency) and remembered, so PNG/BMP/TIFF outputs are mapped back onto the
  same palette; 1-bit becomes L; CMYK/YCbCr/LAB/HSV become RGB.
* 16-bit greyscale stays 16-bit (``uint16``) all the way through. Pillow's own conversions clip
  such images to 255, i.e. white (a known trap); JPEG/WebP/BMP outputs, which cannot hold 16
  bits, are rescaled with ``round(v * 255 / 65535)`` instead. 48/64-bit PNGs are reduced to 8
  bits per channel by Pillow itself; that is reported as a warning.
* Images over ``max_pixels`` (decompression bombs) are refused before decoding; truncated,
  corrupt, unreadable and non-image files raise :class:`ImageReadError` with a one-line reason.
* With ``rgbx=True`` an RGB image comes back 4 bytes per pixel, as an (H, W, 3) view of an
  (H, W, 4) buffer (:func:`rgbx_base`): the layout Pillow keeps RGB in, so one copy out of
  Pillow instead of two, and the layout the packed kernels and :func:`to_pil` want.

Writing (:func:`encode_image`, :func:`write_atomic`) encodes to memory, then writes a temporary
file in the destination folder and renames it over the target, so a reader never sees a
half-written image and an interrupted run leaves no partial outputs.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnncli.errors import DataError

IMAGE_EXTENSIONS = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".webp": "WEBP",
}
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own default limit (about 0.25 GiB of RGBA)
TEMP_PREFIX = ".cnnaug-"
TEMP_SUFFIX = ".tmp"


class ImageReadError(DataError):
    """A file that cannot be used as an input image (the run skips it and reports it)."""


@dataclass
class ImageMeta:
    """What :func:`encode_image` needs to write pixels back like the source."""

    format: str  # Pillow format name of the source ("JPEG", "PNG", ...)
    mode: str  # source mode as Pillow opened it
    palette: Any = None  # a Pillow "P" image whose palette outputs are mapped back onto
    icc_profile: bytes | None = None
    warnings: list[str] = field(default_factory=list)


def read_image(
    path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS, rgbx: bool = False
) -> tuple[np.ndarray, ImageMeta]:
    """Decode ``path`` into (pixels, meta); raises :class:`ImageReadError` for bad files.

    ``rgbx``: RGB pixels as a read-only (H, W, 3) view of an (H, W, 4) buffer (see the module
    docstring); otherwise every array is a writable C-contiguous copy.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageReadError(
                        f"too many pixels: {w}x{h} = {w * h:,} > limit {max_pixels:,} "
                        "(decompression bomb guard; raise it with --max-pixels)"
                    )
                fmt = im.format or IMAGE_EXTENSIONS.get(path.suffix.lower(), "PNG")
                mode = im.mode
                meta = ImageMeta(format=fmt, mode=mode, icc_profile=im.info.get("icc_profile"))
                if fmt == "PNG":
                    depth = _png_bit_depth(path)
                    if depth == 16 and mode in ("RGB", "RGBA"):
                        meta.warnings.append(
                            f"{depth}-bit-per-channel colour PNG read as 8 bits per channel "
                            "(Pillow cannot decode more)"
                        )
                im.load()
                ImageOps.exif_transpose(im, in_place=True)
                pixels = _to_array(im, meta, rgbx=rgbx)
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError("file not found (dangling link?)") from None
    except PermissionError:
        raise ImageReadError("permission denied") from None
    except IsADirectoryError:
        raise ImageReadError("is a directory") from None
    except UnidentifiedImageError:
        raise ImageReadError("not an image (or a format Pillow cannot read)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(f"too many pixels (decompression bomb guard): {exc}") from None
    except OSError as exc:
        if exc.errno == 40:  # ELOOP
            raise ImageReadError("symbolic link loop") from None
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason:
            reason = f"truncated or corrupt: {reason}"
        raise ImageReadError(reason) from None
    except Exception as exc:  # decoders raise SyntaxError, ValueError, struct.error, ...
        raise ImageReadError(f"corrupt image: {type(exc).__name__}: {exc}") from None
    return pixels, meta


def _png_bit_depth(path: Path) -> int | None:
    try:
        with open(path, "rb") as fh:
            head = fh.read(26)
    except OSError:
        return None
    if len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return head[24]
    return None


def _to_array(im: Any, meta: ImageMeta, *, rgbx: bool = False) -> np.ndarray:
    """Pillow image -> (H, W, C) uint8/uint16, recording palette information in ``meta``."""
    mode = im.mode
    if mode == "P":
        has_alpha = "transparency" in im.info
        if not has_alpha:
            meta.palette = im
        im = im.convert("RGBA" if has_alpha else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode == "1":
        im = im.convert("L")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        if mode != "RGBX":
            meta.icc_profile = None  # a CMYK/Lab profile would mislabel the RGB output
        im = im.convert("RGB")
    elif mode in ("La", "RGBa"):
        im = im.convert(mode[:-1] + "A")
    elif mode.startswith("I;16") or mode == "I":
        arr = np.array(im)
        if mode == "I" and (arr.min() < 0 or arr.max() > 65535):
            raise ImageReadError("32-bit integer image with values outside 0..65535")
        return np.ascontiguousarray(arr.astype(np.uint16))[:, :, None]
    elif mode == "F":
        raise ImageReadError("32-bit float images are not supported")
    if im.mode not in ("L", "LA", "RGB", "RGBA"):
        raise ImageReadError(f"unsupported image mode {im.mode}")
    if rgbx and im.mode == "RGB":
        w, h = im.size
        return np.ndarray((h, w, 4), np.uint8, buffer=im.tobytes("raw", "RGBX"))[..., :3]
    arr = np.array(im)  # a writable copy (np.asarray of a Pillow image is read-only)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr)


def output_format(src_format: str, wanted: str) -> str:
    """Pillow format to write: ``keep`` keeps the source's, else ``PNG`` or ``JPEG``."""
    if wanted == "keep":
        return src_format if src_format in set(IMAGE_EXTENSIONS.values()) else "PNG"
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
    if fmt in ("JPEG", "WEBP", "BMP") and arr.dtype == np.uint16:
        arr = _to_8bit(arr)
    if fmt == "JPEG":
        arr = _flatten_alpha(arr)
    if fmt in ("JPEG", "BMP") and arr.shape[2] == 2:
        arr = _flatten_alpha(arr)
    if meta.palette is not None and fmt in ("PNG", "BMP", "TIFF") and arr.shape[2] == 3:
        im = to_palette(arr, meta.palette)
    else:
        im = to_pil(arr, rgbx=fmt == "JPEG")
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


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``.

    The temporary name is hidden (``.cnnaug-<pid>-<n>-<name>.tmp``) and created with
    ``O_EXCL``; permissions follow the umask like any new file. Names are plain strings
    (``os.path``): this runs once per output, and ``pathlib`` costs a few microseconds more.
    """
    path = os.fspath(path)
    folder, name = os.path.split(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        hidden = f"{TEMP_PREFIX}{os.getpid()}-{next(_COUNTER)}-{name}{TEMP_SUFFIX}"
        tmp = os.path.join(folder, hidden)
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:  # left over by a killed process that had our pid
            continue
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


_COUNTER = itertools.count()
