"""Numba kernels behind :mod:`cnncli.augment.functional`: affine warp, box reduce, LUTs, histograms.

Each kernel has a plain NumPy twin in ``functional`` (``*_reference``) that the tests compare it
with. Images are C-contiguous ``uint8`` or ``uint16`` arrays of shape (H, W, C).

Warp arithmetic (shared with the twin, so results match bit for bit): the 2x3 matrix ``m`` maps
the centre of output pixel (r, c), i.e. the continuous point (c + 0.5, r + 0.5), to a continuous
input point (X, Y); the sample is taken at index-space position (u, v) = (X - 0.5, Y - 0.5).
Bilinear weights are quantised to 1/1024 (``_FRAC``) and the sum is rounded half up, so integer
arithmetic gives the same bytes on every run and in every process.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_FRAC_BITS = 10
_FRAC = 1 << _FRAC_BITS  # sub-pixel steps per pixel
_ROUND = 1 << (2 * _FRAC_BITS - 1)

BORDER_CONSTANT = 0
BORDER_EDGE = 1
BORDER_REFLECT = 2


@njit(cache=True, nogil=True)
def border_index(i, n, mode):
    """Map index ``i`` into [0, n) (edge: clamp; reflect: mirror without repeating the edge).

    Returns -1 for constant borders when ``i`` is outside.
    """
    if 0 <= i < n:
        return i
    if mode == BORDER_EDGE:
        return 0 if i < 0 else n - 1
    if mode == BORDER_REFLECT:
        if n == 1:
            return 0
        period = 2 * (n - 1)
        i = abs(i) % period
        return i if i < n else period - i
    return -1


@njit(cache=True, nogil=True, boundscheck=False)
def warp_affine(src, m, out, fill, mode, bilinear):
    """Fill ``out`` (oh, ow, C) by sampling ``src`` (H, W, C) at ``m @ (c + .5, r + .5, 1)``."""
    H, W, C = src.shape
    oh, ow, _ = out.shape
    a, b, c0 = m[0, 0], m[0, 1], m[0, 2]
    d, e, f = m[1, 0], m[1, 1], m[1, 2]
    maxu = W - 1.0
    maxv = H - 1.0
    for y in range(oh):
        xrow = a * 0.5 + b * (y + 0.5) + c0
        yrow = d * 0.5 + e * (y + 0.5) + f
        for x in range(ow):
            u = xrow + a * x - 0.5
            v = yrow + d * x - 0.5
            if not bilinear:
                xi = math.floor(u + 0.5)
                yi = math.floor(v + 0.5)
                xi = border_index(xi, W, mode)
                yi = border_index(yi, H, mode)
                if xi < 0 or yi < 0:
                    for ch in range(C):
                        out[y, x, ch] = fill[ch]
                else:
                    for ch in range(C):
                        out[y, x, ch] = src[yi, xi, ch]
                continue
            fu = math.floor(u)
            fv = math.floor(v)
            ix = np.int64((u - fu) * _FRAC + 0.5)
            iy = np.int64((v - fv) * _FRAC + 0.5)
            w00 = (_FRAC - ix) * (_FRAC - iy)
            w01 = ix * (_FRAC - iy)
            w10 = (_FRAC - ix) * iy
            w11 = ix * iy
            if u >= 0.0 and v >= 0.0 and u < maxu and v < maxv:
                x0 = np.int64(fu)
                y0 = np.int64(fv)
                for ch in range(C):
                    acc = (
                        w00 * np.int64(src[y0, x0, ch])
                        + w01 * np.int64(src[y0, x0 + 1, ch])
                        + w10 * np.int64(src[y0 + 1, x0, ch])
                        + w11 * np.int64(src[y0 + 1, x0 + 1, ch])
                    )
                    out[y, x, ch] = (acc + _ROUND) >> (2 * _FRAC_BITS)
            else:
                if u < -1.0 - W or u > 2.0 * W or v < -1.0 - H or v > 2.0 * H:
                    # Far outside: only reachable for constant fill or mirrored/clamped borders.
                    if mode == BORDER_CONSTANT:
                        for ch in range(C):
                            out[y, x, ch] = fill[ch]
                        continue
                x0 = np.int64(fu)
                y0 = np.int64(fv)
                xa = border_index(x0, W, mode)
                xb = border_index(x0 + 1, W, mode)
                ya = border_index(y0, H, mode)
                yb = border_index(y0 + 1, H, mode)
                for ch in range(C):
                    fv_ = np.int64(fill[ch])
                    p00 = np.int64(src[ya, xa, ch]) if (xa >= 0 and ya >= 0) else fv_
                    p01 = np.int64(src[ya, xb, ch]) if (xb >= 0 and ya >= 0) else fv_
                    p10 = np.int64(src[yb, xa, ch]) if (xa >= 0 and yb >= 0) else fv_
                    p11 = np.int64(src[yb, xb, ch]) if (xb >= 0 and yb >= 0) else fv_
                    acc = w00 * p00 + w01 * p01 + w10 * p10 + w11 * p11
                    out[y, x, ch] = (acc + _ROUND) >> (2 * _FRAC_BITS)
    return out


@njit(cache=True, nogil=True, boundscheck=False)
def box_reduce(src, ky, kx, out):
    """Mean of each ky x kx block (partial blocks at the far edges average what they hold)."""
    H, W, C = src.shape
    oh, ow, _ = out.shape
    acc = np.zeros(C, np.int64)
    for y in range(oh):
        y0 = y * ky
        y1 = min(y0 + ky, H)
        for x in range(ow):
            x0 = x * kx
            x1 = min(x0 + kx, W)
            acc[:] = 0
            for yy in range(y0, y1):
                for xx in range(x0, x1):
                    for ch in range(C):
                        acc[ch] += src[yy, xx, ch]
            n = (y1 - y0) * (x1 - x0)
            for ch in range(C):
                out[y, x, ch] = (acc[ch] + n // 2) // n
    return out


@njit(cache=True, nogil=True, boundscheck=False)
def apply_luts(img, luts, out):
    """``out[..., c] = luts[c, img[..., c]]`` (``out`` may be ``img``)."""
    H, W, C = img.shape
    for y in range(H):
        for x in range(W):
            for ch in range(C):
                out[y, x, ch] = luts[ch, img[y, x, ch]]
    return out


@njit(cache=True, nogil=True, boundscheck=False)
def channel_histograms(img, nbins):
    """(C, nbins) counts of each value in each channel."""
    H, W, C = img.shape
    hist = np.zeros((C, nbins), np.int64)
    for y in range(H):
        for x in range(W):
            for ch in range(C):
                hist[ch, img[y, x, ch]] += 1
    return hist


def warm_up() -> None:
    """Compile (or load from numba's cache) every kernel for uint8 and uint16 images.

    Call once in a parent process before forking workers so they inherit the machine code.
    """
    for dtype in (np.uint8, np.uint16):
        src = np.zeros((4, 4, 3), dtype)
        out = np.zeros((2, 2, 3), dtype)
        m = np.eye(3)[:2].copy()
        fill = np.zeros(3, dtype)
        warp_affine(src, m, out, fill, BORDER_CONSTANT, True)
        box_reduce(src, 2, 2, out)
        nbins = int(np.iinfo(dtype).max) + 1
        apply_luts(src, np.zeros((3, nbins), dtype), src)
        channel_histograms(src, nbins)
