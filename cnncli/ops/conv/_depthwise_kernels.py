"""Numba kernels of the depthwise path (groups == input channels, K = M * C).

Each input channel is copied once into a zero-padded plane whose columns are stored by
phase of the stride (column p at ``(p % s) * E + p // s``), so that every kernel tap reads
(or, for the input gradient, writes) a contiguous run of the plane for a whole output row:
the inner loops run along W with unit stride and vectorise, for stride 1 and 2 alike.
Conventions as in ``cnncli.ops._kernels`` (flat views, uint64 indices, serial, nogil).
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba import uint64 as _u

_OPTS = {"cache": True, "nogil": True}


@njit(inline="always")
def _fill(xf, base, H, W, ph, pw, sw, E, Wq, plane):
    """The interior of the phase-split padded plane <- one input channel at xf[base:]."""
    for h in range(H):
        row = (h + ph) * Wq
        src = base + h * W
        for q in range(W):
            p = q + pw
            plane[_u(row + (p % sw) * E + p // sw)] = xf[_u(src + q)]


@njit(fastmath={"contract"}, **_OPTS)
def depthwise_forward(x, w, b, M, kh, kw, sh, sw, ph, pw, dh, dw, n0, m, plane, y):
    """y[n0:n0+m] = depthwise conv of x[n0:n0+m] (+ b[k] when b has K entries)."""
    _, C, H, W = x.shape
    K, Ho, Wo = y.shape[1], y.shape[2], y.shape[3]
    Hp = H + 2 * ph
    E = (W + 2 * pw + sw - 1) // sw
    Wq = sw * E
    xf, yf, wf = x.reshape(-1), y.reshape(-1), w.reshape(-1)
    has_b = b.shape[0] == K
    zero = np.zeros(1, dtype=y.dtype)[0]
    for q in range(Hp * Wq):
        plane[_u(q)] = zero
    for n in range(n0, n0 + m):
        for c in range(C):
            _fill(xf, (n * C + c) * H * W, H, W, ph, pw, sw, E, Wq, plane)
            for mm in range(M):
                k = c * M + mm
                bk = b[k] if has_b else zero
                wb = k * kh * kw
                for i in range(Ho):
                    yb = ((n * K + k) * Ho + i) * Wo
                    for j in range(Wo):
                        yf[_u(yb + j)] = bk
                    for u in range(kh):
                        rb = (i * sh + u * dh) * Wq
                        for v in range(kw):
                            wt = wf[_u(wb + u * kw + v)]
                            o = v * dw
                            src = rb + (o % sw) * E + o // sw
                            for j in range(Wo):
                                yf[_u(yb + j)] += wt * plane[_u(src + j)]


@njit(fastmath={"contract"}, **_OPTS)
def depthwise_input_grad(dz, w, M, kh, kw, sh, sw, ph, pw, dh, dw, n0, m, plane, dx):
    """dx[n0:n0+m] = the adjoint of depthwise_forward applied to dz (the part's images,
    dz[0] being image n0): each tap adds w * dz row to a contiguous run of the plane."""
    _, C, H, W = dx.shape
    K, Ho, Wo = dz.shape[1], dz.shape[2], dz.shape[3]
    Hp = H + 2 * ph
    E = (W + 2 * pw + sw - 1) // sw
    Wq = sw * E
    gf, df, wf = dz.reshape(-1), dx.reshape(-1), w.reshape(-1)
    zero = np.zeros(1, dtype=dx.dtype)[0]
    for n in range(m):
        for c in range(C):
            for q in range(Hp * Wq):
                plane[_u(q)] = zero
            for mm in range(M):
                k = c * M + mm
                wb = k * kh * kw
                for i in range(Ho):
                    gb = ((n * K + k) * Ho + i) * Wo
                    for u in range(kh):
                        rb = (i * sh + u * dh) * Wq
                        for v in range(kw):
                            wt = wf[_u(wb + u * kw + v)]
                            o = v * dw
                            dst = rb + (o % sw) * E + o // sw
                            for j in range(Wo):
                                plane[_u(dst + j)] += wt * gf[_u(gb + j)]
            base = ((n0 + n) * C + c) * H * W
            for h in range(H):
                row = (h + ph) * Wq
                for q in range(W):
                    p = q + pw
                    df[_u(base + h * W + q)] = plane[_u(row + (p % sw) * E + p // sw)]


@njit(fastmath={"reassoc", "contract"}, **_OPTS)
def depthwise_weight_grad(x, dz, M, kh, kw, sh, sw, ph, pw, dh, dw, n0, m, plane, acc):
    """acc[k, u*kw + v] += sum over the part's images and pixels of dz[n, k, i, j] *
    xpad[n0 + n, c, i*sh + u*dh, j*sw + v*dw] (acc float64 [K, kh*kw]; each row's dot
    product is summed in the working dtype, the rows in float64)."""
    _, C, H, W = x.shape
    K, Ho, Wo = dz.shape[1], dz.shape[2], dz.shape[3]
    Hp = H + 2 * ph
    E = (W + 2 * pw + sw - 1) // sw
    Wq = sw * E
    xf, gf = x.reshape(-1), dz.reshape(-1)
    zero = np.zeros(1, dtype=dz.dtype)[0]
    for q in range(Hp * Wq):
        plane[_u(q)] = zero
    for n in range(m):
        for c in range(C):
            _fill(xf, ((n0 + n) * C + c) * H * W, H, W, ph, pw, sw, E, Wq, plane)
            for mm in range(M):
                k = c * M + mm
                for u in range(kh):
                    for v in range(kw):
                        o = v * dw
                        off = (o % sw) * E + o // sw
                        total = 0.0
                        for i in range(Ho):
                            gb = ((n * K + k) * Ho + i) * Wo
                            src = (i * sh + u * dh) * Wq + off
                            s = zero
                            for j in range(Wo):
                                s += gf[_u(gb + j)] * plane[_u(src + j)]
                            total += s
                        acc[k, u * kw + v] += total
