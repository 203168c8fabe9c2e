"""The engine runs a conv + ReLU and the 2x2 max pooling after it as one op where the conv
takes the float32 Winograd path (a ConvPoolStep of the plan): results must be bit-identical to
running the layers one by one, in training and inference, split over threads or not,
inside blocks too, and the shapes traced must stay the report's."""

from __future__ import annotations

import numpy as np
import pytest

from cnncli.engine import build_model
from cnncli.ops import _threads
from cnncli.ops.options import EngineOptions

SPEC = {"name": "t", "input": [16, 16, 3], "layers": [
    {"conv": {"name": "c1", "filters": 16, "kernel": 3, "padding": "same",
              "activation": "relu"}},
    {"sequential": {"name": "f", "layers": [
        {"conv": {"name": "c2", "filters": 16, "kernel": 3, "padding": "same",
                  "activation": "relu"}},
        {"pool": {"name": "p", "type": "max", "size": 2}}]}},
    {"residual": {"name": "r", "body": [
        {"conv": {"name": "c3", "filters": 16, "kernel": 3, "padding": "same",
                  "activation": "relu"}},
        {"pool": {"name": "q", "type": "avg", "size": 2}},  # not max: not fused
        {"deconv": {"name": "u", "filters": 16, "kernel": 2, "stride": 2}}]}},
    {"conv": {"name": "c4", "filters": 16, "kernel": 3, "padding": "same",
              "activation": "tanh"}},  # not ReLU: not fused
    {"pool": {"name": "s", "type": "max", "size": 2}},
    "flatten", {"dense": {"name": "d", "units": 5, "activation": "softmax"}}]}


def test_pairs_found_only_where_allowed():
    model = build_model(SPEC, dtype=np.float32)
    assert model.plan.fusions() == {"f.c2": ("f.p",)}
    assert build_model(SPEC, dtype=np.float64).plan.fusions() == {}
    off = EngineOptions(fuse_relu_maxpool=False)
    assert build_model(SPEC, dtype=np.float32, options=off).plan.fusions() == {}


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("training", [True, False])
def test_fused_network_is_bit_identical(monkeypatch, workers, training):
    monkeypatch.setattr(_threads, "MIN_PARALLEL_WORK", 0)
    _threads.set_workers(workers)
    try:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((20, 3, 16, 16)).astype(np.float32)
        dy = rng.standard_normal((20, 5)).astype(np.float32)
        runs = []
        for fuse in (True, False):
            model = build_model(SPEC, seed=4, options=EngineOptions(fuse_relu_maxpool=fuse))
            assert bool(model.plan.fusions()) == fuse
            y = model.forward(x, training=training, logits=True)
            dx = model.backward(dy) if training else None
            runs.append((y, dx, {k: g.copy() for k, g in model.grads.items()}))
        (y, dx, grads), (y1, dx1, grads1) = runs
        np.testing.assert_array_equal(y, y1)
        if training:
            np.testing.assert_array_equal(dx, dx1)
            assert grads.keys() == grads1.keys() and len(grads) == 12
            for k in grads:
                np.testing.assert_array_equal(grads[k], grads1[k], err_msg=k)
    finally:
        _threads.set_workers(None)


def test_trace_and_report_agree_with_fusion():
    model = build_model(SPEC)
    model.trace = {}
    model.forward(np.zeros((2, 3, 16, 16), dtype=np.float32))
    for node in (n for top in model.network.nodes for n in top.walk()):
        if node.path in ("f.c2", "f.p"):
            h, w, c = node.out_shape
            assert model.trace[node.path] == (2, c, h, w)


def test_evaluation_backward_through_a_fused_pool():
    """A backward pass after an evaluation forward (saliency, Grad-CAM) runs through the
    fused conv+ReLU+pool and equals the unfused layers'."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 3, 16, 16)).astype(np.float32)
    dy = rng.standard_normal((3, 5)).astype(np.float32)
    got = []
    for fuse in (True, False):
        model = build_model(SPEC, seed=4, options=EngineOptions(fuse_relu_maxpool=fuse))
        model.forward(x, training=False, logits=True)
        got.append(model.backward(dy))
    np.testing.assert_array_equal(got[0], got[1])
