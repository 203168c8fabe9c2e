"""Numba kernels behind :mod:`cnncli.augment.functional`: affine warp, box reduce, LUTs, histograms.

Each kernel has a plain NumPy twin in ``functional`` (``*_reference``) that the tests compare it
with. Images are C-contiguous ``uint8`` or ``uint16`` arrays of shape (H, W, C).

Warp model (the twin follows it operation for operation, so both give the same bytes):

* The 2x3 matrix ``m`` maps the centre of output pixel (r, c), the continuous point
  (c + 0.5, r + 0.5), to a continuous input point (X, Y). The input image covers the domain
  [0, W] x [0, H]; inside it, values are bilinear between pixel centres, clamped at the edges.
* Outside the domain the border mode decides: 'edge' clamps (X, Y) into the domain, 'reflect'
  mirrors it about the domain's edges (period 2W), 'constant' blends with ``fill``: an output
  pixel shows ``coverage * image + (1 - coverage) * fill``, where coverage is the share of the
  pixel's footprint (|a| + |b| input columns wide, |d| + |e| rows high) that lies inside the
  domain. Rotated edges come out antialiased, integer shifts come out exact, and a resize never
  darkens its borders.
* Bilinear weights and the coverage are quantised to 1/1024 and every sum is rounded half up in
  integer arithmetic, so a run gives the same bytes in every process.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

FRAC_BITS = 10
FRAC = 1 << FRAC_BITS  # sub-pixel steps per pixel

BORDER_CONSTANT = 0
BORDER_EDGE = 1
BORDER_REFLECT = 2


@njit(cache=True, nogil=True)
def _mirror(t, size):
    period = 2.0 * size
    t = t - period * math.floor(t / period)
    return period - t if t > size else t


@njit(cache=True, nogil=True)
def _clampf(t, lo, hi):
    return lo if t < lo else (hi if t > hi else t)


@njit(cache=True, nogil=True, boundscheck=False)
def warp_affine(src, m, out, fill, mode, bilinear):
    """Fill ``out`` (oh, ow, C) by sampling ``src`` (H, W, C) at ``m @ (c + .5, r + .5, 1)``."""
    H, W, C = src.shape
    oh, ow, _ = out.shape
    a, b, c0 = m[0, 0], m[0, 1], m[0, 2]
    d, e, f = m[1, 0], m[1, 1], m[1, 2]
    fw = abs(a) + abs(b)  # footprint of one output pixel, in input pixels
    fh = abs(d) + abs(e)
    hw = max(0.5, 0.5 * fw) if mode == BORDER_CONSTANT else 0.5
    hh = max(0.5, 0.5 * fh) if mode == BORDER_CONSTANT else 0.5
    fw = max(fw, 1e-12)
    fh = max(fh, 1e-12)
    wf = float(W)
    hf = float(H)
    shift = 2 * FRAC_BITS
    half = np.int64(1) << (shift - 1)
    for y in range(oh):
        xrow = a * 0.5 + b * (y + 0.5) + c0
        yrow = d * 0.5 + e * (y + 0.5) + f
        for x in range(ow):
            X = xrow + a * x
            Y = yrow + d * x
            if not bilinear:
                if mode == BORDER_CONSTANT and (X < 0.0 or Y < 0.0 or X >= wf or Y >= hf):
                    for ch in range(C):
                        out[y, x, ch] = fill[ch]
                    continue
                if mode == BORDER_REFLECT:
                    X = _mirror(X, wf)
                    Y = _mirror(Y, hf)
                xi = min(max(np.int64(math.floor(X)), 0), W - 1)
                yi = min(max(np.int64(math.floor(Y)), 0), H - 1)
                for ch in range(C):
                    out[y, x, ch] = src[yi, xi, ch]
                continue
            if X >= hw and Y >= hh and X < wf - hw and Y < hf - hh:
                u = X - 0.5
                v = Y - 0.5
                fu = math.floor(u)
                fv = math.floor(v)
                ix = np.int64((u - fu) * FRAC + 0.5)
                iy = np.int64((v - fv) * FRAC + 0.5)
                x0 = np.int64(fu)
                y0 = np.int64(fv)
                w00 = (FRAC - ix) * (FRAC - iy)
                w01 = ix * (FRAC - iy)
                w10 = (FRAC - ix) * iy
                w11 = ix * iy
                for ch in range(C):
                    acc = (
                        w00 * np.int64(src[y0, x0, ch])
                        + w01 * np.int64(src[y0, x0 + 1, ch])
                        + w10 * np.int64(src[y0 + 1, x0, ch])
                        + w11 * np.int64(src[y0 + 1, x0 + 1, ch])
                    )
                    out[y, x, ch] = (acc + half) >> shift
                continue
            icov = np.int64(FRAC)
            if mode == BORDER_CONSTANT:
                cx = _clampf((X + 0.5 * fw) / fw, 0.0, 1.0) * _clampf((wf - X + 0.5 * fw) / fw, 0.0, 1.0)
                cy = _clampf((Y + 0.5 * fh) / fh, 0.0, 1.0) * _clampf((hf - Y + 0.5 * fh) / fh, 0.0, 1.0)
                icov = np.int64(cx * cy * FRAC + 0.5)
                if icov == 0:
                    for ch in range(C):
                        out[y, x, ch] = fill[ch]
                    continue
            elif mode == BORDER_REFLECT:
                X = _mirror(X, wf)
                Y = _mirror(Y, hf)
            u = _clampf(X, 0.0, wf) - 0.5
            v = _clampf(Y, 0.0, hf) - 0.5
            fu = math.floor(u)
            fv = math.floor(v)
            ix = np.int64((u - fu) * FRAC + 0.5)
            iy = np.int64((v - fv) * FRAC + 0.5)
            x0 = np.int64(fu)
            y0 = np.int64(fv)
            xa = min(max(x0, 0), W - 1)
            xb = min(max(x0 + 1, 0), W - 1)
            ya = min(max(y0, 0), H - 1)
            yb = min(max(y0 + 1, 0), H - 1)
            w00 = (FRAC - ix) * (FRAC - iy)
            w01 = ix * (FRAC - iy)
            w10 = (FRAC - ix) * iy
            w11 = ix * iy
            for ch in range(C):
                acc = (
                    w00 * np.int64(src[ya, xa, ch])
                    + w01 * np.int64(src[ya, xb, ch])
                    + w10 * np.int64(src[yb, xa, ch])
                    + w11 * np.int64(src[yb, xb, ch])
                )
                if icov == FRAC:
                    out[y, x, ch] = (acc + half) >> shift
                else:
                    acc = acc * icov + (np.int64(fill[ch]) << shift) * (FRAC - icov)
                    out[y, x, ch] = (acc + (half << FRAC_BITS)) >> (shift + FRAC_BITS)
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
    """Compile (or load from numba's on-disk cache) every kernel for uint8 and uint16 images.

    Call once in a parent process before forking workers so that they inherit the machine code.
    """
    for dtype in (np.uint8, np.uint16):
        src = np.zeros((4, 4, 3), dtype)
        out = np.zeros((2, 2, 3), dtype)
        m = np.eye(3)[:2].copy()
        fill = np.zeros(3, dtype)
        for bilinear in (True, False):
            warp_affine(src, m, out, fill, BORDER_CONSTANT, bilinear)
        box_reduce(src, 2, 2, out)
        nbins = int(np.iinfo(dtype).max) + 1
        apply_luts(src, np.zeros((3, nbins), dtype), src)
        channel_histograms(src, nbins)
