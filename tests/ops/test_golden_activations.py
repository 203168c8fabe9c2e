"""Activations (elementwise and softmax) against the golden files."""

from __future__ import annotations

import numpy as np
import pytest

from cnncli.ops import activations

HP_KEYS = {"leaky_relu": {"slope": "negative_slope"}, "elu": {"alpha": "alpha"}}


def _name_of(stem: str) -> str:
    """The longest activation name that the file stem starts with (relu6 before relu)."""
    names = [a for a in activations.ACTIVATIONS if stem == a or stem.startswith(a + "_")]
    assert names, f"no activation matches golden file {stem}"
    return max(names, key=len)


def _case(g, name, check, check32):
    hp = {ours: g.float(key) for ours, key in HP_KEYS.get(name, {}).items() if key in g}
    y, cache = activations.forward(name, g["x"], **hp)
    check(y, g["y"], "y")
    check(activations.backward(name, g["dy"], cache), g["dx"], "dx")
    assert np.all(np.isfinite(y)), "no overflow"

    y32, c32 = activations.forward(name, g["x"].astype(np.float32), **hp)
    check32(y32, g["y"], "y")
    check32(activations.backward(name, g["dy"].astype(np.float32), c32), g["dx"], "dx")

    # the in-place fast path gives the same answer
    x = g["x"].copy()
    y_in, c_in = activations.forward(name, x, out=x, **hp)
    assert y_in is x
    check(y_in, g["y"], "y (in place)")
    dy = g["dy"].copy()
    check(activations.backward(name, dy, c_in, out=dy), g["dx"], "dx (in place)")


@pytest.mark.golden_family("activation")
def test_activation_golden(golden, check, check32):
    _case(golden, _name_of(golden.name), check, check32)


@pytest.mark.golden_family("softmax")
def test_softmax_golden(golden, check, check32):
    assert golden.int("dim", 1) == 1
    _case(golden, "softmax", check, check32)
