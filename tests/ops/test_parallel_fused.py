"""The engine's fast paths against their plain twins: conv with a fused activation vs conv
followed by the activation op, the batch split over worker threads vs one serial pass, and
skipping the first layer's input gradient vs computing it."""

from __future__ import annotations

import numpy as np
import pytest

from cnncli.engine import build_model
from cnncli.ops import _threads, activations, conv, pool
from cnncli.ops import reference as ref
from cnncli.ops.options import EngineOptions


@pytest.fixture(params=[1, 2, 3], ids=lambda n: f"{n}-workers")
def workers(request, monkeypatch):
    """conftest's ``workers`` with 3 workers too (uneven splits)."""
    monkeypatch.setattr(_threads, "MIN_PARALLEL_WORK", 0)
    _threads.set_workers(request.param)
    yield request.param
    _threads.set_workers(None)


CASES = [  # (x shape, w shape, stride, padding): wide path, direct path, strided path
    ((5, 3, 9, 8), (4, 3, 3, 3), 1, 1),
    ((6, 4, 7, 7), (12, 4, 3, 3), 1, 1),
    ((7, 2, 9, 9), (10, 2, 3, 2), 2, 0),
    ((4, 3, 5, 5), (9, 3, 5, 5), 1, 0),  # dense-shaped
    ((3, 16, 12, 12), (20, 16, 3, 3), 1, 1),  # wide im2col + GEMM path
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("act", [None, "relu", "tanh"])
def test_fused_conv_matches_reference(workers, case, act):
    xs, ws, s, p = case
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    b = rng.standard_normal(ws[0])
    y, cache = conv.conv2d_forward(x, w, b, s, p, act=act)
    z = ref.conv2d(x, w, b, (s, s), (p, p))
    want = z if act is None else activations.forward(act, z)[0]
    np.testing.assert_allclose(y, want, rtol=0, atol=1e-10)
    dy = rng.standard_normal(y.shape)
    dz = dy if act is None else activations.backward(
        act, dy, activations.ActivationCache(None, want, 0.0))
    dx, dw, db = conv.conv2d_backward(dy, cache, act=None if act is None else (act, y))
    rdx, rdw, rdb = ref.conv2d_backward(dz, x, w, (s, s), (p, p))
    np.testing.assert_allclose(dx, rdx, rtol=0, atol=1e-10)
    np.testing.assert_allclose(dw, rdw, rtol=0, atol=1e-10)
    np.testing.assert_allclose(db, rdb, rtol=0, atol=1e-10)
    none, dw2, db2 = conv.conv2d_backward(dy, cache, need_dx=False,
                                          act=None if act is None else (act, y))
    assert none is None
    np.testing.assert_allclose(dw2, dw, rtol=0, atol=1e-12)
    np.testing.assert_allclose(db2, db, rtol=0, atol=1e-12)


def test_fused_conv_keeps_float32():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    w = rng.standard_normal((16, 3, 3, 3)).astype(np.float32)
    y, cache = conv.conv2d_forward(x, w, np.zeros(16, np.float32), 1, 1, act="relu")
    dx, dw, db = conv.conv2d_backward(np.ones_like(y), cache, act=("relu", y))
    assert {a.dtype for a in (y, dx, dw, db)} == {np.dtype(np.float32)}


@pytest.mark.parametrize("kind", ["max", "avg", "l2"])
def test_split_pooling_matches_serial(workers, kind):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((9, 3, 8, 8))
    y, cache = pool.pool2d_forward(x, kind, 2, 2)
    dy = rng.standard_normal(y.shape)
    dx = pool.pool2d_backward(dy, cache)
    _threads.set_workers(1)
    y1, cache1 = pool.pool2d_forward(x, kind, 2, 2)
    np.testing.assert_array_equal(y, y1)
    np.testing.assert_array_equal(dx, pool.pool2d_backward(dy, cache1))


def test_split_over_batch_is_deterministic_and_ordered():
    assert _threads.split(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert _threads.split(2, 4) == [(0, 1), (1, 2)]
    _threads.set_workers(3)
    try:
        out = _threads.over_batch(lambda lo, hi, p: (lo, hi, p), 7, work=1e12)
        assert out == [(0, 3, 0), (3, 5, 1), (5, 7, 2)]
        serial = _threads.over_batch(lambda lo, hi, p: (lo, hi, p), 7, work=1.0)
        assert serial == [(0, 7, 0)]
    finally:
        _threads.set_workers(None)


def test_model_without_input_grad_matches_full_backward(workers):
    """Training skips the first layer's dx; every parameter gradient stays the same."""
    spec = {"name": "t", "input": [10, 10, 3], "layers": [{"sequential": {"name": "f", "layers": [
        {"conv": {"name": "c1", "filters": 8, "kernel": 3, "padding": "same",
                  "activation": "relu"}},
        {"conv": {"name": "c2", "filters": 8, "kernel": 3, "activation": "tanh"}},
        {"pool": {"name": "p", "type": "max", "size": 2}}]}},
        "flatten", {"dense": {"name": "d", "units": 5}}]}
    model = build_model(spec, dtype=np.float64)
    x = np.random.default_rng(4).standard_normal((6, 3, 10, 10))
    y = model.forward(x, training=True)
    dy = np.random.default_rng(5).standard_normal(y.shape)
    dx = model.backward(dy)
    full = {k: v.copy() for k, v in model.grads.items()}
    assert dx.shape == x.shape
    model.forward(x, training=True)
    assert model.backward(dy, input_grad=False) is None
    assert full.keys() == model.grads.keys()
    for k, g in full.items():
        np.testing.assert_allclose(model.grads[k], g, rtol=0, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("act", ["relu", "tanh"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("bias", [True, False])
def test_act_grad_fused_into_rows_matches_separate_pass(workers, act, dtype, bias):
    """kern.nchw_to_rows_act (derivative + bias sum in the GEMM layout pass) against its
    twin: the separate activation-derivative pass followed by nchw_to_rows."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 16, 12, 11)).astype(dtype)
    w = rng.standard_normal((24, 16, 3, 3)).astype(dtype)
    b = rng.standard_normal(24).astype(dtype) if bias else None
    im2col = conv.ConvAlgo("im2col", "im2col", "im2col")
    y, cache = conv.conv2d_forward(x, w, b, 1, 1, act=act, algo=im2col)
    dy = rng.standard_normal(y.shape).astype(dtype)
    got = conv.conv2d_backward(dy, cache, act=(act, y))
    _, twin = conv.conv2d_forward(x, w, b, 1, 1, act=act, algo=im2col,
                                  options=EngineOptions(fuse_act_grad=False))
    want = conv.conv2d_backward(dy, twin, act=(act, y))
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for g, r in zip(got, want):
        if r is None:
            assert g is None
            continue
        assert g.dtype == dtype
        np.testing.assert_allclose(g, r, rtol=tol, atol=tol * np.abs(r).max())
    again = conv.conv2d_backward(dy, cache, act=(act, y))
    for g, a in zip(got, again):
        if g is not None:
            np.testing.assert_array_equal(g, a)  # deterministic for a fixed thread count
