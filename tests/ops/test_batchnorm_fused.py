"""Batchnorm's fused activation and its split statistics against the plain op: ReLU/ReLU6
in the output pass (mask recomputed from x in the backward pass) equal batchnorm followed
by the activation, and a batch run in parts that gather their sums gives the statistics,
gradients and running estimates of the whole batch."""

from __future__ import annotations

import numpy as np
import pytest

from cnncli.errors import ShapeMismatchError
from cnncli.ops import _norm_kernels as kern
from cnncli.ops import activations, norm


def _params(rng, c):
    return (rng.standard_normal(c), rng.standard_normal(c), rng.standard_normal(c),
            rng.random(c) + 0.5)


@pytest.mark.parametrize("act", ["relu", "relu6"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(5, 4, 3, 6), (9, 7)])
def test_fused_activation_equals_batchnorm_then_activation(act, training, shape):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape) * 3 + 1
    g, b, rm, rv = _params(rng, shape[1])
    g *= 4  # push values past 6 for relu6
    y, cache, nm, nv = norm.batchnorm_forward(x, g, b, rm, rv, training, 0.1, 1e-5, act=act)
    z, zc, zm, zv = norm.batchnorm_forward(x, g, b, rm, rv, training, 0.1, 1e-5)
    want, ac = activations.forward(act, z)
    np.testing.assert_allclose(y, want, rtol=0, atol=1e-12)
    assert (y == 0).any() and (act == "relu" or (y == 6).any())
    np.testing.assert_allclose(nm, zm, rtol=0, atol=1e-14)
    np.testing.assert_allclose(nv, zv, rtol=0, atol=1e-14)
    dy = rng.standard_normal(shape)
    got = norm.batchnorm_backward(dy, cache)
    ref = norm.batchnorm_backward(activations.backward(act, dy, ac), zc)
    for a, r in zip(got, ref):
        np.testing.assert_allclose(a, r, rtol=0, atol=1e-11)


def test_parts_that_gather_give_the_whole_batch():
    """Three parts of unequal size, each seeing only its images, get every part's sums
    from ``gather`` (computed here beforehand, as the engine's rendezvous hands them)."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((11, 3, 4, 5)) * 5 + 100  # large mean: shifted sums matter
    g, b, rm, rv = _params(rng, 3)
    dy = rng.standard_normal(x.shape)
    cuts = [(0, 2), (2, 7), (7, 11)]
    whole_y, wc, wm, wv = norm.batchnorm_forward(x, g, b, rm, rv, True, 0.2, 1e-5, act="relu")
    wdx, wdg, wdb = norm.batchnorm_backward(dy, wc)

    # forward: every part's stats first (what the barrier guarantees), then the results
    parts = [x[lo:hi] for lo, hi in cuts]
    stats = []
    for p in parts:
        st = np.empty((3, 3))
        kern.bn_partial_stats(p.reshape(p.shape[0], 3, -1), st)
        stats.append((p.shape[0] * 20, st))
    outs = [norm.batchnorm_forward(p, g, b, rm, rv, True, 0.2, 1e-5, act="relu",
                                   gather=lambda key, value: stats) for p in parts]
    np.testing.assert_allclose(np.concatenate([o[0] for o in outs]), whole_y, rtol=0,
                               atol=1e-12)
    for o in outs:
        np.testing.assert_allclose(o[2], wm, rtol=0, atol=1e-12)
        np.testing.assert_allclose(o[3], wv, rtol=0, atol=1e-12)
    sums = []
    for (lo, hi), o in zip(cuts, outs):
        c = o[1]
        s = np.zeros((3, 2))
        kern.bn_backward_sums(dy[lo:hi].reshape(hi - lo, 3, -1), c.x.reshape(hi - lo, 3, -1),
                              c.mean, c.inv_std, c.scale, c.shift, 1, s)
        sums.append(s)
    grads = [norm.batchnorm_backward(dy[lo:hi], o[1], gather=lambda key, value: sums)
             for (lo, hi), o in zip(cuts, outs)]
    np.testing.assert_allclose(np.concatenate([gr[0] for gr in grads]), wdx, rtol=0,
                               atol=1e-12)
    # dgamma, dbeta: each part's share; the engine adds them
    np.testing.assert_allclose(sum(gr[1] for gr in grads), wdg, rtol=0, atol=1e-11)
    np.testing.assert_allclose(sum(gr[2] for gr in grads), wdb, rtol=0, atol=1e-11)


def test_float32_statistics_stay_accurate_far_from_zero():
    """Shifted float64 sums: a float32 batch with mean 1e4 and spread 1 normalises to
    unit variance (a naive float32 sum of squares would lose every digit)."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((32, 2, 8, 8)) + 1e4).astype(np.float32)
    one, zero = np.ones(2, np.float32), np.zeros(2, np.float32)
    y, *_ = norm.batchnorm_forward(x, one, zero, zero, one, True, 0.1, 1e-5)
    assert abs(float(y.std()) - 1) < 2e-3 and abs(float(y.mean())) < 2e-3


def test_bad_activation_is_refused():
    x = np.zeros((2, 3))
    with pytest.raises(ShapeMismatchError, match="act must be one of"):
        norm.batchnorm_forward(x, np.ones(3), np.zeros(3), np.zeros(3), np.ones(3), True,
                               0.1, 1e-5, act="tanh")
