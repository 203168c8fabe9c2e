"""Batch normalisation and LRN against the golden files."""

from __future__ import annotations

import numpy as np
import pytest

from cnncli.ops import norm


@pytest.mark.golden_family("batch_norm")
def test_batch_norm_golden(golden, check, check32):
    g = golden
    training = bool(g.int("training"))
    args = (g["gamma"], g["beta"], g["running_mean_before"], g["running_var_before"])
    hp = dict(training=training, momentum=g.float("momentum"), eps=g.float("eps"))
    rm_before, rv_before = args[2].copy(), args[3].copy()
    y, cache, rm, rv = norm.batchnorm_forward(g["x"], *args, **hp)
    check(y, g["y"], "y")
    check(cache.xhat, g["xhat"], "xhat")
    check(rm, g["running_mean_after"], "running_mean_after")
    check(rv, g["running_var_after"], "running_var_after")
    assert np.array_equal(args[2], rm_before) and np.array_equal(args[3], rv_before), (
        "the running statistics passed in must not be modified"
    )
    dx, dgamma, dbeta = norm.batchnorm_backward(g["dy"], cache)
    check(dx, g["dx"], "dx")
    check(dgamma, g["dgamma"], "dgamma")
    check(dbeta, g["dbeta"], "dbeta")

    f32 = [a.astype(np.float32) for a in (g["x"], *args)]
    y32, c32, rm32, rv32 = norm.batchnorm_forward(*f32, **hp)
    check32(y32, g["y"], "y")
    check32(rv32, g["running_var_after"], "running_var_after")
    grads32 = norm.batchnorm_backward(g["dy"].astype(np.float32), c32)
    for mine, name in zip(grads32, ("dx", "dgamma", "dbeta")):
        check32(mine, g[name], name)


@pytest.mark.golden_family("lrn")
def test_lrn_golden(golden, check, check32):
    g = golden
    hp = dict(
        size=g.int("size"),
        alpha=g.float("alpha"),
        beta=g.float("beta"),
        k=g.float("k"),
        alpha_over_size=bool(g.int("alpha_divided_by_size")),
    )
    y, cache = norm.lrn_forward(g["x"], **hp)
    check(y, g["y"], "y")
    check(cache.denom, g["denom_base"], "denom_base")
    assert cache.alpha_eff == pytest.approx(g.float("alpha_eff"), rel=1e-12)
    check(norm.lrn_backward(g["dy"], cache), g["dx"], "dx")

    y32, c32 = norm.lrn_forward(g["x"].astype(np.float32), **hp)
    check32(y32, g["y"], "y")
    check32(norm.lrn_backward(g["dy"].astype(np.float32), c32), g["dx"], "dx")
