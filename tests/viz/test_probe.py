"""The engine's taps (Model.taps) under the fast paths: a conv that runs fused with the
max pooling after it, and a batch split over worker threads."""

from __future__ import annotations

import numpy as np
import pytest

from cnncli.engine.model import build_model
from cnncli.ops import _threads
from cnncli.ops.options import EngineOptions
from cnncli.viz.probe import activations, class_gradients

SPEC = {"name": "t", "input": [12, 12, 16], "layers": [
    {"conv": {"name": "c1", "filters": 16, "kernel": 3, "padding": "same",
              "activation": "relu"}},
    {"pool": {"name": "p1", "type": "max", "size": 2}},
    {"residual": {"name": "r", "body": [
        {"conv": {"name": "c2", "filters": 16, "kernel": 3, "padding": "same",
                  "activation": "relu"}}]}},
    "flatten", {"dense": {"name": "d", "units": 3}}]}


def _reference(x, cls, path):
    """The same model with conv+pool fusion switched off."""
    model = build_model(SPEC, seed=3, options=EngineOptions(fuse_relu_maxpool=False))
    assert "c1" not in model.plan.fusions()
    return class_gradients(model, x, path, cls)


@pytest.mark.parametrize("path", ["c1", "p1", "r", "r.c2"])
def test_taps_through_a_fused_conv_and_pool(path):
    model = build_model(SPEC, seed=3)
    assert model.plan.fusions()["c1"] == ("p1",)  # c1 + p1 run as one op
    x = np.random.default_rng(0).normal(size=(2, 16, 12, 12)).astype(np.float32)
    a, g, dx, logits = class_gradients(model, x, path, 1)
    ra, rg, rdx, rlogits = _reference(x, 1, path)
    np.testing.assert_allclose(a, ra, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g, rg, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(dx, rdx, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(logits, rlogits, rtol=1e-4, atol=1e-5)
    assert a.shape == (2, *reversed(model.network.rows()[0].out_shape)) or path != "c1"
    assert model.taps == frozenset()  # taps are removed afterwards


def test_taps_with_a_batch_split_over_threads():
    x = np.random.default_rng(1).normal(size=(40, 16, 12, 12)).astype(np.float32)
    model = build_model(SPEC, seed=3)
    one, _ = activations(model, x, "r")
    _threads.set_workers(2)
    try:
        two, out = activations(model, x, "r")
        plain = model.forward(x)  # without taps: split over the two threads
    finally:
        _threads.set_workers(None)
    np.testing.assert_allclose(two, one, rtol=1e-5, atol=1e-6)
    assert two.shape == (40, 16, 6, 6)
    np.testing.assert_allclose(model.forward(x, logits=True), out, rtol=1e-5, atol=1e-5)
    assert plain.shape == (40, 3)


@pytest.mark.parametrize("arch,inp,layer", [("cifar_cnn", None, "features.pool2"),
                                            ("googlenet", (64, 64, 3), "inception5b")])
def test_class_maps_of_shipped_networks(arch, inp, layer):
    """The default layer is the last report row with maps; all three methods run on a
    network with batch norm, parallel blocks, or fused conv+pool passes."""
    from pathlib import Path

    from cnncli.viz.cam import class_map
    from cnncli.viz.probe import spatial_node

    spec = Path(__file__).resolve().parents[2] / "architectures" / f"{arch}.yaml"
    model = build_model(spec, input_shape=inp)
    h, w, c = model.network.input
    x = np.random.default_rng(0).normal(size=(1, c, h, w)).astype(np.float32)
    node = spatial_node(model.network, None)
    assert node.path == layer
    classes = [f"c{i}" for i in range(model.network.output[0])]
    for method in ("gradcam", "hirescam", "saliency"):
        cm = class_map(model, x, classes, node, method, cls="c3")
        assert cm.cls == 3 and cm.heat.shape == (h, w)
        assert np.isfinite(cm.map).all() and (cm.map >= 0).all()
        assert cm.map.shape == ((h, w) if method == "saliency" else node.out_shape[:2])
