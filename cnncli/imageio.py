"""Reading image files: the one decoder behind ``cnn train``, ``cnn predict`` and ``cnn augment``.

:func:`read_image` returns the pixels as an (H, W, C) ``uint8`` or ``uint16`` array plus what
is needed to write them back in the same mode (``cnn augment``); :func:`load_image` returns
them as float32 ``[C, H, W]`` in [0, 1], fitted to a network's input (training and
prediction). Both go through the same steps:

* Only regular files are opened (non-blocking, checked with ``fstat``): a FIFO named
  ``x.png`` or a device never blocks a run; it is refused with a one-line reason.
* Images over ``max_pixels`` (decompression bombs) are refused before decoding.
* EXIF orientation is applied (a phone photo stored sideways comes out upright).
* Modes: L, LA, RGB, RGBA stay as they are; palette images are expanded to RGB (RGBA when the
  palette has transparency) and remembered, so outputs can be mapped back onto the same
  palette; 1-bit becomes L; CMYK/YCbCr/LAB/HSV become RGB.
* 16-bit greyscale stays 16-bit (``uint16``; :func:`load_image` divides by 65535). Pillow's
  own conversions clip such images to 255, i.e. white (a known trap). 48/64-bit PNGs are
  reduced to 8 bits per channel by Pillow itself; that is reported as a warning.
* 32-bit float images ("F", e.g. float TIFFs) are read by :func:`load_image` as they are and
  refused when they hold NaN or infinity; :func:`read_image` refuses them.
* Truncated, corrupt and non-image files raise :class:`ImageReadError`, naming the file and
  the reason in one line.

With ``rgbx=True`` :func:`read_image` returns an RGB image 4 bytes per pixel, as an (H, W, 3)
view of an (H, W, 4) buffer: the layout Pillow keeps RGB in, so one copy out of Pillow instead
of two, and the layout ``cnn augment``'s packed kernels want.

:data:`IMAGE_EXTENSIONS` is the one list of file names taken as images, everywhere.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnncli.fileio import FileReadError, open_regular

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "WRITE_FORMATS",
    "ImageMeta",
    "ImageReadError",
    "is_image_name",
    "load_image",
    "read_image",
    "scan_images",
]

#: Pillow format that files of each extension are written in (``cnn augment --format keep``).
WRITE_FORMATS = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".bmp": "BMP",
    ".gif": "GIF",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".webp": "WEBP",
    ".ppm": "PPM",
    ".pgm": "PPM",
    ".pbm": "PPM",
}
#: File name extensions taken as images by every command (lower case).
IMAGE_EXTENSIONS = frozenset(WRITE_FORMATS)
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own default limit (about 0.25 GiB of RGBA)


class ImageReadError(FileReadError):
    """A file that cannot be used as an image: ``str()`` is ``path: reason``."""


class _Unusable(Exception):
    """Raised inside the decoder with the reason only; turned into ImageReadError(path)."""


@dataclass
class ImageMeta:
    """What an encoder needs to write pixels back like the source."""

    format: str  # Pillow format name of the source ("JPEG", "PNG", ...)
    mode: str  # source mode as Pillow opened it
    palette: Any = None  # a Pillow "P" image whose palette outputs are mapped back onto
    icc_profile: bytes | None = None
    warnings: list[str] = field(default_factory=list)


def is_image_name(name: str | os.PathLike[str]) -> bool:
    """Whether a file name has one of :data:`IMAGE_EXTENSIONS`."""
    return os.path.splitext(os.fspath(name))[1].lower() in IMAGE_EXTENSIONS


def read_image(
    path: str | os.PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    rgbx: bool = False,
    bomb_hint: str = "",
    data: bytes | None = None,
) -> tuple[np.ndarray, ImageMeta]:
    """Decode ``path`` into (pixels, meta); raises :class:`ImageReadError` for bad files.

    ``rgbx``: RGB pixels as a read-only (H, W, 3) view of an (H, W, 4) buffer (see the module
    docstring); otherwise every array is a writable C-contiguous copy. ``bomb_hint`` is
    added to the too-many-pixels reason (how to raise the limit). ``data``: the file's bytes,
    read elsewhere (``cnn augment --transfer`` ships them to a worker without the file
    system); ``path`` then only names the file.
    """
    return _decode(path, max_pixels, bomb_hint, lambda im, meta: _to_array(im, meta, rgbx=rgbx),
                   data=data)


def load_image(
    path: str | os.PathLike[str], h: int, w: int, c: int, *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[np.ndarray, tuple[int, int], int]:
    """Decode and fit one image: float32 ``[c, h, w]``, its original (H, W), its channels.

    8-bit images that must shrink are resampled by Pillow before conversion (faster, the
    same bilinear antialiased rule as :func:`cnncli.data.fit.fit_array` uses for the rest).
    """
    from cnncli.data.fit import fit_array, plan_fit, to_channels

    size: list[int] = []

    def convert(im: Any, meta: ImageMeta) -> np.ndarray:
        from PIL import Image

        W, H = im.size
        size[:] = [H, W]
        plan = plan_fit(H, W, h, w)
        if plan.kind == "resize" and im.mode in ("L", "RGB", "RGBA"):
            nh, nw = plan.size
            im = im.resize((nw, nh), Image.Resampling.BILINEAR)
            im = im.crop((plan.left, plan.top, plan.left + w, plan.top + h))
        return _to_array(im, meta, allow_float=True)

    pixels, _ = _decode(path, max_pixels, "", convert)
    chans = pixels.shape[2]
    if pixels.dtype == np.uint8:
        x = pixels.astype(np.float32) * np.float32(1.0 / 255.0)
    elif pixels.dtype == np.uint16:
        x = pixels.astype(np.float32) / np.float32(65535.0)
    else:
        x = pixels
        if not np.isfinite(x).all():
            raise ImageReadError(path, "the image holds NaN or infinite values")
    if chans == 2:  # grey + alpha: the alpha is dropped
        x = x[:, :, :1]
    arr = np.ascontiguousarray(x.transpose(2, 0, 1))
    out = fit_array(to_channels(arr[None], c), h, w)[0]
    return out, (size[0], size[1]), 1 if chans <= 2 else chans


def _decode(
    path: str | os.PathLike[str],
    max_pixels: int,
    bomb_hint: str,
    convert: Callable[[Any, ImageMeta], np.ndarray],
    data: bytes | None = None,
) -> tuple[np.ndarray, ImageMeta]:
    """Open, check, decode and orient ``path`` (or its bytes ``data``); ``convert(image,
    meta)`` makes the array."""
    import io

    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        fh = io.BytesIO(data) if data is not None else open_regular(path, "file")
    except FileReadError as exc:
        reason = exc.reason
        if reason == "file not found" and os.path.islink(path):
            reason = "file not found (dangling link)"
        raise ImageReadError(path, reason) from None
    try:
        with fh, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fh) as im:
                w, h = im.size
                if w * h > max_pixels:
                    hint = f"; {bomb_hint}" if bomb_hint else ""
                    raise _Unusable(
                        f"too many pixels: {w}x{h} = {w * h:,} > limit {max_pixels:,} "
                        f"(decompression bomb guard{hint})")
                if w < 1 or h < 1:
                    raise _Unusable(f"the image has no pixels ({w}x{h})")
                fmt = im.format or WRITE_FORMATS.get(Path(path).suffix.lower(), "PNG")
                mode = im.mode
                meta = ImageMeta(format=fmt, mode=mode, icc_profile=im.info.get("icc_profile"))
                if fmt == "PNG" and mode in ("RGB", "RGBA") and _png_bit_depth(fh) == 16:
                    meta.warnings.append(
                        "16-bit-per-channel colour PNG read as 8 bits per channel "
                        "(Pillow cannot decode more)")
                im.load()
                ImageOps.exif_transpose(im, in_place=True)
                return convert(im, meta), meta
    except _Unusable as exc:
        raise ImageReadError(path, str(exc)) from None
    except UnidentifiedImageError:
        raise ImageReadError(path, "not a readable image (unknown or broken format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(path, f"too many pixels (decompression bomb guard): {exc}") \
            from None
    except OSError as exc:
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason:
            reason = f"truncated or corrupt: {reason}"
        raise ImageReadError(path, f"cannot decode image: {reason}") from None
    except MemoryError:
        raise ImageReadError(path, "not enough memory to decode the image") from None
    except Exception as exc:  # decoders raise SyntaxError, ValueError, struct.error, ...
        raise ImageReadError(path, f"cannot decode image: corrupt: {type(exc).__name__}: "
                                   f"{exc}") from None


def _png_bit_depth(fh: Any) -> int | None:
    """The IHDR bit depth, read at offset 24 without moving the decoder's file position."""
    try:
        head = bytes(fh.getbuffer()[:26]) if hasattr(fh, "getbuffer") else \
            os.pread(fh.fileno(), 26, 0)
    except (OSError, AttributeError):
        return None
    if len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return head[24]
    return None


def _to_array(im: Any, meta: ImageMeta, *, rgbx: bool = False,
              allow_float: bool = False) -> np.ndarray:
    """Pillow image -> (H, W, C) uint8/uint16 (float32 for "F" when ``allow_float``),
    recording palette information in ``meta``."""
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
        if mode == "I" and arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise _Unusable("32-bit integer image with values outside 0..65535")
        return np.ascontiguousarray(arr.astype(np.uint16))[:, :, None]
    elif mode == "F":
        if not allow_float:
            raise _Unusable("32-bit float images are not supported")
        return np.array(im, dtype=np.float32)[:, :, None]
    if im.mode not in ("L", "LA", "RGB", "RGBA"):
        raise _Unusable(f"unsupported image mode {im.mode}")
    if rgbx and im.mode == "RGB":
        w, h = im.size
        return np.ndarray((h, w, 4), np.uint8, buffer=im.tobytes("raw", "RGBX"))[..., :3]
    arr = np.array(im)  # a writable copy (np.asarray of a Pillow image is read-only)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr)


def scan_images(
    folder: str | os.PathLike[str], *, recursive: bool = False, skip_hidden: bool = True
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Image files in ``folder`` (sorted), and image-named entries that are not regular
    files (FIFOs, devices, sockets) with the reason they are skipped: a folder scan never
    opens those. Other names are ignored; so are hidden ones (``skip_hidden``)."""
    from cnncli.fileio import not_regular_reason

    found: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    stack = [Path(folder)]
    seen: set[tuple[int, int]] = set()  # folders by (device, inode): links never loop
    while stack:
        here = stack.pop()
        st = os.stat(here)
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        with os.scandir(here) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            if skip_hidden and entry.name.startswith("."):
                continue
            path = here / entry.name
            try:
                if entry.is_dir():
                    if recursive:
                        stack.append(path)
                    continue
                if not is_image_name(entry.name):
                    continue
                if entry.is_file():
                    found.append(path)
                else:
                    skipped.append((path, not_regular_reason(entry.stat().st_mode)))
            except OSError:  # a dangling link: not an image file here
                continue
    found.sort()
    skipped.sort()
    return found, skipped
