"""Every shipped architecture runs in the engine with exactly the shapes ``cnn shapes`` reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cnncli.engine import build_model
from cnncli.shapes import shapes
from cnncli.spec import load_spec

ARCH = Path(__file__).parent.parent.parent / "architectures"
# Smaller inputs keep the suite fast; each still passes every layer a valid size.
SMALL_INPUT = {
    "alexnet": (63, 63, 3),
    "vgg16": (32, 32, 3),
    "resnet18": (32, 32, 3),
    "resnet50": (32, 32, 3),
    "googlenet": (32, 32, 3),
    "mobilenet_v2": (32, 32, 3),
}


@pytest.mark.parametrize("path", sorted(ARCH.glob("*.yaml")), ids=lambda p: p.stem)
def test_engine_shapes_equal_reported_shapes(path):
    shape = SMALL_INPUT.get(path.stem)
    spec = load_spec(path, input_shape=shape)
    report = shapes(spec, input_shape=shape)
    model = build_model(spec, input_shape=shape, seed=0)
    model.trace = {}
    h, w, c = report["input"]
    x = np.random.default_rng(0).standard_normal((1, c, h, w)).astype(np.float32)
    y = model.forward(x, training=False)
    assert y.dtype == np.float32
    assert np.isfinite(y).all()
    for row in report["layers"]:
        out = row["output"]
        want = (1, out[2], out[0], out[1]) if len(out) == 3 else (1, out[0])
        assert model.trace[row["name"]] == want, row["name"]
    assert sum(p.size for p in model.params.values()) == report["totals"]["trainable_params"]
