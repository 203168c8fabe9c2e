"""Winograd F(2x2, 3x3) (the float32 fast path of 3x3 stride-1 pad-1 convs: forward and
input gradient) against its twins: the reference conv in float64, and the im2col path
(GEMM + col2im for the input gradient) in float32."""

from __future__ import annotations

import numpy as np
import pytest

from cnncli.ops import conv
from cnncli.ops import reference as ref
from cnncli.ops.conv import ConvAlgo
from cnncli.ops.conv.winograd import winograd_weights_dx
from cnncli.ops.options import EngineOptions

WINO = ConvAlgo("winograd", "winograd", "winograd")
IM2COL = ConvAlgo("im2col", "im2col", "im2col")

SHAPES = [(3, 16, 20, 8, 8), (2, 17, 16, 7, 9), (5, 16, 24, 5, 4), (1, 18, 16, 1, 1),
          (2, 16, 16, 2, 3)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("chunk", [1 << 19, 64], ids=["images", "bands"])
def test_winograd_conv_float64_matches_reference(shape, relu, chunk):
    """winograd_conv runs float64 too (conv2d keeps im2col there): exact to rounding.
    A tiny chunk size cuts images into bands of tile rows."""
    n, c, k, h, w = shape
    rng = np.random.default_rng(4)
    x, wt, b = (rng.standard_normal((n, c, h, w)), rng.standard_normal((k, c, 3, 3)),
                rng.standard_normal(k))
    y = np.full((n + 2, k, h, w), np.nan)
    conv.winograd_conv(x.reshape(-1), conv.winograd_weights(wt), b, relu, y, 1, n,
                       (c * h * w, h * w, w), 0, chunk_bytes=chunk)
    want = ref.conv2d(x, wt, b, (1, 1), (1, 1))
    if relu:
        want = np.maximum(want, 0)
    np.testing.assert_allclose(y[1:n + 1], want, rtol=0, atol=1e-10)
    assert np.isnan(y[0]).all() and np.isnan(y[n + 1]).all()  # nothing else written


@pytest.mark.parametrize("shape", SHAPES[:3] + [(9, 32, 32, 16, 16)])
@pytest.mark.parametrize("act", [None, "relu", "tanh"])
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_float32_winograd_matches_im2col(workers, shape, act, bias):
    n, c, k, h, w = shape
    rng = np.random.default_rng(5)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((k, c, 3, 3)).astype(np.float32)
    b = rng.standard_normal(k).astype(np.float32) if bias else None
    y, cache = conv.conv2d_forward(x, wt, b, 1, 1, act=act, algo=WINO)
    assert y.dtype == np.float32
    again, _ = conv.conv2d_forward(x, wt, b, 1, 1, act=act, algo=WINO)
    np.testing.assert_array_equal(y, again)  # deterministic
    want, _ = conv.conv2d_forward(x, wt, b, 1, 1, act=act, algo=IM2COL)
    exact = ref.conv2d(x.astype(np.float64), wt.astype(np.float64),
                       None if b is None else b.astype(np.float64), (1, 1), (1, 1))
    scale = np.abs(exact).max()  # of the pre-activation: the sums carry the rounding
    np.testing.assert_allclose(y, want, rtol=0, atol=1e-5 * scale)
    exact = {"relu": np.maximum(exact, 0), "tanh": np.tanh(exact)}.get(act, exact)
    np.testing.assert_allclose(y, exact, rtol=0, atol=1e-5 * scale)


def _fwd_path(xs, ws, s, p, d, g, dtype=np.float32, **opts):
    geo = conv.geometry(xs, ws, s, p, d, g)
    return conv.choose(geo, ws[1] * g, ws[0], dtype, EngineOptions(**opts)).fwd


def test_winograd_only_where_it_pays():
    assert _fwd_path((16, 16), (16, 16, 3, 3), 1, 1, 1, 1) == "winograd"
    assert _fwd_path((16, 16), (16, 16, 3, 3), 1, 1, 1, 1, dtype=np.float64) != "winograd"
    assert _fwd_path((16, 16), (16, 3, 3, 3), 1, 1, 1, 1) != "winograd"  # too few channels
    assert _fwd_path((16, 16), (8, 16, 3, 3), 1, 1, 1, 1) != "winograd"
    assert _fwd_path((2, 2), (64, 64, 3, 3), 1, 1, 1, 1) != "winograd"  # one tile per image
    assert _fwd_path((16, 16), (16, 16, 3, 3), 1, 1, 1, 1, winograd=False) != "winograd"
    for args in [((16, 16, 3, 3), 2, 1, 1, 1), ((16, 16, 3, 3), 1, 0, 1, 1),
                 ((16, 16, 3, 3), 1, 1, 2, 1), ((16, 4, 3, 3), 1, 1, 1, 4),
                 ((16, 16, 5, 5), 1, 1, 1, 1)]:
        assert _fwd_path((16, 16), *args) != "winograd"


@pytest.mark.parametrize("shape", SHAPES[:3] + [(9, 32, 32, 16, 16)])
@pytest.mark.parametrize("act", [None, "relu", "tanh"])
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_float32_winograd_input_grad_matches_im2col(workers, shape, act, bias):
    """dx as a Winograd conv of dz with the flipped, transposed weights (WINOGRAD_DX)
    against GEMM + col2im; dw and db do not change."""
    n, c, k, h, w = shape
    rng = np.random.default_rng(6)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((k, c, 3, 3)).astype(np.float32)
    b = rng.standard_normal(k).astype(np.float32) if bias else None
    dx_wino = ConvAlgo("im2col", "winograd", "im2col")
    y, cache = conv.conv2d_forward(x, wt, b, 1, 1, act=act, algo=dx_wino)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    fused = None if act is None else (act, y)
    got = conv.conv2d_backward(dy, cache, act=fused)
    again = conv.conv2d_backward(dy, cache, act=fused)
    for g, a in zip(got, again):
        if g is not None:
            np.testing.assert_array_equal(g, a)  # deterministic
    _, cache = conv.conv2d_forward(x, wt, b, 1, 1, act=act, algo=IM2COL)
    want = conv.conv2d_backward(dy, cache, act=fused)
    for g, r in zip(got, want):
        if r is None:
            assert g is None
            continue
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, r, rtol=0, atol=1e-5 * np.abs(r).max())
    dz = dy.astype(np.float64)
    if act == "relu":
        dz = dz * (y > 0)
    elif act == "tanh":
        dz = dz * (1 - y.astype(np.float64) ** 2)
    rdx, _, _ = ref.conv2d_backward(dz, x.astype(np.float64), wt.astype(np.float64),
                                    (1, 1), (1, 1))
    np.testing.assert_allclose(got[0], rdx, rtol=0, atol=1e-5 * np.abs(rdx).max())


def test_conv_transpose_float32_winograd_matches_im2col(workers):
    """conv_transpose2d's forward is conv2d's input gradient: the same Winograd path."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 16, 12, 14)).astype(np.float32)
    wt = rng.standard_normal((16, 20, 3, 3)).astype(np.float32)
    b = rng.standard_normal(20).astype(np.float32)
    y, cache = conv.conv_transpose2d_forward(x, wt, b, 1, 1)
    assert cache.algo.dx == "winograd" and cache.algo.fwd == "winograd"
    dy = rng.standard_normal(y.shape).astype(np.float32)
    grads = conv.conv_transpose2d_backward(dy, cache)
    twin = EngineOptions(winograd=False, winograd_dx=False, winograd_dw=False)
    want, cache = conv.conv_transpose2d_forward(x, wt, b, 1, 1, options=twin)
    np.testing.assert_allclose(y, want, rtol=0, atol=1e-5 * np.abs(want).max())
    for g, r in zip(grads, conv.conv_transpose2d_backward(dy, cache)):
        np.testing.assert_allclose(g, r, rtol=0, atol=1e-5 * np.abs(r).max())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tiles", [128, 3, 1], ids=["images", "bands", "rows"])
def test_winograd_weight_grad_float64_matches_reference(shape, tiles):
    """winograd_weight_grad (dW in the Winograd domain) in float64: exact to rounding,
    whole images per chunk or bands of tile rows, odd sizes included; db is dz's sum."""
    n, c, k, h, w = shape
    rng = np.random.default_rng(8)
    x, wt, dz = (rng.standard_normal((n, c, h, w)), rng.standard_normal((k, c, 3, 3)),
                 rng.standard_normal((n, k, h, w)))
    db = np.zeros(k)
    dw = conv.winograd_weight_grad(x, dz, 0, db, tiles_per_chunk=tiles)
    _, want, _ = ref.conv2d_backward(dz, x, wt, (1, 1), (1, 1))
    np.testing.assert_allclose(dw, want, rtol=0, atol=1e-10 * np.abs(want).max())
    np.testing.assert_allclose(db, dz.sum(axis=(0, 2, 3)), rtol=0, atol=1e-10)


@pytest.mark.parametrize("shape", SHAPES[:3] + [(9, 32, 32, 16, 16)])
@pytest.mark.parametrize("act", [None, "relu", "tanh"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("wino_dx", [True, False, "not needed"])
def test_conv2d_float32_winograd_weight_grad_matches_im2col(workers, shape, act, bias,
                                                            wino_dx):
    """dW in the Winograd domain against im2col + GEMM, with and without the Winograd
    input gradient, and without any input gradient (a network's first layer: db was once
    left at zero there); deterministic; dx and db agree too."""
    need_dx = wino_dx != "not needed"
    algo = ConvAlgo("im2col", "winograd" if wino_dx is True else "im2col", "winograd")
    opts = EngineOptions(winograd_dw_tiles=16)  # several chunks per part
    n, c, k, h, w = shape
    rng = np.random.default_rng(9)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((k, c, 3, 3)).astype(np.float32)
    b = rng.standard_normal(k).astype(np.float32) if bias else None
    y, cache = conv.conv2d_forward(x, wt, b, 1, 1, act=act, algo=algo, options=opts)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    fused = None if act is None else (act, y)
    got = conv.conv2d_backward(dy, cache, act=fused, need_dx=need_dx)
    for g, a in zip(got, conv.conv2d_backward(dy, cache, act=fused, need_dx=need_dx)):
        if g is not None:
            np.testing.assert_array_equal(g, a)  # deterministic
    _, cache = conv.conv2d_forward(x, wt, b, 1, 1, act=act, algo=IM2COL)
    want = conv.conv2d_backward(dy, cache, act=fused, need_dx=need_dx)
    for g, r in zip(got, want):
        if r is None:
            assert g is None
            continue
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, r, rtol=0, atol=1e-5 * np.abs(r).max())
    dz = dy.astype(np.float64)
    if act == "relu":
        dz = dz * (y > 0)
    elif act == "tanh":
        dz = dz * (1 - y.astype(np.float64) ** 2)
    _, rdw, _ = ref.conv2d_backward(dz, x.astype(np.float64), wt.astype(np.float64),
                                    (1, 1), (1, 1))
    np.testing.assert_allclose(got[1], rdw, rtol=0, atol=1e-5 * np.abs(rdw).max())


def test_winograd_weight_transforms_match_their_definition():
    """U = G w G^T per (k, c), by one GEMM; the input gradient's weights are those of the
    flipped, channel-swapped filters; dW = G^T dU G inverts the domain map."""
    from cnncli.ops.conv.winograd import _G, weights_from_domain

    rng = np.random.default_rng(10)
    wt = rng.standard_normal((5, 3, 3, 3))
    u = conv.winograd_weights(wt)
    want = np.einsum("au,kcuv,bv->abkc", _G, wt, _G).reshape(16, 5, 3)
    np.testing.assert_allclose(u, want, rtol=0, atol=1e-12)
    flipped = np.ascontiguousarray(wt.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
    np.testing.assert_allclose(winograd_weights_dx(wt), conv.winograd_weights(flipped),
                               rtol=0, atol=1e-12)
    du = rng.standard_normal((16, 3, 5))  # dU^T [16, C, K]
    d4 = du.reshape(4, 4, 3, 5)
    np.testing.assert_allclose(weights_from_domain(du),
                               np.einsum("au,abck,bv->kcuv", _G, d4, _G), rtol=0, atol=1e-12)
