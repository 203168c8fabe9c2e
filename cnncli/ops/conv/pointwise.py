"""1x1 convolutions (stride 1 or more) and convs whose kernel covers the whole input
(a dense layer): plain GEMMs on NCHW data, no im2col.

A strided 1x1 conv reads every s-th pixel: the part's input is subsampled into a workspace
first. Small maps (fewer than ``_CM_PIXELS`` pixels, ResNet's late stages) are laid out
channel-major, [C, images*pixels], so that the part is one GEMM rather than one tiny GEMM
per image.
"""

from __future__ import annotations

import numpy as np

from cnncli.ops.conv.common import bias_act_inplace
from cnncli.ops.conv.geometry import ConvGeometry, is_dense
from cnncli.ops.options import EngineOptions

#: Below this many output pixels per image the channel-major layout is used.
_CM_PIXELS = 256


def workspaces(g: ConvGeometry, m: int, c: int, k: int, direction: str) -> dict[str, int]:
    """Workspace tag -> elements that a part of ``m`` images asks for in ``direction``
    ('fwd', 'dx', 'dw'): the strided input's subsample (pw.x) and the channel-major copies
    of small maps (pw.cm, and pw.cm2 for the weight gradient's second operand)."""
    if is_dense(g):
        return {}
    p = g.out_hw[0] * g.out_hw[1]
    sizes = {}
    if direction != "dx" and g.stride != (1, 1):
        sizes["pw.x"] = m * c * p
    if p < _CM_PIXELS and m > 1:
        if direction == "fwd":
            sizes["pw.cm"] = c * m * p
        else:
            sizes["pw.cm"] = k * m * p
            if direction == "dw":
                sizes["pw.cm2"] = c * m * p
    return sizes


def _sub(x, g: ConvGeometry, lo: int, hi: int, part: int, tag: str) -> np.ndarray:
    """x[lo:hi] read at the stride: [m, C, Ho, Wo] (a view when the stride is 1)."""
    from cnncli.ops import _threads

    if g.stride == (1, 1):
        return x[lo:hi]
    (sh, sw), (ho, wo) = g.stride, g.out_hw
    m, c = hi - lo, x.shape[1]
    buf = _threads.workspace(tag, part, m * c * ho * wo, x.dtype).reshape(m, c, ho, wo)
    np.copyto(buf, x[lo:hi, :, : (ho - 1) * sh + 1 : sh, : (wo - 1) * sw + 1 : sw])
    return buf


def _cm(a: np.ndarray, part: int, tag: str) -> np.ndarray:
    """[m, C, P] -> channel-major [C, m*P], in a workspace."""
    from cnncli.ops import _threads

    m, c, p = a.shape
    buf = _threads.workspace(tag, part, c * m * p, a.dtype).reshape(c, m, p)
    np.copyto(buf, a.transpose(1, 0, 2))
    return buf.reshape(c, m * p)


def forward(x, w, bias, g: ConvGeometry, act, y, lo: int, hi: int, part: int,
            opts: EngineOptions) -> None:
    n, c = x.shape[:2]
    k, m = w.shape[0], hi - lo
    w2 = w.reshape(k, -1)
    if is_dense(g):
        np.matmul(x[lo:hi].reshape(m, -1), w2.T, out=y[lo:hi].reshape(m, k))
    else:
        p = g.out_hw[0] * g.out_hw[1]
        xs = _sub(x, g, lo, hi, part, "pw.x").reshape(m, c, p)
        yp = y[lo:hi].reshape(m, k, p)
        if p >= _CM_PIXELS or m == 1:
            np.matmul(w2, xs, out=yp)
        else:
            out = np.matmul(w2, _cm(xs, part, "pw.cm"))
            np.copyto(yp, out.reshape(k, m, p).transpose(1, 0, 2))
    bias_act_inplace(y[lo:hi], bias, act)


def input_grad(dz, w, g: ConvGeometry, dx, lo: int, hi: int, part: int,
               opts: EngineOptions) -> None:
    """dx[lo:hi] = W^T dz (spread back to every s-th pixel when strided)."""
    k, m = w.shape[0], hi - lo
    c = dx.shape[1]
    w2 = w.reshape(k, -1)
    if is_dense(g):
        np.matmul(dz.reshape(m, k), w2, out=dx[lo:hi].reshape(m, -1))
        return
    (ho, wo), p = g.out_hw, g.out_hw[0] * g.out_hw[1]
    dzp = dz.reshape(m, k, p)
    if p >= _CM_PIXELS or m == 1:
        d = np.matmul(w2.T, dzp)
    else:
        d = np.matmul(w2.T, _cm(dzp, part, "pw.cm")).reshape(c, m, p).transpose(1, 0, 2)
    if g.stride == (1, 1) and g.in_hw == g.out_hw:
        np.copyto(dx[lo:hi].reshape(m, c, p), d)
        return
    (sh, sw) = g.stride
    dx[lo:hi] = 0
    dx[lo:hi, :, : (ho - 1) * sh + 1 : sh, : (wo - 1) * sw + 1 : sw] = d.reshape(m, c, ho, wo)


def weight_grad(x, dz, g: ConvGeometry, lo: int, hi: int, part: int,
                opts: EngineOptions) -> np.ndarray:
    """The part's dW [K, C] = sum over its images of dz[n] @ x_s[n]^T."""
    k, m = dz.shape[1], hi - lo
    if is_dense(g):
        return dz.reshape(m, k).T @ x[lo:hi].reshape(m, -1)
    c, p = x.shape[1], g.out_hw[0] * g.out_hw[1]
    xs = _sub(x, g, lo, hi, part, "pw.x").reshape(m, c, p)
    dzp = dz.reshape(m, k, p)
    if p < _CM_PIXELS and m > 1:
        return _cm(dzp, part, "pw.cm") @ _cm(xs, part, "pw.cm2").T
    dw = dzp[0] @ xs[0].T
    tmp = np.empty_like(dw)
    for i in range(1, m):
        np.matmul(dzp[i], xs[i].T, out=tmp)
        dw += tmp
    return dw
