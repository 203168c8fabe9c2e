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
* Nearest-neighbour sampling takes the pixel whose square holds (X, Y); with a constant border,
  points outside the domain take ``fill`` (a hard edge).
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


@njit(cache=True, nogil=True, inline="always")
def _mirror(t, size):
    period = 2.0 * size
    t = t - period * np.floor(t / period)
    return period - t if t > size else t


# Taps of one output row, no pixel data touched; one function per border mode so that each
# loop is branch-free. Per pixel: flat offset of the top-left tap, offsets to the right and
# lower taps (0 where clamped at an edge), weights and coverage in 1/FRAC.


@njit(cache=True, nogil=True, boundscheck=False)
def _taps_clamped(a, d, xrow, yrow, W, H, C, off, dxo, dyo, wx, wy):
    umax, vmax = W - 1.0, H - 1.0
    row = W * C
    for x in range(off.shape[0]):
        u = min(max(xrow + a * x - 0.5, 0.0), umax)
        v = min(max(yrow + d * x - 0.5, 0.0), vmax)
        x0 = np.int64(u)
        y0 = np.int64(v)
        wx[x] = np.int64((u - x0) * FRAC + 0.5)
        wy[x] = np.int64((v - y0) * FRAC + 0.5)
        off[x] = y0 * row + x0 * C
        dxo[x] = (min(x0 + 1, W - 1) - x0) * C
        dyo[x] = (min(y0 + 1, H - 1) - y0) * row


@njit(cache=True, nogil=True, boundscheck=False)
def _taps_reflect(a, d, xrow, yrow, W, H, C, off, dxo, dyo, wx, wy):
    wf, hf = float(W), float(H)
    umax, vmax = wf - 1.0, hf - 1.0
    row = W * C
    for x in range(off.shape[0]):
        X = _mirror(xrow + a * x, wf)
        Y = _mirror(yrow + d * x, hf)
        u = min(max(X - 0.5, 0.0), umax)
        v = min(max(Y - 0.5, 0.0), vmax)
        x0 = np.int64(u)
        y0 = np.int64(v)
        wx[x] = np.int64((u - x0) * FRAC + 0.5)
        wy[x] = np.int64((v - y0) * FRAC + 0.5)
        off[x] = y0 * row + x0 * C
        dxo[x] = (min(x0 + 1, W - 1) - x0) * C
        dyo[x] = (min(y0 + 1, H - 1) - y0) * row


@njit(cache=True, nogil=True, boundscheck=False)
def _coverage(a, d, xrow, yrow, W, H, ifw, ifh, cov, start, stop):
    """Quantised share of the footprint inside the image, for output pixels start..stop-1."""
    wf, hf = float(W), float(H)
    hw, hh = 0.5 / ifw, 0.5 / ifh
    for x in range(start, stop):
        X = xrow + a * x
        Y = yrow + d * x
        cx = min(max((X + hw) * ifw, 0.0), 1.0) * min(max((wf - X + hw) * ifw, 0.0), 1.0)
        cy = min(max((Y + hh) * ifh, 0.0), 1.0) * min(max((hf - Y + hh) * ifh, 0.0), 1.0)
        cov[x] = np.int64(cx * cy * FRAC + 0.5)


@njit(cache=True, nogil=True)
def _span(p, q, low, high, n):
    """Integers x in [0, n) with low <= p + q x <= high, shrunk by one at each end (so that
    rounding can only move pixels to the exact per-pixel path); returned as (lo, hi)."""
    lo, hi = 0.0, float(n)
    if low > high:
        return 0, 0
    if q == 0.0:
        return (0, n) if low <= p <= high else (0, 0)
    t1, t2 = (low - p) / q, (high - p) / q
    if t1 > t2:
        t1, t2 = t2, t1
    lo = max(lo, math.ceil(t1) + 1.0)
    hi = min(hi, math.floor(t2))
    if hi <= lo:
        return 0, 0
    return int(lo), int(hi)


@njit(cache=True, nogil=True)
def _full_span(a, d, xrow, yrow, W, H, ifw, ifh, n):
    """Output pixels of a row whose footprint certainly lies inside the image (lo, hi)."""
    hw, hh = 0.5 / ifw, 0.5 / ifh  # full coverage <=> hw <= X <= W - hw, hh <= Y <= H - hh
    lx, hx = _span(xrow, a, hw, W - hw, n)
    ly, hy = _span(yrow, d, hh, H - hh, n)
    lo, hi = max(lx, ly), min(hx, hy)
    return (lo, hi) if hi > lo else (0, 0)


@njit(cache=True, nogil=True, boundscheck=False)
def _taps_nearest(a, d, xrow, yrow, W, H, C, mode, off, dxo, dyo, wx, wy, cov):
    wf, hf = float(W), float(H)
    row = W * C
    for x in range(off.shape[0]):
        X = xrow + a * x
        Y = yrow + d * x
        k = FRAC
        if mode == BORDER_CONSTANT and (X < 0.0 or Y < 0.0 or wf <= X or hf <= Y):
            k = 0
        if mode == BORDER_REFLECT:
            X = _mirror(X, wf)
            Y = _mirror(Y, hf)
        x0 = np.int64(min(max(X, 0.0), wf - 1.0))
        y0 = np.int64(min(max(Y, 0.0), hf - 1.0))
        off[x] = y0 * row + x0 * C
        dxo[x] = 0
        dyo[x] = 0
        wx[x] = 0
        wy[x] = 0
        cov[x] = k


@njit(cache=True, nogil=True, inline="always")
def _tap(s, i, dx, dy, ix, iy):
    p00 = np.int64(s[i])
    p01 = np.int64(s[i + dx])
    p10 = np.int64(s[i + dy])
    p11 = np.int64(s[i + dy + dx])
    t0 = (p00 << FRAC_BITS) + (p01 - p00) * ix
    t1 = (p10 << FRAC_BITS) + (p11 - p10) * ix
    return (t0 << FRAC_BITS) + (t1 - t0) * iy  # value * FRAC**2


_SHIFT = 2 * FRAC_BITS
_HALF = 1 << (_SHIFT - 1)
_HALF_COV = 1 << (_SHIFT + FRAC_BITS - 1)


@njit(cache=True, nogil=True, inline="always")
def _blend(acc, k, fillv):
    """Round ``acc`` (value * FRAC**2) blended with ``fillv`` at coverage k / FRAC."""
    return (acc * k + (fillv << _SHIFT) * (FRAC - k) + _HALF_COV) >> (_SHIFT + FRAC_BITS)


@njit(cache=True, nogil=True, boundscheck=False)
def _row_setup(a, b, c0, d, e, f, y, W, H, C, ifw, ifh, mode, bilinear, off, dxo, dyo, wx, wy, cov):
    """Taps, weights and coverage of output row ``y``; returns (lo, hi): pixels lo..hi-1 are
    fully covered with all four taps inside the image (the fast loop, constant tap offsets),
    ``cov`` is set for the others."""
    ow = off.shape[0]
    xrow = a * 0.5 + b * (y + 0.5) + c0
    yrow = d * 0.5 + e * (y + 0.5) + f
    if not bilinear:
        _taps_nearest(a, d, xrow, yrow, W, H, C, mode, off, dxo, dyo, wx, wy, cov)
        return 0, 0
    if mode == BORDER_REFLECT:
        _taps_reflect(a, d, xrow, yrow, W, H, C, off, dxo, dyo, wx, wy)
    else:
        _taps_clamped(a, d, xrow, yrow, W, H, C, off, dxo, dyo, wx, wy)
    lx, hx = _span(xrow, a, 0.5, W - 0.5, ow)  # taps x0, x0 + 1 inside
    ly, hy = _span(yrow, d, 0.5, H - 0.5, ow)
    lo, hi = max(lx, ly), min(hx, hy)
    if mode == BORDER_CONSTANT:
        lc, hc = _full_span(a, d, xrow, yrow, W, H, ifw, ifh, ow)
        lo, hi = max(lo, lc), min(hi, hc)
    if hi <= lo:
        lo, hi = 0, 0
    if mode == BORDER_CONSTANT:
        _coverage(a, d, xrow, yrow, W, H, ifw, ifh, cov, 0, lo)
        _coverage(a, d, xrow, yrow, W, H, ifw, ifh, cov, hi, ow)
    else:
        cov[:lo] = FRAC
        cov[hi:] = FRAC
    return lo, hi


@njit(cache=True, nogil=True, boundscheck=False)
def warp_affine(src, m, out, fill, mode, bilinear):
    """Fill ``out`` (oh, ow, C) by sampling ``src`` (H, W, C) at ``m @ (c + .5, r + .5, 1)``.

    Row by row: the taps and weights of every pixel first (``_taps_*``, ``_coverage``), then
    the weighted sums, unrolled for 3-channel images.
    """
    H, W, C = src.shape
    oh, ow, _ = out.shape
    a, b, c0 = m[0, 0], m[0, 1], m[0, 2]
    d, e, f = m[1, 0], m[1, 1], m[1, 2]
    ifw = 1.0 / max(abs(a) + abs(b), 1e-12)  # 1 / footprint of an output pixel, input pixels
    ifh = 1.0 / max(abs(d) + abs(e), 1e-12)
    s = src.reshape(-1)
    o = out.reshape(-1)
    off = np.empty(ow, np.int64)
    dxo = np.empty(ow, np.int64)
    dyo = np.empty(ow, np.int64)
    wx = np.empty(ow, np.int64)
    wy = np.empty(ow, np.int64)
    cov = np.empty(ow, np.int64)
    fillv = np.empty(C, np.int64)
    for ch in range(C):
        fillv[ch] = fill[ch]
    dxc, dyc = C, W * C  # tap offsets away from the edges
    for y in range(oh):
        lo, hi = _row_setup(
            a, b, c0, d, e, f, y, W, H, C, ifw, ifh, mode, bilinear, off, dxo, dyo, wx, wy, cov
        )
        base = y * ow * C
        if C == 3:
            for x in range(lo, hi):
                i, ix, iy = off[x], wx[x], wy[x]
                j = base + 3 * x
                o[j] = (_tap(s, i, dxc, dyc, ix, iy) + _HALF) >> _SHIFT
                o[j + 1] = (_tap(s, i + 1, dxc, dyc, ix, iy) + _HALF) >> _SHIFT
                o[j + 2] = (_tap(s, i + 2, dxc, dyc, ix, iy) + _HALF) >> _SHIFT
        else:
            for x in range(lo, hi):
                i, ix, iy = off[x], wx[x], wy[x]
                j = base + C * x
                for ch in range(C):
                    o[j + ch] = (_tap(s, i + ch, dxc, dyc, ix, iy) + _HALF) >> _SHIFT
        if lo == 0 and hi == ow:
            continue
        for x in range(ow):
            if lo <= x < hi:
                continue
            i, dx, dy, ix, iy, k = off[x], dxo[x], dyo[x], wx[x], wy[x], cov[x]
            j = base + C * x
            if k == 0:
                for ch in range(C):
                    o[j + ch] = fillv[ch]
            elif k == FRAC:
                for ch in range(C):
                    o[j + ch] = (_tap(s, i + ch, dx, dy, ix, iy) + _HALF) >> _SHIFT
            else:
                for ch in range(C):
                    o[j + ch] = _blend(_tap(s, i + ch, dx, dy, ix, iy), k, fillv[ch])
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
    C = img.shape[2]
    s = img.reshape(-1)
    o = out.reshape(-1)
    n = s.shape[0]
    if C == 3:
        l0, l1, l2 = luts[0], luts[1], luts[2]
        for i in range(0, n, 3):
            o[i] = l0[s[i]]
            o[i + 1] = l1[s[i + 1]]
            o[i + 2] = l2[s[i + 2]]
    else:
        for i in range(0, n, C):
            for ch in range(C):
                o[i + ch] = luts[ch, s[i + ch]]
    return out


@njit(cache=True, nogil=True, boundscheck=False)
def channel_histograms(img, nbins):
    """(C, nbins) counts of each value in each channel."""
    C = img.shape[2]
    s = img.reshape(-1)
    n = s.shape[0]
    hist = np.zeros((C, nbins), np.int64)
    if C == 3:
        h0, h1, h2 = hist[0], hist[1], hist[2]
        for i in range(0, n, 3):
            h0[s[i]] += 1
            h1[s[i + 1]] += 1
            h2[s[i + 2]] += 1
    else:
        for i in range(0, n, C):
            for ch in range(C):
                hist[ch, s[i + ch]] += 1
    return hist


@njit(cache=True, nogil=True, boundscheck=False)
def warp_affine_batch(x, mats, out, fill, mode, bilinear):
    """Float twin of :func:`warp_affine` for training batches: ``x`` (N, C, H, W) float32,
    ``mats`` (N, 2, 3), ``out`` (N, C, oh, ow) float32, ``fill`` a value.

    Same taps, weights (1/FRAC steps) and coverage as the integer kernel; sums are float32
    and not rounded.
    """
    N, C, H, W = x.shape
    oh, ow = out.shape[2], out.shape[3]
    off = np.empty(ow, np.int64)
    dxo = np.empty(ow, np.int64)
    dyo = np.empty(ow, np.int64)
    wx = np.empty(ow, np.int64)
    wy = np.empty(ow, np.int64)
    cov = np.empty(ow, np.int64)
    inv = np.float32(1.0 / FRAC)
    fv = np.float32(fill)
    for n in range(N):
        a, b, c0 = mats[n, 0, 0], mats[n, 0, 1], mats[n, 0, 2]
        d, e, f = mats[n, 1, 0], mats[n, 1, 1], mats[n, 1, 2]
        ifw = 1.0 / max(abs(a) + abs(b), 1e-12)
        ifh = 1.0 / max(abs(d) + abs(e), 1e-12)
        for y in range(oh):
            lo, hi = _row_setup(
                a, b, c0, d, e, f, y, W, H, 1, ifw, ifh, mode, bilinear, off, dxo, dyo, wx, wy, cov
            )
            for ch in range(C):
                p = x[n, ch].reshape(-1)
                o = out[n, ch, y]
                for i in range(ow):
                    q, dx, dy = off[i], dxo[i], dyo[i]
                    fx, fy = np.float32(wx[i]) * inv, np.float32(wy[i]) * inv
                    t0 = p[q] + (p[q + dx] - p[q]) * fx
                    t1 = p[q + dy] + (p[q + dy + dx] - p[q + dy]) * fx
                    v = t0 + (t1 - t0) * fy
                    k = FRAC if lo <= i < hi else cov[i]  # cov[] is set outside the span
                    if k != FRAC:
                        kf = np.float32(k) * inv
                        v = v * kf + fv * (np.float32(1.0) - kf)
                    o[i] = v
    return out


def warm_up() -> None:
    """Compile (or load from numba's on-disk cache) every kernel for uint8 and uint16 images.

    Call once in a parent process before forking workers so that they inherit the machine code.
    """
    for dtype in (np.uint8, np.uint16):
        for writable in (True, False):
            src = np.zeros((4, 4, 3), dtype)
            src.setflags(write=writable)  # read-only inputs compile to a separate signature
            out = np.zeros((2, 2, 3), dtype)
            m = np.eye(3)[:2].copy()
            fill = np.zeros(3, dtype)
            for bilinear in (True, False):
                warp_affine(src, m, out, fill, BORDER_CONSTANT, bilinear)
            box_reduce(src, 2, 2, out)
            nbins = int(np.iinfo(dtype).max) + 1
            apply_luts(src, np.zeros((3, nbins), dtype), np.zeros_like(src))
            channel_histograms(src, nbins)
    xb = np.zeros((1, 1, 4, 4), np.float32)
    for bilinear in (True, False):
        warp_affine_batch(
            xb, np.eye(3)[None, :2], np.zeros((1, 1, 2, 2), np.float32), 0.0, 0, bilinear
        )
