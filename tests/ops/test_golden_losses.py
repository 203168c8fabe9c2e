"""Losses and dropout against the golden files."""

from __future__ import annotations

import numpy as np
import pytest

from cnncli.ops import dropout, losses


@pytest.mark.golden_family("softmax_cross_entropy")
def test_softmax_cross_entropy_golden(golden, check, check32):
    g = golden
    loss, dlogits, probs = losses.softmax_cross_entropy(g["logits"], g["labels"])
    assert isinstance(loss, float)
    assert loss == pytest.approx(float(g["loss"]), rel=0, abs=1e-8)
    check(dlogits, g["dlogits"], "dlogits")
    check(probs, g["probs"], "probs")

    loss32, d32, p32 = losses.softmax_cross_entropy(g["logits"].astype(np.float32), g["labels"])
    assert loss32 == pytest.approx(float(g["loss"]), rel=1e-5, abs=1e-5)
    check32(d32, g["dlogits"], "dlogits")
    check32(p32, g["probs"], "probs")


@pytest.mark.golden_family("mse")
def test_mse_golden(golden, check, check32):
    g = golden
    loss, dpred = losses.mse(g["pred"], g["target"])
    assert loss == pytest.approx(float(g["loss"]), rel=0, abs=1e-8)
    check(dpred, g["dpred"], "dpred")
    check(-dpred, g["dtarget"], "dtarget")

    loss32, d32 = losses.mse(g["pred"].astype(np.float32), g["target"].astype(np.float32))
    assert loss32 == pytest.approx(float(g["loss"]), rel=1e-5)
    check32(d32, g["dpred"], "dpred")


@pytest.mark.golden_family("dropout")
def test_dropout_golden(golden, check, check32):
    g = golden
    p = g.float("p")
    y, cache = dropout.dropout_forward(g["x"], p, None, True, mask=g["mask"])
    check(y, g["y"], "y")
    check(dropout.dropout_backward(g["dy"], cache), g["dx"], "dx")
    y_eval, c_eval = dropout.dropout_forward(g["x"], p, None, False)
    assert y_eval is g["x"], "eval-mode dropout is the identity (no copy)"
    assert dropout.dropout_backward(g["dy"], c_eval) is g["dy"]

    y32, c32 = dropout.dropout_forward(g["x"].astype(np.float32), p, None, True, mask=g["mask"])
    check32(y32, g["y"], "y")
    check32(dropout.dropout_backward(g["dy"].astype(np.float32), c32), g["dx"], "dx")
