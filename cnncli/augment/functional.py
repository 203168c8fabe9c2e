"""Pure, deterministic image transforms with explicit parameters (no randomness in here).

Images are NumPy arrays of shape (H, W, C), dtype ``uint8`` or ``uint16``, C in {1, 2, 3, 4}:
grey, grey + alpha, RGB, RGBA. Every function returns a new array of the same dtype (the input is
never modified). 8-bit RGB may be held 4 bytes per pixel (:func:`to_rgbx`): the warp and the
table functions then run faster kernels that read a pixel as one uint32 (the ``packed`` ones in
``_kernels``) and hand back the same layout. Colour operations leave the alpha channel alone;
values that depend on 8-bit levels (``fill``, noise ``sigma``, PCA shifts) are given in 0..255
units and scaled by ``maxval / 255`` for 16-bit images.

Geometry convention (shared by every geometric op, the Numba kernel and its NumPy twin): pixel
(r, c) covers the square [c, c + 1) x [r, r + 1) in continuous coordinates, so its centre is
(c + 0.5, r + 0.5). A geometric transform is a 3x3 homogeneous matrix that maps OUTPUT
continuous coordinates to INPUT continuous coordinates (the direction a warp needs), and
composing ops is a matrix product: for ``a`` then ``b``, ``M = M_a @ M_b``. Rotations are
counter-clockwise on screen for positive angles (Pillow's and torchvision's convention).

Colour conventions: brightness ``x * f``; contrast ``mean + f * (x - mean)`` with ``mean`` the
luminance mean (0.299 R + 0.587 G + 0.114 B) of the whole image; results are rounded half up and
clipped to the dtype's range, so a per-channel op is exactly a lookup table and a chain of them
composes into one table.
"""

from __future__ import annotations

import contextvars
import functools
import math
from collections.abc import Sequence

import numpy as np

from cnncli.augment import _kernels as K
from cnncli.augment.io import rgbx_base

BORDERS = {"constant": K.BORDER_CONSTANT, "edge": K.BORDER_EDGE, "reflect": K.BORDER_REFLECT}
INTERPOLATIONS = ("bilinear", "nearest")
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 weights, as in Pillow's RGB -> L


# --------------------------------------------------------------------------- image basics


def maxval(img: np.ndarray) -> int:
    """Largest representable value of the image's dtype (255 or 65535)."""
    return 255 if img.dtype == np.uint8 else int(np.iinfo(img.dtype).max)


def colour_channels(channels: int) -> int:
    """How many leading channels carry colour (the rest is alpha): 1 for L/LA, 3 for RGB/RGBA."""
    return 3 if channels >= 3 else 1


def fill_vector(channels: int, fill: float, dtype: np.dtype) -> np.ndarray:
    """Per-channel fill for a grey level ``fill`` (0..255): colour channels = fill, alpha = 0.

    Areas a warp uncovers therefore become transparent in images that have an alpha channel.
    """
    top = 255 if dtype == np.uint8 else int(np.iinfo(dtype).max)
    level = min(max(round(float(fill) * top / 255.0), 0), top)
    vec = np.full(channels, level, dtype=dtype)
    vec[colour_channels(channels) :] = 0
    return vec


@functools.cache
def _warp_fill(channels: int, fill: float, dtype: np.dtype) -> np.ndarray:
    """:func:`fill_vector`, read-only and made once per (channels, fill, dtype): a warp runs per
    image and building the vector costs more than a look-up."""
    vec = fill_vector(channels, fill, dtype)
    vec.setflags(write=False)
    return vec


def to_rgbx(img: np.ndarray) -> np.ndarray:
    """An (H, W, 3) uint8 image as a view of a new (H, W, 4) buffer whose fourth byte is 255:
    Pillow's own layout for RGB, in which the packed kernels read a pixel as one uint32 word
    and :func:`~cnncli.augment.io.to_pil` hands the buffer to Pillow without unpacking it."""
    out = np.empty((*img.shape[:2], 4), np.uint8)
    return K.pad_rgbx(np.ascontiguousarray(img), out)[..., :3]


#: Whether 8-bit RGB(A) may take the packed kernels. The byte kernels give the same bytes; a
#: run too small to repay compiling the packed ones (about 3 s on an empty Numba cache, for
#: ~0.14 ms saved per 224x224 output) switches them off for its duration (runner.run).
PACKED: contextvars.ContextVar[bool] = contextvars.ContextVar("cnncli_packed", default=True)


def packed_words(img: np.ndarray, *, pad: bool = False) -> np.ndarray | None:
    """(H, W) uint32 words of an 8-bit RGB or RGBA image, one per pixel, for the packed kernels;
    None for other images. RGB must be held 4 bytes per pixel (:func:`to_rgbx`) unless ``pad``,
    which copies it so (worth it when the kernel's work exceeds the copy's). None whenever
    ``PACKED`` is off."""
    if img.dtype != np.uint8 or img.ndim != 3 or img.size == 0 or not PACKED.get():
        return None
    if img.shape[2] == 4:
        full = img if img.flags.c_contiguous else (np.ascontiguousarray(img) if pad else None)
    elif img.shape[2] == 3:
        full = rgbx_base(img)
        if full is None and pad:
            full = rgbx_base(to_rgbx(img))
    else:
        return None
    if full is None:
        return None
    words = full.view(np.uint32).reshape(img.shape[:2])
    return words if words.flags.aligned else None


def _check(img: np.ndarray) -> np.ndarray:
    if img.ndim != 3 or img.shape[2] not in (1, 2, 3, 4) or img.dtype not in (np.uint8, np.uint16):
        raise ValueError(
            f"expected an (H, W, C) uint8/uint16 image with C in 1..4, got shape {img.shape} "
            f"dtype {img.dtype}"
        )
    return np.ascontiguousarray(img)


# --------------------------------------------------------------------------- geometry matrices


def translation(tx: float, ty: float) -> np.ndarray:
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def flip_matrix(shape: Sequence[int], axis: str) -> np.ndarray:
    """Mirror: 'horizontal' maps x to W - x (left-right), 'vertical' maps y to H - y."""
    h, w = shape[0], shape[1]
    if axis == "horizontal":
        return np.array([[-1.0, 0.0, float(w)], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    if axis == "vertical":
        return np.array([[1.0, 0.0, 0.0], [0.0, -1.0, float(h)], [0.0, 0.0, 1.0]])
    raise ValueError(f"flip axis must be 'horizontal' or 'vertical', got {axis!r}")


def rotation_matrix(shape: Sequence[int], angle: float) -> np.ndarray:
    """Rotate the content by ``angle`` degrees counter-clockwise about the image centre.

    With y pointing down, the forward map of an offset (dx, dy) from the centre is
    (c dx + s dy, -s dx + c dy); the returned output -> input map is its transpose.
    """
    t = math.radians(angle)
    c, s = math.cos(t), math.sin(t)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    to_centre, from_centre = _centre_shifts(shape[0], shape[1])
    return to_centre @ rot @ from_centre


@functools.lru_cache(maxsize=256)
def _centre_shifts(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """``translation(w / 2, h / 2)`` and its inverse, read-only: made once per image size
    rather than per rotation (the images of a folder often share a few sizes)."""
    cx, cy = w / 2.0, h / 2.0
    shifts = translation(cx, cy), translation(-cx, -cy)
    for m in shifts:
        m.setflags(write=False)
    return shifts


def shift_matrix(dx: float, dy: float) -> np.ndarray:
    """Move the content right by ``dx`` and down by ``dy`` pixels."""
    return translation(-dx, -dy)


def scale_matrix(shape: Sequence[int], factor: float) -> np.ndarray:
    """Zoom the content by ``factor`` about the centre (> 1 zooms in), keeping the size."""
    h, w = shape[0], shape[1]
    cx, cy = w / 2.0, h / 2.0
    inv = 1.0 / factor
    return translation(cx, cy) @ np.diag([inv, inv, 1.0]) @ translation(-cx, -cy)


def resized_crop_matrix(
    top: float, left: float, height: float, width: float, out_h: int, out_w: int
) -> np.ndarray:
    """Map an ``out_h`` x ``out_w`` output onto the box (left, top, width, height) of the input."""
    return np.array(
        [[width / out_w, 0.0, left], [0.0, height / out_h, top], [0.0, 0.0, 1.0]], dtype=float
    )


# --------------------------------------------------------------------------- warping


def reduce_factors(matrix: np.ndarray) -> tuple[int, int]:
    """Integer box-reduction factors (kx, ky) that keep a bilinear downscale below 2x.

    ``hypot(a, b)`` is how many input columns one output pixel spans (rotation-invariant);
    when it is 2 or more the input is box-averaged by ``floor`` of it first, which is
    Pillow's ``reduce`` idea: bilinear sampling alone would alias (skip pixels).
    """
    sx = math.hypot(matrix[0, 0], matrix[0, 1])
    sy = math.hypot(matrix[1, 0], matrix[1, 1])
    kx = int(sx) if sx >= 2.0 else 1
    ky = int(sy) if sy >= 2.0 else 1
    return kx, ky


def box_reduce(img: np.ndarray, ky: int, kx: int) -> np.ndarray:
    """Average ``ky`` x ``kx`` blocks (edge blocks average the pixels they have); rounded."""
    img = _check(img)
    h, w, c = img.shape
    out = np.empty((-(-h // ky), -(-w // kx), c), img.dtype)
    return K.box_reduce(img, ky, kx, out)


def warp_affine(
    img: np.ndarray,
    matrix: np.ndarray,
    out_hw: tuple[int, int],
    *,
    interpolation: str = "bilinear",
    border: str = "constant",
    fill: float = 0,
    antialias: bool = True,
) -> np.ndarray:
    """Resample ``img`` through the output -> input ``matrix`` into an ``out_hw`` image.

    Bilinear sampling with borders 'constant' (neighbours outside take ``fill``, alpha 0),
    'edge' (clamp) or 'reflect' (mirror, edge pixel not repeated). With ``antialias`` a
    downscale of 2x or more first box-reduces the input (see :func:`reduce_factors`).
    8-bit RGB(A) goes through the packed kernel (RGB padded first when the input is at most
    3x the output's pixels: padding costs about a third of what the kernel saves per output
    pixel) and RGB comes back 4 bytes per pixel (:func:`to_rgbx`); the values are the byte
    kernel's.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if interpolation == "bilinear" and antialias:
        kx, ky = reduce_factors(m)
        if kx > 1 or ky > 1:
            img = box_reduce(img, ky, kx)
            m = np.diag([1.0 / kx, 1.0 / ky, 1.0]) @ m
    oh, ow = int(out_hw[0]), int(out_hw[1])
    words = packed_words(img, pad=img.shape[0] * img.shape[1] <= 3 * oh * ow)
    img = img if words is not None else _check(img)
    channels = img.shape[2]
    fillv = _warp_fill(channels, fill, img.dtype)
    mode, bilinear = BORDERS[border], interpolation == "bilinear"
    if words is not None:
        out = np.empty((oh, ow, 4), np.uint8)
        out_words = out.view(np.uint32).reshape(oh, ow)
        K.warp_affine_packed(
            words, np.ascontiguousarray(m[:2]), out_words, fillv, mode, bilinear, channels
        )
        return out if channels == 4 else out[..., :3]
    out = np.empty((oh, ow, channels), img.dtype)
    K.warp_affine(img, np.ascontiguousarray(m[:2]), out, fillv, mode, bilinear)
    return out


def warp_affine_reference(
    img: np.ndarray,
    matrix: np.ndarray,
    out_hw: tuple[int, int],
    *,
    interpolation: str = "bilinear",
    border: str = "constant",
    fill: float = 0,
) -> np.ndarray:
    """Slow, obvious NumPy twin of the warp kernel (no antialiasing); same arithmetic, same bytes.

    See the module docstring of ``cnncli.augment._kernels`` for the model: a continuous image on
    [0, W] x [0, H], clamped bilinear inside, and the border mode deciding outside.
    """
    img = _check(img)
    h, w, c = img.shape
    oh, ow = int(out_hw[0]), int(out_hw[1])
    m = np.asarray(matrix, dtype=np.float64)
    a, b, c0, d, e, f = m[0, 0], m[0, 1], m[0, 2], m[1, 0], m[1, 1], m[1, 2]
    ys = np.arange(oh, dtype=np.float64)[:, None]
    xs = np.arange(ow, dtype=np.float64)[None, :]
    X = (a * 0.5 + b * (ys + 0.5) + c0) + a * xs
    Y = (d * 0.5 + e * (ys + 0.5) + f) + d * xs
    X, Y = np.broadcast_to(X, (oh, ow)).copy(), np.broadcast_to(Y, (oh, ow)).copy()
    fillv = fill_vector(c, fill, img.dtype).astype(np.int64)
    src = img.astype(np.int64)
    frac, bits = K.FRAC, K.FRAC_BITS

    def mirror(t: np.ndarray, size: float) -> np.ndarray:
        period = 2.0 * size
        t = t - period * np.floor(t / period)
        return np.where(t > size, period - t, t)

    icov = np.full((oh, ow), frac, dtype=np.int64)
    if interpolation == "nearest":
        if border == "constant":
            outside = (X < 0) | (Y < 0) | (w <= X) | (h <= Y)
            icov = np.where(outside, 0, frac)
    elif border == "constant":
        ifw = 1.0 / max(abs(a) + abs(b), 1e-12)
        ifh = 1.0 / max(abs(d) + abs(e), 1e-12)
        hw, hh = 0.5 / ifw, 0.5 / ifh
        cx = np.clip((X + hw) * ifw, 0.0, 1.0) * np.clip((w - X + hw) * ifw, 0.0, 1.0)
        cy = np.clip((Y + hh) * ifh, 0.0, 1.0) * np.clip((h - Y + hh) * ifh, 0.0, 1.0)
        icov = (cx * cy * frac + 0.5).astype(np.int64)
    if border == "reflect":
        X, Y = mirror(X, float(w)), mirror(Y, float(h))
    if interpolation == "nearest":
        x0 = np.clip(X, 0.0, w - 1.0).astype(np.int64)
        y0 = np.clip(Y, 0.0, h - 1.0).astype(np.int64)
        ix = iy = np.zeros((oh, ow, 1), dtype=np.int64)
    else:
        u = np.clip(X - 0.5, 0.0, w - 1.0)
        v = np.clip(Y - 0.5, 0.0, h - 1.0)
        x0, y0 = u.astype(np.int64), v.astype(np.int64)
        ix = ((u - x0) * frac + 0.5).astype(np.int64)[..., None]
        iy = ((v - y0) * frac + 0.5).astype(np.int64)[..., None]
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    acc = (
        (frac - ix) * (frac - iy) * src[y0, x0]
        + ix * (frac - iy) * src[y0, x1]
        + (frac - ix) * iy * src[y1, x0]
        + ix * iy * src[y1, x1]
    )
    shift = 2 * bits
    plain = (acc + (1 << (shift - 1))) >> shift
    cov = icov[..., None]
    blended = (acc * cov + (fillv << shift) * (frac - cov) + (1 << (shift + bits - 1))) >> (
        shift + bits
    )
    out = np.where(cov == frac, plain, np.where(cov == 0, fillv, blended))
    return out.astype(img.dtype)


# --------------------------------------------------------------------------- named geometric ops


def hflip(img: np.ndarray) -> np.ndarray:
    """Mirror left-right (exact: a copy with the columns reversed)."""
    return np.ascontiguousarray(_check(img)[:, ::-1])


def vflip(img: np.ndarray) -> np.ndarray:
    """Mirror top-bottom (exact)."""
    return np.ascontiguousarray(_check(img)[::-1])


def rotate(
    img: np.ndarray,
    angle: float,
    *,
    interpolation: str = "bilinear",
    border: str = "constant",
    fill: float = 0,
) -> np.ndarray:
    """Rotate counter-clockwise by ``angle`` degrees about the centre, keeping the size."""
    h, w = img.shape[:2]
    return warp_affine(
        img,
        rotation_matrix(img.shape, angle),
        (h, w),
        interpolation=interpolation,
        border=border,
        fill=fill,
    )


def shift(
    img: np.ndarray,
    dx: float,
    dy: float,
    *,
    interpolation: str = "bilinear",
    border: str = "constant",
    fill: float = 0,
) -> np.ndarray:
    """Translate the content by (dx, dy) pixels (right, down), keeping the size."""
    h, w = img.shape[:2]
    return warp_affine(
        img, shift_matrix(dx, dy), (h, w), interpolation=interpolation, border=border, fill=fill
    )


def scale(
    img: np.ndarray,
    factor: float,
    *,
    interpolation: str = "bilinear",
    border: str = "constant",
    fill: float = 0,
) -> np.ndarray:
    """Zoom by ``factor`` about the centre (> 1 in, < 1 out), keeping the size."""
    h, w = img.shape[:2]
    return warp_affine(
        img,
        scale_matrix(img.shape, factor),
        (h, w),
        interpolation=interpolation,
        border=border,
        fill=fill,
    )


def crop(img: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
    """The ``height`` x ``width`` patch at (top, left) (exact; must lie inside the image)."""
    img = _check(img)
    h, w = img.shape[:2]
    if not (top >= 0 and left >= 0 and height > 0 and width > 0):
        raise ValueError(f"bad crop box top={top} left={left} height={height} width={width}")
    if top + height > h or left + width > w:
        raise ValueError(f"crop box {height}x{width} at ({top}, {left}) exceeds the {h}x{w} image")
    return np.ascontiguousarray(img[top : top + height, left : left + width])


def resized_crop(
    img: np.ndarray,
    top: int,
    left: int,
    height: int,
    width: int,
    out_h: int,
    out_w: int,
    *,
    interpolation: str = "bilinear",
) -> np.ndarray:
    """Crop the box then resize it to ``out_h`` x ``out_w`` in a single resampling."""
    m = resized_crop_matrix(top, left, height, width, out_h, out_w)
    return warp_affine(img, m, (out_h, out_w), interpolation=interpolation, border="edge")


def resize(
    img: np.ndarray, out_h: int, out_w: int, *, interpolation: str = "bilinear"
) -> np.ndarray:
    """Resize the whole image to ``out_h`` x ``out_w`` (box-reduced first when shrinking 2x+)."""
    h, w = img.shape[:2]
    return resized_crop(img, 0, 0, h, w, out_h, out_w, interpolation=interpolation)


# --------------------------------------------------------------------------- lookup tables


def identity_luts(channels: int, top: int) -> np.ndarray:
    """(C, top + 1) tables that map every value to itself; dtype int64."""
    luts = np.empty((channels, top + 1), np.int64)
    luts[:] = _ramp(top, np.int64)
    return luts


@functools.cache
def _ramp(top: int, dtype: type = np.float64) -> np.ndarray:
    """``arange(top + 1)`` (read-only, shared): every table starts from it."""
    ramp = np.arange(top + 1, dtype=dtype)
    ramp.setflags(write=False)
    return ramp


def _round_clip(values: np.ndarray, top: int) -> np.ndarray:
    """``clip(floor(values + 0.5), 0, top)`` as int64; ``values`` (a scratch array) is reused.

    Clipping ``values + 0.5`` to [0, top + 0.5] first leaves non-negative numbers, whose
    truncation by ``astype`` is their floor: the same integers with one NumPy call fewer.
    """
    values += 0.5
    np.maximum(values, 0.0, out=values)
    np.minimum(values, top + 0.5, out=values)
    return values.astype(np.int64)


def brightness_lut(factor: float, top: int) -> np.ndarray:
    """Table of ``round(x * factor)`` clipped to [0, top]."""
    return _round_clip(_ramp(top) * factor, top)


def contrast_lut(factor: float, mean: float, top: int) -> np.ndarray:
    """Table of ``round(mean + factor * (x - mean))`` clipped to [0, top]."""
    values = _ramp(top) - mean
    values *= factor
    values += mean
    return _round_clip(values, top)


def offset_lut(offset: float, top: int) -> np.ndarray:
    """Table of ``round(x + offset)`` clipped to [0, top]."""
    return _round_clip(_ramp(top) + offset, top)


def colour_luts(channels: int, table: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """Stack per-colour-channel tables into (C, n) luts; alpha channels keep the identity.

    ``table`` is one table for every colour channel, or one per colour channel.
    """
    tables = [table] if isinstance(table, np.ndarray) and table.ndim == 1 else list(table)
    top = len(tables[0]) - 1
    luts = np.empty((channels, top + 1), np.int64)
    ncol = colour_channels(channels)
    luts[:ncol] = tables[:ncol] if len(tables) > 1 else tables[0]
    if ncol < channels:
        luts[ncol:] = _ramp(top, np.int64)
    return luts


def compose_luts(second: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Tables of ``second`` applied after ``first``: ``out[c, v] = second[c, first[c, v]]``.

    Indexes ``second`` flattened (its row c starts at ``c * n``): half the cost of
    two-array fancy indexing, which counts for 256-entry tables composed per image.
    """
    channels, n = second.shape
    return second.ravel()[first + _row_starts(channels, n)]


@functools.cache
def _row_starts(channels: int, n: int) -> np.ndarray:
    """``(C, 1)`` flat offsets of the rows of a (C, n) array (read-only, shared)."""
    starts = np.arange(0, channels * n, n)[:, None]
    starts.setflags(write=False)
    return starts


def apply_luts(img: np.ndarray, luts: np.ndarray, *, inplace: bool = False) -> np.ndarray:
    """``out[..., c] = luts[c][img[..., c]]`` (one pass; luts shape (C, maxval + 1)).

    ``inplace`` writes into ``img`` itself (when it is C-contiguous, or held 4 bytes per pixel,
    and writable) instead of a new array: for callers that own ``img``. 8-bit RGB(A) goes
    through the packed kernel and comes back in the layout it came in.
    """
    words = packed_words(img)
    if words is not None:
        channels = img.shape[2]
        if inplace and words.flags.writeable:
            out, out_words = img, words
        else:
            buf = np.empty((*img.shape[:2], 4), np.uint8)
            out_words = buf.view(np.uint32).reshape(img.shape[:2])
            out = buf if channels == 4 else buf[..., :3]
        K.apply_luts_packed(words, np.ascontiguousarray(luts, dtype=np.uint32), out_words)
        return out
    if inplace and img.flags.c_contiguous and img.flags.writeable:
        out = img
    else:
        img = _check(img)
        out = np.empty_like(img)
    return K.apply_luts(img, np.ascontiguousarray(luts, dtype=img.dtype), out)


def is_identity_luts(luts: np.ndarray) -> bool:
    """True when every table maps each value to itself (applying them changes nothing)."""
    return bool((luts == _ramp(luts.shape[1] - 1, np.int64)).all())


def channel_histograms(img: np.ndarray) -> np.ndarray:
    """(C, maxval + 1) int64 counts of each value per channel."""
    img = _check(img)
    return K.channel_histograms(img, maxval(img) + 1)


def luminance_mean_from_histograms(hist: np.ndarray, luts: np.ndarray | None = None) -> float:
    """Luminance mean of an image given its channel histograms, optionally seen through ``luts``.

    Sums are exact integers, so this equals :func:`luminance_mean` of the image the luts would
    produce, bit for bit; that is what lets a contrast op join a fused lookup table.
    """
    channels = hist.shape[0]
    values = np.arange(hist.shape[1], dtype=np.int64)
    sums = []
    for ch in range(colour_channels(channels)):
        mapped = values if luts is None else luts[ch].astype(np.int64)
        sums.append(int(np.dot(hist[ch], mapped)))
    return _luma(sums, int(hist[0].sum()))


def luminance_mean_through(img: np.ndarray, luts: np.ndarray | None = None) -> float:
    """:func:`luminance_mean` of ``apply_luts(img, luts)`` without making that image: for 8-bit
    RGB(A) one pass summing table entries, else :func:`luminance_mean_from_histograms`. The
    same exact integer sums either way, so the same float."""
    words = packed_words(img)
    if words is None:
        return luminance_mean_from_histograms(channel_histograms(img), luts)
    channels = img.shape[2]
    tables = identity_luts(channels, 255) if luts is None else luts
    sums = K.lut_sums_packed(words, np.ascontiguousarray(tables, dtype=np.int64))
    return _luma(sums[:3], words.size)


def _luma(sums: Sequence[int], count: int) -> float:
    """Luminance mean from per-colour-channel integer sums over ``count`` pixels."""
    if len(sums) == 1:
        return sums[0] / count
    return (LUMA[0] * sums[0] + LUMA[1] * sums[1] + LUMA[2] * sums[2]) / count


def luminance_mean(img: np.ndarray) -> float:
    """Mean of 0.299 R + 0.587 G + 0.114 B over the image (the grey mean for L/LA)."""
    img = _check(img)
    ncol = colour_channels(img.shape[2])
    sums = [int(img[..., ch].sum(dtype=np.int64)) for ch in range(ncol)]
    return _luma(sums, img.shape[0] * img.shape[1])


def adjust_brightness(img: np.ndarray, factor: float) -> np.ndarray:
    """Multiply colour channels by ``factor`` (1 = unchanged, 0 = black)."""
    top = maxval(img)
    return apply_luts(img, colour_luts(img.shape[2], brightness_lut(factor, top)))


def adjust_contrast(img: np.ndarray, factor: float) -> np.ndarray:
    """Scale distances from the luminance mean by ``factor`` (1 = unchanged, 0 = flat grey)."""
    top = maxval(img)
    table = contrast_lut(factor, luminance_mean(img), top)
    return apply_luts(img, colour_luts(img.shape[2], table))


# --------------------------------------------------------------------------- cross-channel colour


def adjust_saturation(img: np.ndarray, factor: float) -> np.ndarray:
    """Blend each pixel with its own grey: ``grey + factor * (x - grey)``; no-op on grey images."""
    img = _check(img)
    if img.shape[2] < 3:
        return img.copy()
    top = maxval(img)
    rgb = img[..., :3].astype(np.float32)
    grey = rgb @ np.array(LUMA, dtype=np.float32)
    out = img.copy()
    mixed = grey[..., None] + np.float32(factor) * (rgb - grey[..., None])
    out[..., :3] = np.clip(np.floor(mixed + 0.5), 0, top).astype(img.dtype)
    return out


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) floats in [0, 1] to HSV with hue in [0, 1)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx = rgb.max(axis=-1)
    mn = rgb.min(axis=-1)
    delta = mx - mn
    safe = np.where(delta > 0, delta, 1)
    rc, gc, bc = (mx - r) / safe, (mx - g) / safe, (mx - b) / safe
    h = np.where(r == mx, bc - gc, np.where(g == mx, 2.0 + rc - bc, 4.0 + gc - rc))
    h = np.where(delta > 0, (h / 6.0) % 1.0, 0.0)
    s = np.where(mx > 0, delta / np.where(mx > 0, mx, 1), 0.0)
    return np.stack([h, s, mx], axis=-1)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_hsv`."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    i = np.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.astype(np.int64) % 6
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return np.stack([r, g, b], axis=-1)


def adjust_hue(img: np.ndarray, shift: float) -> np.ndarray:
    """Rotate the hue by ``shift`` turns (0.5 = opposite colour) in HSV; no-op on grey images."""
    img = _check(img)
    if img.shape[2] < 3 or shift == 0:
        return img.copy()
    top = maxval(img)
    hsv = rgb_to_hsv(img[..., :3].astype(np.float64) / top)
    hsv[..., 0] = (hsv[..., 0] + shift) % 1.0
    out = img.copy()
    out[..., :3] = np.clip(np.floor(hsv_to_rgb(hsv) * top + 0.5), 0, top).astype(img.dtype)
    return out


def rgb_eigen(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and eigenvectors (columns) of the RGB covariance of ``pixels``.

    ``pixels`` is any array whose last axis is RGB (3 values, 0..255 units, 16-bit images
    divided by 257 first). Grey pixels give a degenerate covariance; that is fine.
    """
    flat = np.asarray(pixels, dtype=np.float64).reshape(-1, pixels.shape[-1])[:, :3]
    if flat.shape[0] < 2:
        return np.zeros(3), np.eye(3)
    cov = np.cov(flat, rowvar=False)
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1]
    vals = np.clip(vals[order], 0.0, None)
    vecs = vecs[:, order]
    # Fix the sign of each eigenvector (largest component positive) so results are reproducible.
    signs = np.sign(vecs[np.argmax(np.abs(vecs), axis=0), np.arange(3)])
    return vals, vecs * np.where(signs == 0, 1.0, signs)


def pca_shift(eigvals: np.ndarray, eigvecs: np.ndarray, alpha: Sequence[float]) -> np.ndarray:
    """AlexNet colour shift ``V (alpha * sqrt(lambda))`` in 0..255 units, one value per channel.

    Krizhevsky et al. (2012) add ``[p1 p2 p3][a1 l1, a2 l2, a3 l3]^T`` with ``a ~ N(0, 0.1)``.
    That formula is not unit-free: with pixels in 0..255 the eigenvalues (variances) make it
    enormous, with pixels in 0..1 it is about one grey level (the reason several libraries'
    "fancy PCA" does nothing at its default strength). We scale by the standard deviation
    ``sqrt(lambda)`` instead, so ``alpha`` is a fraction of the colour spread along each
    principal axis whatever the units: ``alpha = 0.1`` moves colours by a tenth of that spread.
    """
    vals = np.asarray(eigvals, dtype=np.float64)
    vecs = np.asarray(eigvecs, dtype=np.float64)
    return vecs @ (np.asarray(alpha, dtype=np.float64) * np.sqrt(np.clip(vals, 0.0, None)))


def image_eigen(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`rgb_eigen` of an image's colour channels, in 0..255 units."""
    img = _check(img)
    if img.shape[2] < 3:
        return np.zeros(3), np.eye(3)
    rgb = img[..., :3]
    if img.dtype == np.uint16:
        rgb = rgb.astype(np.float64) / 257.0
    return rgb_eigen(rgb)


def pca_colour(
    img: np.ndarray, eigvals: np.ndarray, eigvecs: np.ndarray, alpha: Sequence[float]
) -> np.ndarray:
    """Add the AlexNet PCA colour shift (see :func:`pca_shift`) to every pixel; no-op on grey."""
    img = _check(img)
    if img.shape[2] < 3:
        return img.copy()
    top = maxval(img)
    offs = pca_shift(eigvals, eigvecs, alpha) * (top / 255.0)
    tables = [offset_lut(float(o), top) for o in offs]
    return apply_luts(img, colour_luts(img.shape[2], tables))


# --------------------------------------------------------------------------- pixel-level ops


def gaussian_noise(
    img: np.ndarray, sigma: float, seed: int, *, per_channel: bool = True
) -> np.ndarray:
    """Add N(0, sigma^2) noise (sigma in 0..255 units) drawn from ``default_rng(seed)``.

    The noise field is a pure function of ``seed`` and the image shape, so recording the seed
    records the output. ``per_channel=False`` adds the same value to every colour channel.
    """
    img = _check(img)
    top = maxval(img)
    h, w, c = img.shape
    ncol = colour_channels(c)
    rng = np.random.default_rng(int(seed))
    noise = rng.standard_normal((h, w, ncol if per_channel else 1), dtype=np.float32)
    noise *= np.float32(sigma * top / 255.0)
    out = img.copy()
    noisy = img[..., :ncol].astype(np.float32) + noise
    out[..., :ncol] = np.clip(np.floor(noisy + 0.5), 0, top).astype(img.dtype)
    return out


def gaussian_kernel(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian weights over +-ceil(3 sigma) (a single 1 for sigma <= 0)."""
    if sigma <= 0:
        return np.ones(1)
    radius = max(1, math.ceil(3.0 * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of the colour channels with mirrored borders."""
    img = _check(img)
    kern = gaussian_kernel(sigma)
    if kern.size == 1:
        return img.copy()
    top = maxval(img)
    ncol = colour_channels(img.shape[2])
    r = kern.size // 2
    h, w = img.shape[:2]
    mode = "reflect" if min(h, w) > r else "edge"
    work = img[..., :ncol].astype(np.float32)
    k32 = kern.astype(np.float32)
    for axis in (0, 1):
        pad = [(0, 0)] * 3
        pad[axis] = (r, r)
        padded = np.pad(work, pad, mode=mode)
        n = work.shape[axis]
        acc = np.zeros_like(work)
        for i, wgt in enumerate(k32):
            sl = [slice(None)] * 3
            sl[axis] = slice(i, i + n)
            acc += wgt * padded[tuple(sl)]
        work = acc
    out = img.copy()
    out[..., :ncol] = np.clip(np.floor(work + 0.5), 0, top).astype(img.dtype)
    return out


def cutout(img: np.ndarray, boxes: Sequence[Sequence[int]], fill: float = 0) -> np.ndarray:
    """Paint each (top, left, height, width) box with ``fill`` (colour channels only).

    Boxes may stick out of the image; the part inside is painted.
    """
    img = _check(img)
    out = img.copy()
    ncol = colour_channels(img.shape[2])
    level = fill_vector(img.shape[2], fill, img.dtype)[:ncol]
    h, w = img.shape[:2]
    for top, left, height, width in boxes:
        y0, x0 = max(int(top), 0), max(int(left), 0)
        y1, x1 = min(int(top) + int(height), h), min(int(left) + int(width), w)
        if y1 > y0 and x1 > x0:
            out[y0:y1, x0:x1, :ncol] = level
    return out
