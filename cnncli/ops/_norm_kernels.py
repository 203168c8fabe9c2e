"""Numba kernels of batch normalisation: two passes forward, two backward, the activation
that follows (ReLU, ReLU6) folded in. Arrays are [N, C, P] views (P = H*W, 1 for vectors);
per-channel statistics are float64. Conventions as in ``cnncli.ops._kernels``.

Activation codes: 0 none, 1 ReLU, 2 ReLU6.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba import uint64 as _u

_OPTS = {"cache": True, "nogil": True}


@njit(fastmath={"reassoc", "contract"}, **_OPTS)
def bn_partial_stats(x, out):
    """out[c] = (shift, sum(x - shift), sum((x - shift)^2)) over the images and pixels of
    x [m, C, P], shift being channel c's first value (so the sums stay well conditioned)."""
    m, C, P = x.shape
    xf = x.reshape(-1)
    for c in range(C):
        out[c, 0] = xf[_u(c * P)]
        out[c, 1] = 0.0
        out[c, 2] = 0.0
    for n in range(m):
        for c in range(C):
            s = out[c, 0]
            base = (n * C + c) * P
            s1 = 0.0
            s2 = 0.0
            for q in range(P):
                d = xf[_u(base + q)] - s
                s1 += d
                s2 += d * d
            out[c, 1] += s1
            out[c, 2] += s2


@njit(fastmath={"contract"}, **_OPTS)
def bn_apply(x, scale, shift, act, y):
    """y = act(x * scale[c] + shift[c]) for x, y [m, C, P]."""
    m, C, P = x.shape
    xf, yf = x.reshape(-1), y.reshape(-1)
    zero = np.zeros(1, dtype=y.dtype)[0]
    six = zero + 6
    for n in range(m):
        for c in range(C):
            a, b = scale[c], shift[c]
            base = (n * C + c) * P
            if act == 0:
                for q in range(P):
                    yf[_u(base + q)] = xf[_u(base + q)] * a + b
            elif act == 1:
                for q in range(P):
                    v = xf[_u(base + q)] * a + b
                    yf[_u(base + q)] = zero if v < zero else v
            else:
                for q in range(P):
                    v = xf[_u(base + q)] * a + b
                    v = zero if v < zero else v
                    yf[_u(base + q)] = six if v > six else v


@njit(**_OPTS)
def shift_act_inplace(y, shift, act):
    """y = act(y + shift[c]) in place for y [m, C, P] (an empty shift adds nothing). One
    array, so LLVM vectorises it: bn_apply with x aliasing y ran ReLU6 2.9x slower."""
    m, C, P = y.shape
    yf = y.reshape(-1)
    zero = np.zeros(1, dtype=y.dtype)[0]
    six = zero + 6
    has = shift.shape[0] == C
    for n in range(m):
        for c in range(C):
            b = shift[c] if has else zero
            base = (n * C + c) * P
            if act == 0:
                for q in range(P):
                    yf[_u(base + q)] = yf[_u(base + q)] + b
            elif act == 1:  # written so that NaN passes through, as np.maximum does
                for q in range(P):
                    v = yf[_u(base + q)] + b
                    yf[_u(base + q)] = zero if v < zero else v
            else:
                for q in range(P):
                    v = yf[_u(base + q)] + b
                    v = zero if v < zero else v
                    yf[_u(base + q)] = six if v > six else v


@njit(inline="always")
def _gate(g, v, act, zero, six):
    """The upstream gradient g through the activation, at its input v (the same
    x * scale + shift as bn_apply computes, so the same mask as its output gives)."""
    if act == 1:
        return g if v > zero else zero
    if act == 2:
        return g if (v > zero) & (v < six) else zero
    return g


@njit(fastmath={"reassoc", "contract"}, **_OPTS)
def bn_backward_sums(dy, x, mean, inv, scale, shift, act, out):
    """out[c] += (sum dz, sum dz * xhat) over x [m, C, P], where dz is dy through the
    activation and xhat = (x - mean[c]) * inv[c]. The activation's mask is recomputed
    from x, so its output need not be kept or read."""
    m, C, P = x.shape
    gf, xf = dy.reshape(-1), x.reshape(-1)
    zero = np.zeros(1, dtype=x.dtype)[0]
    six = zero + 6
    for n in range(m):
        for c in range(C):
            mu, iv, a, b = mean[c], inv[c], scale[c], shift[c]
            base = (n * C + c) * P
            s1 = zero
            s2 = zero
            for q in range(P):
                xv = xf[_u(base + q)]
                g = _gate(gf[_u(base + q)], xv * a + b, act, zero, six)
                s1 += g
                s2 += g * ((xv - mu) * iv)
            out[c, 0] += s1
            out[c, 1] += s2


@njit(fastmath={"contract"}, **_OPTS)
def bn_backward_apply(dy, x, mean, inv, scale, shift, b, c2, act, dx):
    """dx = scale[c] * (dz - b[c] - xhat * c2[c]) with dz and xhat as in bn_backward_sums
    (scale = gamma * inv; training: b = mean of dz, c2 = mean of dz*xhat; evaluation:
    b = c2 = 0)."""
    m, C, P = x.shape
    gf, xf, df = dy.reshape(-1), x.reshape(-1), dx.reshape(-1)
    zero = np.zeros(1, dtype=x.dtype)[0]
    six = zero + 6
    for n in range(m):
        for c in range(C):
            mu, iv, a, sh, bc, cc = mean[c], inv[c], scale[c], shift[c], b[c], c2[c]
            base = (n * C + c) * P
            for q in range(P):
                xv = xf[_u(base + q)]
                g = _gate(gf[_u(base + q)], xv * a + sh, act, zero, six)
                df[_u(base + q)] = a * (g - bc - ((xv - mu) * iv) * cc)
