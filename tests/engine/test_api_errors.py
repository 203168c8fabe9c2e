"""Bad arrays passed to the engine API fail clearly: the layer, expected and received shape."""

from __future__ import annotations

import numpy as np
import pytest

from cnncli.engine import build_model
from cnncli.errors import ShapeMismatchError

SPEC = {
    "name": "t",
    "input": [6, 6, 2],
    "layers": [
        {"conv": {"name": "c1", "filters": 3, "kernel": 3}},
        "flatten",
        {"dense": {"name": "fc", "units": 2}},
    ],
}


@pytest.fixture
def model():
    return build_model(SPEC, seed=0)


def test_wrong_input_shape_names_expected_and_received(model):
    with pytest.raises(
        ShapeMismatchError, match=r"expected shape \[N, 2, 6, 6\].*got \[4, 6, 6, 2\]"
    ):
        model.forward(np.zeros((4, 6, 6, 2), np.float32))


def test_non_float_input_is_refused(model):
    with pytest.raises(ShapeMismatchError, match="int64"):
        model.forward(np.zeros((1, 2, 6, 6), np.int64))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_input_is_refused(model, bad):
    x = np.zeros((1, 2, 6, 6), np.float32)
    x[0, 1, 2, 3] = bad
    with pytest.raises(ShapeMismatchError, match="NaN or inf"):
        model.forward(x)


def test_setting_a_parameter_with_the_wrong_shape_never_broadcasts(model):
    before = model.get("c1.weight").copy()
    with pytest.raises(ShapeMismatchError, match=r"layer 'c1'.*\[3, 2, 3, 3\].*\[3, 2, 3\]"):
        model.set("c1.weight", np.ones((3, 2, 3)))
    with pytest.raises(ShapeMismatchError):
        model.set("c1.bias", np.ones(1))  # would broadcast silently with numpy
    np.testing.assert_array_equal(model.get("c1.weight"), before)


def test_unknown_parameter_name(model):
    with pytest.raises(KeyError, match="c9.weight"):
        model.get("c9.weight")


def test_float64_on_request_and_float32_by_default():
    assert all(p.dtype == np.float32 for p in build_model(SPEC).params.values())
    m64 = build_model(SPEC, dtype=np.float64)
    assert all(p.dtype == np.float64 for p in m64.params.values())
    y = m64.forward(np.zeros((1, 2, 6, 6)))
    assert y.dtype == np.float64


def test_same_seed_same_weights_different_seed_different():
    a, b, c = build_model(SPEC, seed=5), build_model(SPEC, seed=5), build_model(SPEC, seed=6)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    assert any(not np.array_equal(a.params[k], c.params[k]) for k in a.params if "weight" in k)


def test_backward_needs_a_forward(model):
    with pytest.raises(RuntimeError, match="forward"):
        model.backward(np.zeros((1, 2), np.float32))
