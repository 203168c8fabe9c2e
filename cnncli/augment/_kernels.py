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
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

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


@njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _taps_clamped(a, d, xrow, yrow, W, H, C, off, dxo, dyo, wx, wy, start, stop):
    umax, vmax = W - 1.0, H - 1.0
    row = W * C
    for x in range(start, stop):
        u = min(max(xrow + a * x - 0.5, 0.0), umax)
        v = min(max(yrow + d * x - 0.5, 0.0), vmax)
        x0 = np.int64(u)
        y0 = np.int64(v)
        wx[x] = np.int64((u - x0) * FRAC + 0.5)
        wy[x] = np.int64((v - y0) * FRAC + 0.5)
        off[x] = y0 * row + x0 * C
        dxo[x] = (min(x0 + 1, W - 1) - x0) * C
        dyo[x] = (min(y0 + 1, H - 1) - y0) * row


@njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _taps_reflect(a, d, xrow, yrow, W, H, C, off, dxo, dyo, wx, wy, start, stop):
    wf, hf = float(W), float(H)
    umax, vmax = wf - 1.0, hf - 1.0
    row = W * C
    for x in range(start, stop):
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


@njit(cache=True, nogil=True, boundscheck=False, inline="always")
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


@njit(cache=True, nogil=True, boundscheck=False, inline="always")
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


@njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _row_setup(a, b, c0, d, e, f, y, W, H, C, ifw, ifh, mode, bilinear, taps, full):
    """Taps, weights and coverage of output row ``y``; returns (lo, hi): pixels lo..hi-1 are
    fully covered with all four taps inside the image (the fast loop, constant tap offsets),
    ``cov`` is set for the others. With ``full`` the taps of every pixel are set, else only
    those outside lo..hi-1 (the image kernel computes the span's taps itself). ``taps`` holds
    six rows: offsets of the top-left tap, to the right and lower taps, weights x and y, and
    coverage (see ``_taps_clamped``)."""
    off, dxo, dyo, wx, wy, cov = taps[0], taps[1], taps[2], taps[3], taps[4], taps[5]
    ow = off.shape[0]
    xrow = a * 0.5 + b * (y + 0.5) + c0
    yrow = d * 0.5 + e * (y + 0.5) + f
    if not bilinear:
        _taps_nearest(a, d, xrow, yrow, W, H, C, mode, off, dxo, dyo, wx, wy, cov)
        return 0, 0
    lx, hx = _span(xrow, a, 0.5, W - 0.5, ow)  # taps x0, x0 + 1 inside
    ly, hy = _span(yrow, d, 0.5, H - 0.5, ow)
    lo, hi = max(lx, ly), min(hx, hy)
    if mode == BORDER_CONSTANT:
        lc, hc = _full_span(a, d, xrow, yrow, W, H, ifw, ifh, ow)
        lo, hi = max(lo, lc), min(hi, hc)
    if hi <= lo:
        lo, hi = 0, 0
    spans = ((0, ow), (0, 0)) if full or lo == hi else ((0, lo), (hi, ow))
    for start, stop in spans:
        if mode == BORDER_REFLECT:
            _taps_reflect(a, d, xrow, yrow, W, H, C, off, dxo, dyo, wx, wy, start, stop)
        else:
            _taps_clamped(a, d, xrow, yrow, W, H, C, off, dxo, dyo, wx, wy, start, stop)
    if mode == BORDER_CONSTANT:
        _coverage(a, d, xrow, yrow, W, H, ifw, ifh, cov, 0, lo)
        _coverage(a, d, xrow, yrow, W, H, ifw, ifh, cov, hi, ow)
    else:
        cov[:lo] = FRAC
        cov[hi:] = FRAC
    return lo, hi


@njit(cache=True, nogil=True, boundscheck=False)
def _span_taps(xrow, yrow, a, d, row, C, lo, hi, idx, wts):
    """Top-left tap offset and the four bilinear weights (summing to FRAC**2) of pixels lo..hi-1
    of a row, all of whose taps lie inside the image (so no clamping): the same float
    arithmetic as ``_taps_clamped``, in a loop of its own that the compiler vectorises."""
    for k in range(hi - lo):
        x = lo + k
        u = xrow + a * x - 0.5
        v = yrow + d * x - 0.5
        x0 = np.int64(u)
        y0 = np.int64(v)
        ix = np.int32((u - x0) * FRAC + 0.5)
        iy = np.int32((v - y0) * FRAC + 0.5)
        idx[k] = y0 * row + x0 * C
        jx = FRAC - ix
        jy = FRAC - iy
        wts[0, k] = jx * jy
        wts[1, k] = ix * jy
        wts[2, k] = jx * iy
        wts[3, k] = ix * iy


@njit(cache=True, nogil=True, boundscheck=False)
def _span_sum(s, o, base, lo, n, C, row, idx, wts):
    """Weighted sums of the span's pixels: ``sum(w * p) + FRAC**2 / 2 >> 2 FRAC_BITS``, which
    equals the nested row-then-column form of ``_tap`` exactly (integer arithmetic).
    Indices are unsigned, so no negative-index wraparound code; 8-bit RGB sums in int32."""
    uC = np.uint64(C)
    urow = np.uint64(row)
    j0 = np.uint64(base + C * lo)
    if C == 3 and s.itemsize == 1:
        half = np.int32(_HALF)
        r3 = urow + np.uint64(3)
        t3 = np.uint64(3)
        for k in range(n):
            i = np.uint64(idx[k])
            w00, w01, w10, w11 = wts[0, k], wts[1, k], wts[2, k], wts[3, k]
            j = j0 + t3 * np.uint64(k)
            for ch in range(3):
                c = np.uint64(ch)
                acc = (
                    w00 * np.int32(s[i + c])
                    + w01 * np.int32(s[i + t3 + c])
                    + w10 * np.int32(s[i + urow + c])
                    + w11 * np.int32(s[i + r3 + c])
                )
                o[j + c] = (acc + half) >> _SHIFT
    else:
        rc = urow + uC
        for k in range(n):
            i = np.uint64(idx[k])
            w00, w01 = np.int64(wts[0, k]), np.int64(wts[1, k])
            w10, w11 = np.int64(wts[2, k]), np.int64(wts[3, k])
            j = j0 + uC * np.uint64(k)
            for ch in range(C):
                c = np.uint64(ch)
                acc = (
                    w00 * np.int64(s[i + c])
                    + w01 * np.int64(s[i + uC + c])
                    + w10 * np.int64(s[i + urow + c])
                    + w11 * np.int64(s[i + rc + c])
                )
                o[j + c] = (acc + _HALF) >> _SHIFT


@njit(cache=True, nogil=True, boundscheck=False)
def warp_affine(src, m, out, fill, mode, bilinear):
    """Fill ``out`` (oh, ow, C) by sampling ``src`` (H, W, C) at ``m @ (c + .5, r + .5, 1)``.

    Row by row: the span of pixels whose four taps lie inside the image gets its offsets and
    weights in one vectorisable loop (``_span_taps``) and its sums in another (``_span_sum``);
    the pixels outside it (borders, coverage) take the general per-pixel path.
    """
    H, W, C = src.shape
    oh, ow, _ = out.shape
    a, b, c0 = m[0, 0], m[0, 1], m[0, 2]
    d, e, f = m[1, 0], m[1, 1], m[1, 2]
    ifw = 1.0 / max(abs(a) + abs(b), 1e-12)  # 1 / footprint of an output pixel, input pixels
    ifh = 1.0 / max(abs(d) + abs(e), 1e-12)
    s = src.reshape(-1)
    o = out.reshape(-1)
    taps = np.empty((6, ow), np.int64)  # see _row_setup
    off, dxo, dyo, wx, wy, cov = taps[0], taps[1], taps[2], taps[3], taps[4], taps[5]
    fillv = np.empty(C, np.int64)
    for ch in range(C):
        fillv[ch] = fill[ch]
    idx = np.empty(ow, np.int64)
    wts = np.empty((4, ow), np.int32)  # weights <= FRAC**2 = 2**20
    for y in range(oh):
        lo, hi = _row_setup(a, b, c0, d, e, f, y, W, H, C, ifw, ifh, mode, bilinear, taps, False)
        base = y * ow * C
        if hi > lo:
            xrow = a * 0.5 + b * (y + 0.5) + c0
            yrow = d * 0.5 + e * (y + 0.5) + f
            _span_taps(xrow, yrow, a, d, W * C, C, lo, hi, idx, wts)
            _span_sum(s, o, base, lo, hi - lo, C, W * C, idx, wts)
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


# --------------------------------------------------------------------------- packed pixels
# 8-bit RGB and RGBA images stored 4 bytes per pixel (Pillow's own layout for RGB) are read as
# one uint32 word per pixel, channel c in bits 8c..8c+7. Loops that gather such words through
# computed indices vectorise (AVX2/AVX-512 gathers) only when LLVM can prove that their stores
# do not alias the arrays they read, which it cannot for array arguments; so they write into a
# stack buffer (``_stack_words``) and copy that out. Results equal the byte kernels' exactly.

CHUNK = 256  # pixels per stack buffer


@intrinsic
def _stack_words(typingctx, n):
    """Pointer to ``n`` (a literal) uint32 words on the stack: memory nothing else can alias."""
    if not isinstance(n, types.IntegerLiteral):
        return None

    def codegen(context, builder, signature, args):
        word = context.get_value_type(types.uint32)
        return cgutils.alloca_once(builder, word, size=n.literal_value)

    return types.CPointer(types.uint32)(n), codegen


@njit(cache=True, nogil=True, inline="always")
def _lane(p00, p01, p10, p11, w00, w01, w10, w11, sh):
    """The channel at bit ``sh`` of the bilinear mix of four packed pixels (weights sum to
    FRAC**2), rounded and shifted back into place; the sum fits in 32 bits."""
    m = np.uint32(255)
    sh = np.uint32(sh)
    acc = np.uint32(
        w00 * ((p00 >> sh) & m)
        + w01 * ((p01 >> sh) & m)
        + w10 * ((p10 >> sh) & m)
        + w11 * ((p11 >> sh) & m)
        + np.uint32(_HALF)
    )
    return (acc >> np.uint32(_SHIFT)) << sh


@njit(cache=True, nogil=True, boundscheck=False)
def _span_packed(s, o, base, xrow, yrow, a, d, W, lo, hi, C):
    """Pixels lo..hi-1 of an output row whose four taps all lie inside the image: the float
    arithmetic of ``_span_taps`` and the integer sums of ``_span_sum``, C (3 or 4) channels;
    for C = 3 the fourth byte is 255."""
    buf = carray(_stack_words(CHUNK), (CHUNK,))
    one = np.uint64(1)
    urow = np.uint64(W)
    full = np.uint32(FRAC)
    top = np.uint32(0xFF000000) if C == 3 else np.uint32(0)
    for start in range(lo, hi, CHUNK):
        n = min(CHUNK, hi - start)
        for k in range(n):
            x = start + k
            u = xrow + a * x - 0.5
            v = yrow + d * x - 0.5
            x0 = np.int64(u)
            y0 = np.int64(v)
            ix = np.uint32((u - x0) * FRAC + 0.5)
            iy = np.uint32((v - y0) * FRAC + 0.5)
            i = np.uint64(y0 * W + x0)
            jx, jy = full - ix, full - iy
            w00, w01 = np.uint32(jx * jy), np.uint32(ix * jy)
            w10, w11 = np.uint32(jx * iy), np.uint32(ix * iy)
            p00, p01 = s[i], s[i + one]
            p10, p11 = s[i + urow], s[i + urow + one]
            word = top | _lane(p00, p01, p10, p11, w00, w01, w10, w11, 0)
            word |= _lane(p00, p01, p10, p11, w00, w01, w10, w11, 8)
            word |= _lane(p00, p01, p10, p11, w00, w01, w10, w11, 16)
            if C == 4:
                word |= _lane(p00, p01, p10, p11, w00, w01, w10, w11, 24)
            buf[k] = word
        for k in range(n):
            o[base + start + k] = buf[k]


@njit(cache=True, nogil=True, inline="always")
def _tap_word(p00, p01, p10, p11, sh, ix, iy):
    """``_tap`` of the channel at bit ``sh`` of four packed pixels."""
    q00 = np.int64((p00 >> sh) & 255)
    q01 = np.int64((p01 >> sh) & 255)
    q10 = np.int64((p10 >> sh) & 255)
    q11 = np.int64((p11 >> sh) & 255)
    t0 = (q00 << FRAC_BITS) + (q01 - q00) * ix
    t1 = (q10 << FRAC_BITS) + (q11 - q10) * ix
    return (t0 << FRAC_BITS) + (t1 - t0) * iy


@njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _pixels_packed(s, o, base, start, stop, off, dxo, dyo, wx, wy, cov, fillv, C):
    """Output pixels start..stop-1 of a row through the general path: per-pixel taps (clamped
    or mirrored) and coverage, as in :func:`warp_affine`."""
    top = np.uint32(0xFF000000) if C == 3 else np.uint32(0)
    fill_word = top
    for ch in range(C):
        fill_word |= np.uint32(fillv[ch]) << np.uint32(8 * ch)
    for x in range(start, stop):
        k = cov[x]
        if k == 0:
            o[base + x] = fill_word
            continue
        i, dx, dy, ix, iy = off[x], dxo[x], dyo[x], wx[x], wy[x]
        p00, p01, p10, p11 = s[i], s[i + dx], s[i + dy], s[i + dy + dx]
        word = top
        for ch in range(C):
            sh = np.uint32(8 * ch)
            acc = _tap_word(p00, p01, p10, p11, sh, ix, iy)
            v = (acc + _HALF) >> _SHIFT if k == FRAC else _blend(acc, k, fillv[ch])
            word |= np.uint32(v) << sh
        o[base + x] = word


@njit(cache=True, nogil=True, boundscheck=False)
def warp_affine_packed(src, m, out, fill, mode, bilinear, C):
    """:func:`warp_affine` for packed pixels: ``src`` (H, W) and ``out`` (oh, ow) uint32 words
    of C = 3 or 4 channels, ``fill`` (C,) values. Same taps, weights, coverage and rounding, so
    the same bytes; the span of fully inside pixels takes the vectorised ``_span_packed``."""
    H, W = src.shape
    oh, ow = out.shape
    a, b, c0 = m[0, 0], m[0, 1], m[0, 2]
    d, e, f = m[1, 0], m[1, 1], m[1, 2]
    ifw = 1.0 / max(abs(a) + abs(b), 1e-12)
    ifh = 1.0 / max(abs(d) + abs(e), 1e-12)
    s = src.reshape(-1)
    o = out.reshape(-1)
    taps = np.empty((6, ow), np.int64)  # see _row_setup
    off, dxo, dyo, wx, wy, cov = taps[0], taps[1], taps[2], taps[3], taps[4], taps[5]
    fillv = np.zeros(4, np.int64)
    for ch in range(C):
        fillv[ch] = fill[ch]
    for y in range(oh):
        lo, hi = _row_setup(a, b, c0, d, e, f, y, W, H, 1, ifw, ifh, mode, bilinear, taps, False)
        base = y * ow
        if hi > lo:
            xrow = a * 0.5 + b * (y + 0.5) + c0
            yrow = d * 0.5 + e * (y + 0.5) + f
            _span_packed(s, o, base, xrow, yrow, a, d, W, lo, hi, C)
        _pixels_packed(s, o, base, 0, lo, off, dxo, dyo, wx, wy, cov, fillv, C)
        _pixels_packed(s, o, base, hi, ow, off, dxo, dyo, wx, wy, cov, fillv, C)
    return out


@njit(cache=True, nogil=True, boundscheck=False)
def pad_rgbx(src, out):
    """``out`` (H, W, 4) = ``src`` (H, W, 3) with a fourth byte of 255 (about 6x NumPy's
    strided assignment)."""
    H, W, _ = src.shape
    for y in range(H):
        for x in range(W):
            out[y, x, 0] = src[y, x, 0]
            out[y, x, 1] = src[y, x, 1]
            out[y, x, 2] = src[y, x, 2]
            out[y, x, 3] = 255
    return out


@njit(cache=True, nogil=True, boundscheck=False)
def lut_sums_packed(src, luts):
    """Per channel, the sum over the image of ``luts[c, value of channel c]`` (one table per
    channel, 3 or 4): what ``channel_histograms`` dotted with the tables gives, in one pass."""
    s = src.reshape(-1)
    m = np.uint32(255)
    t0, t1, t2, t3 = luts[0], luts[1], luts[2], luts[luts.shape[0] - 1]
    s0 = 0  # separate statements: a chained assignment hides the reductions from LLVM
    s1 = 0
    s2 = 0
    s3 = 0
    if luts.shape[0] == 3:
        for k in range(s.shape[0]):
            p = s[k]
            s0 += t0[p & m]
            s1 += t1[(p >> np.uint32(8)) & m]
            s2 += t2[(p >> np.uint32(16)) & m]
    else:
        for k in range(s.shape[0]):
            p = s[k]
            s0 += t0[p & m]
            s1 += t1[(p >> np.uint32(8)) & m]
            s2 += t2[(p >> np.uint32(16)) & m]
            s3 += t3[p >> np.uint32(24)]
    return s0, s1, s2, s3


@njit(cache=True, nogil=True, boundscheck=False)
def apply_luts_packed(src, luts, out):
    """``out`` channel c = ``luts[c, src channel c]`` for packed pixels, 3 or 4 tables (with 3
    the fourth byte is kept); ``out`` may be ``src``. A scalar loop: on the machines measured
    it beats the vectorised one, whose gathers from the tables are slow."""
    s = src.reshape(-1)
    o = out.reshape(-1)
    m = np.uint32(255)
    t0, t1, t2, t3 = luts[0], luts[1], luts[2], luts[luts.shape[0] - 1]
    keep = np.uint32(0xFF000000) if luts.shape[0] == 3 else np.uint32(0)
    for k in range(s.shape[0]):
        p = s[k]
        word = (
            t0[p & m]
            | (t1[(p >> np.uint32(8)) & m] << np.uint32(8))
            | (t2[(p >> np.uint32(16)) & m] << np.uint32(16))
            | (p & keep)
        )
        if not keep:
            word |= t3[p >> np.uint32(24)] << np.uint32(24)
        o[k] = word
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
    if C == 3:  # unsigned indices: no negative-index wraparound code, about 2x faster
        l0, l1, l2 = luts[0], luts[1], luts[2]
        one, two, three = np.uint64(1), np.uint64(2), np.uint64(3)
        for k in range(n // 3):
            i = three * np.uint64(k)
            o[i] = l0[np.uint64(s[i])]
            o[i + one] = l1[np.uint64(s[i + one])]
            o[i + two] = l2[np.uint64(s[i + two])]
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
        one, two, three = np.uint64(1), np.uint64(2), np.uint64(3)
        for k in range(n // 3):
            i = three * np.uint64(k)
            h0[np.uint64(s[i])] += 1
            h1[np.uint64(s[i + one])] += 1
            h2[np.uint64(s[i + two])] += 1
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
    taps = np.empty((6, ow), np.int64)  # see _row_setup
    off, dxo, dyo, wx, wy, cov = taps[0], taps[1], taps[2], taps[3], taps[4], taps[5]
    inv = np.float32(1.0 / FRAC)
    fv = np.float32(fill)
    for n in range(N):
        a, b, c0 = mats[n, 0, 0], mats[n, 0, 1], mats[n, 0, 2]
        d, e, f = mats[n, 1, 0], mats[n, 1, 1], mats[n, 1, 2]
        ifw = 1.0 / max(abs(a) + abs(b), 1e-12)
        ifh = 1.0 / max(abs(d) + abs(e), 1e-12)
        for y in range(oh):
            lo, hi = _row_setup(a, b, c0, d, e, f, y, W, H, 1, ifw, ifh, mode, bilinear, taps, True)
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


def _warp_calls(packed: bool) -> list[tuple]:
    """(kernel, argument types) of the warps of 8-bit images a run makes: read-only and
    writable sources (decoded images are read-only, intermediate results are not)."""
    import numba

    calls = []
    m = numba.typeof(np.eye(3)[:2].copy())
    for writable in (True, False):
        src = np.zeros((4, 4, 3), np.uint8)
        src.setflags(write=writable)
        fill = np.zeros(3, np.uint8)
        fill.setflags(write=False)  # as functional's cached fill vectors are
        calls.append((warp_affine, (numba.typeof(src), m, numba.typeof(src[:2, :2].copy()),
                                    numba.typeof(fill), numba.int64, numba.boolean)))
        if packed:
            words = np.zeros((4, 4), np.uint32)
            words.setflags(write=writable)
            calls.append((warp_affine_packed,
                          (numba.typeof(words), m, numba.typeof(words.copy()),
                           numba.typeof(fill), numba.int64, numba.boolean, numba.int64)))
    return calls


def warps_ready(packed: bool) -> bool:
    """Whether the warp kernels (the packed ones too with ``packed``), the costliest to
    compile (2-3 s each), are compiled or in Numba's disk cache for some source layout."""
    from cnncli.jit import not_ready

    calls = _warp_calls(packed)
    missing = not_ready(calls)
    kernels = {id(k): k for k, _ in calls}.values()
    return all(any(c not in missing for c in calls if c[0] is k) for k in kernels)


def warm_up(packed: bool = True) -> None:
    """Compile (or load from numba's on-disk cache) the kernels for 8-bit images (the packed
    ones only with ``packed``); 16-bit images compile theirs on first use.

    Call once in a parent process before forking workers so that they inherit the machine code.
    """
    for dtype in (np.uint8,):
        for writable in (True, False):
            src = np.zeros((4, 4, 3), dtype)
            src.setflags(write=writable)  # read-only inputs compile to a separate signature
            out = np.zeros((2, 2, 3), dtype)
            m = np.eye(3)[:2].copy()
            fill = np.zeros(3, dtype)
            fill.setflags(write=False)  # as functional's cached fill vectors are
            for bilinear in (True, False):
                warp_affine(src, m, out, fill, BORDER_CONSTANT, bilinear)
            box_reduce(src, 2, 2, out)
            nbins = int(np.iinfo(dtype).max) + 1
            apply_luts(src, np.zeros((3, nbins), dtype), np.zeros_like(src))
            channel_histograms(src, nbins)
    for channels in (3, 4) if packed else ():
        for writable in (True, False):
            words = np.zeros((4, 4), np.uint32)
            words.setflags(write=writable)
            out = np.zeros((2, 2), np.uint32)
            fill = np.zeros(channels, np.uint8)
            fill.setflags(write=False)
            for bilinear in (True, False):
                warp_affine_packed(words, np.eye(3)[:2].copy(), out, fill, 0, bilinear, channels)
            lut_sums_packed(words, np.zeros((channels, 256), np.int64))
            rgb = np.zeros((4, 4, 3), np.uint8)
            rgb.setflags(write=writable)
            pad_rgbx(rgb, np.zeros((4, 4, 4), np.uint8))
            apply_luts_packed(
                words, np.zeros((channels, 256), np.uint32), np.zeros((4, 4), np.uint32)
            )
