"""Every registered layer type, table-driven: shapes, parameter counts and gradients.

For each case the declared output shape (the shape calculator) must equal the engine's
output, the declared parameter count must equal the size of the initialised arrays, and
backward must match centred finite differences in float64. A layer type registered
without a case here fails the suite.
"""

from __future__ import annotations

from math import prod

import numpy as np
import pytest

from cnncli.engine import build_model
from cnncli.engine.gradcheck import gradcheck
from cnncli.layers.registry import layer_types
from cnncli.shapes import shapes

# type -> list of (layers, input HxWxC); several cases where parameters change the maths.
CASES: dict[str, list[tuple[list, list[int]]]] = {
    "conv": [
        ([{"conv": {"filters": 3, "kernel": 3}}], [6, 6, 2]),
        ([{"conv": {"filters": 4, "kernel": [3, 2], "stride": 2, "padding": 1}}], [7, 6, 2]),
        ([{"conv": {"filters": 4, "kernel": 3, "dilation": 2, "padding": "same"}}], [7, 7, 2]),
        ([{"conv": {"filters": 4, "kernel": 3, "groups": 2, "padding": "full",
                    "activation": "relu"}}], [5, 5, 4]),
        ([{"conv": {"filters": 6, "kernel": 3, "groups": 3, "bias": False}}], [5, 5, 3]),
    ],
    "deconv": [
        ([{"deconv": {"filters": 2, "kernel": 3, "stride": 2, "padding": 1,
                      "output_padding": 1}}], [3, 3, 3]),
        ([{"deconv": {"filters": 4, "kernel": 2, "groups": 2, "activation": "tanh"}}], [3, 4, 2]),
    ],
    "pool": [
        ([{"pool": {"type": "max", "size": 2}}], [6, 6, 2]),
        ([{"pool": {"type": "avg", "size": 3, "stride": 2, "ceil": True}}], [6, 6, 2]),
        ([{"pool": {"type": "l2", "size": 2}}], [4, 6, 2]),
        ([{"pool": {"type": "max", "size": 3, "stride": 2, "padding": 1}}], [5, 5, 2]),
        ([{"pool": {"type": "max", "size": 2, "over": "depth"}}], [3, 3, 6]),
        ([{"pool": {"type": "avg", "size": 3, "stride": 1, "over": "depth"}}], [3, 3, 5]),
    ],
    "global_pool": [([{"global_pool": {"type": "avg"}}], [3, 4, 3]),
                    ([{"global_pool": {"type": "max"}}], [3, 3, 2])],
    "flatten": [(["flatten"], [2, 3, 4])],
    "dense": [([{"dense": {"units": 5}}], [1, 1, 7]),
              ([{"dense": {"units": 3, "activation": "sigmoid", "bias": False}}], [2, 2, 2])],
    "dropout": [([{"dropout": {"rate": 0.3}}], [3, 3, 2])],
    "batchnorm": [([{"batchnorm": {}}], [3, 3, 3]),
                  (["flatten", {"batchnorm": {"eps": 1e-3}}], [2, 2, 2])],
    "lrn": [([{"lrn": {"size": 3, "alpha": 0.5, "k": 1.0}}], [3, 3, 5]),
            ([{"lrn": {"convention": "torch", "alpha": 0.5}}], [2, 2, 6])],
    "relu": [(["relu"], [3, 3, 2])],
    "relu6": [([{"conv": {"filters": 2, "kernel": 1}}, "relu6"], [3, 3, 2])],
    "leaky_relu": [([{"leaky_relu": {"slope": 0.2}}], [3, 3, 2])],
    "sigmoid": [(["sigmoid"], [3, 3, 2])],
    "tanh": [(["tanh"], [3, 3, 2])],
    "elu": [([{"elu": {"alpha": 0.7}}], [3, 3, 2])],
    "softmax": [(["flatten", "softmax"], [1, 2, 5]), (["softmax"], [2, 2, 4])],
    "residual": [
        ([{"residual": {"body": [{"conv": {"filters": 2, "kernel": 3, "padding": 1}}],
                        "scale": 0.5}}], [4, 4, 2]),
        ([{"residual": {"body": [{"conv": {"filters": 3, "kernel": 3, "stride": 2,
                                           "padding": 1}}],
                        "shortcut": [{"conv": {"filters": 3, "kernel": 1, "stride": 2}}],
                        "activation": "none"}}], [5, 5, 2]),
    ],
    "parallel": [
        ([{"parallel": {"branches": [[], [{"conv": {"filters": 2, "kernel": 1}}],
                                     [{"pool": {"size": 3, "stride": 1, "padding": 1}}]]}}],
         [4, 4, 2]),
        ([{"parallel": {"merge": "add", "branches": [[{"conv": {"filters": 2, "kernel": 1}}],
                                                     ["tanh"]]}}], [3, 3, 2]),
    ],
    "repeat": [([{"repeat": {"times": 2, "layers": [{"conv": {"filters": 2, "kernel": 3,
                                                              "padding": 1}}, "tanh"]}}],
                [4, 4, 2])],
    "sequential": [([{"sequential": {"name": "stage", "layers": [
        {"conv": {"filters": 2, "kernel": 3}}, "elu"]}}], [4, 4, 1])],
}


def _cases():
    for kind, cases in CASES.items():
        for i, (layers, shape) in enumerate(cases):
            yield pytest.param(layers, shape, id=f"{kind}-{i}")


def _spec(layers, shape):
    return {"name": "case", "input": shape, "layers": layers}


def test_every_registered_type_has_a_case():
    missing = set(layer_types()) - set(CASES)
    assert not missing, f"layer types without a test case: {sorted(missing)}"


@pytest.mark.parametrize(("layers", "shape"), list(_cases()))
def test_declared_shape_and_params_match_engine(layers, shape):
    report = shapes(_spec(layers, shape))
    model = build_model(_spec(layers, shape), seed=1)
    x = np.random.default_rng(0).standard_normal((2, shape[2], shape[0], shape[1]))
    y = model.forward(x.astype(np.float32), training=True)
    out = report["output"]
    expected = (2, out[2], out[0], out[1]) if len(out) == 3 else (2, out[0])
    assert y.shape == expected
    assert y.dtype == np.float32
    assert sum(p.size for p in model.params.values()) == report["totals"]["trainable_params"]
    assert sum(b.size for b in model.buffers.values()) == report["totals"]["non_trainable_params"]
    for row in report["layers"]:
        declared = row["params"]
        actual = sum(prod(v.shape) for k, v in model.params.items()
                     if k.rsplit(".", 1)[0] == row["name"])
        assert actual == declared, row["name"]


@pytest.mark.parametrize(("layers", "shape"), list(_cases()))
def test_backward_matches_finite_differences(layers, shape):
    results = gradcheck(_spec(layers, shape), batch=2, samples=8, tol=1e-6, seed=3)
    bad = [(r.name, r.max_rel_error) for r in results if not r.ok]
    assert not bad
