"""conv2d + ReLU + 2x2 max pooling as one op (conv2d_relu_maxpool2_*) against the same
three ops run one after the other: bit-identical outputs and gradients, since the fused
op computes the same Winograd values and picks the same winners."""

from __future__ import annotations

import numpy as np
import pytest

from cnncli.errors import ShapeMismatchError
from cnncli.ops import conv, pool
from cnncli.ops.options import EngineOptions

#: Winograd chunks cut into bands of tile rows too
BANDS = EngineOptions(winograd_chunk_bytes=1 << 14)


def _separate(x, w, b, dy, need_dx=True):
    z, ccache = conv.conv2d_forward(x, w, b, 1, 1, act="relu", options=BANDS)
    y, pcache = pool.pool2d_forward(z, "max", 2, 2)
    dz = pool.pool2d_backward(dy, pcache)
    return y, conv.conv2d_backward(dz, ccache, act=("relu", z), need_dx=need_dx)


SHAPES = [(3, 16, 20, 16, 16), (5, 32, 16, 16, 20), (2, 16, 16, 10, 42), (9, 32, 32, 32, 32)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("need_dx", [True, False])
def test_fused_matches_conv_relu_then_pool(workers, shape, bias, need_dx):
    n, c, k, h, w = shape
    rng = np.random.default_rng(11)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((k, c, 3, 3)).astype(np.float32)
    b = rng.standard_normal(k).astype(np.float32) if bias else None
    x[0, :, :4, :4] = 0  # whole windows of ReLU zeros: ties, no gradient
    assert conv.fuses_relu_maxpool2((c, h, w), wt.shape, 1, 1, 1, 1, np.float32)
    y, cache = conv.conv2d_relu_maxpool2_forward(x, wt, b, options=BANDS)
    assert y.shape == (n, k, h // 2, w // 2) and y.dtype == np.float32
    dy = rng.standard_normal(y.shape).astype(np.float32)
    got = conv.conv2d_relu_maxpool2_backward(dy, cache, need_dx=need_dx)
    want_y, want = _separate(x, wt, b, dy, need_dx)
    np.testing.assert_array_equal(y, want_y)
    for g, r in zip(got, want):
        if r is None:
            assert g is None
        else:
            assert g.dtype == np.float32
            np.testing.assert_array_equal(g, r)
    inference, _ = conv.conv2d_relu_maxpool2_forward(x, wt, b, argmax=False, options=BANDS)
    np.testing.assert_array_equal(inference, y)


def test_only_where_tiles_are_windows():
    f32 = np.float32
    assert conv.fuses_relu_maxpool2((16, 16, 16), (16, 16, 3, 3), 1, 1, 1, 1, f32)
    assert not conv.fuses_relu_maxpool2((16, 15, 16), (16, 16, 3, 3), 1, 1, 1, 1, f32)  # odd
    assert not conv.fuses_relu_maxpool2((16, 16, 16), (16, 16, 3, 3), 1, 1, 1, 1, np.float64)
    assert not conv.fuses_relu_maxpool2((3, 16, 16), (16, 3, 3, 3), 1, 1, 1, 1, f32)
    assert not conv.fuses_relu_maxpool2((16, 16, 16), (16, 16, 3, 3), 2, 1, 1, 1, f32)
    # small maps take the per-image batched GEMMs, not Winograd
    assert not conv.fuses_relu_maxpool2((16, 8, 8), (16, 16, 3, 3), 1, 1, 1, 1, f32)
    off = EngineOptions(fuse_relu_maxpool=False)
    assert not conv.fuses_relu_maxpool2((16, 16, 16), (16, 16, 3, 3), 1, 1, 1, 1, f32, off)
    no_dx = EngineOptions(winograd_dx=False)
    assert not conv.fuses_relu_maxpool2((16, 16, 16), (16, 16, 3, 3), 1, 1, 1, 1, f32, no_dx)


def test_misuse_is_a_clear_error():
    x = np.zeros((1, 16, 15, 16), dtype=np.float32)
    w = np.zeros((16, 16, 3, 3), dtype=np.float32)
    with pytest.raises(ShapeMismatchError, match="even size"):
        conv.conv2d_relu_maxpool2_forward(x, w, None)
    x = np.zeros((1, 16, 16, 16), dtype=np.float32)
    y, cache = conv.conv2d_relu_maxpool2_forward(x, w, None, argmax=False)
    with pytest.raises(ShapeMismatchError, match="inference"):
        conv.conv2d_relu_maxpool2_backward(np.zeros_like(y), cache)
    with pytest.raises(ShapeMismatchError, match="Winograd path"):
        conv.conv2d_relu_maxpool2_forward(x, w, None, options=EngineOptions(winograd_dw=False))
