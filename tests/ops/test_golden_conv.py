"""conv2d, conv_transpose2d, dense and flatten against the PyTorch golden files."""

from __future__ import annotations

import numpy as np
import pytest

from cnncli.ops import conv


def _f32(*arrays):
    return [None if a is None else a.astype(np.float32) for a in arrays]


@pytest.mark.golden_family("conv2d")
def test_conv2d_golden(golden, check, check32):
    g = golden
    hp = dict(
        stride=g.int("stride"),
        padding=g.int("padding"),
        dilation=g.int("dilation", 1),
        groups=g.int("groups", 1),
    )
    y, cache = conv.conv2d_forward(g["x"], g["w"], g["b"], **hp)
    check(y, g["y"], "y")
    for axis in (2, 3):
        size = conv.conv_output_size(
            g["x"].shape[axis], g["w"].shape[axis], hp["stride"], hp["padding"], hp["dilation"]
        )
        assert size == g["y"].shape[axis]
    dx, dw, db = conv.conv2d_backward(g["dy"], cache)
    check(dx, g["dx"], "dx")
    check(dw, g["dw"], "dw")
    check(db, g["db"], "db")

    y32, c32 = conv.conv2d_forward(*_f32(g["x"], g["w"], g["b"]), **hp)
    check32(y32, g["y"], "y")
    for mine, name in zip(
        conv.conv2d_backward(g["dy"].astype(np.float32), c32), ["dx", "dw", "db"]
    ):
        check32(mine, g[name], name)


@pytest.mark.golden_family("conv_transpose2d")
def test_conv_transpose2d_golden(golden, check, check32):
    g = golden
    hp = dict(
        stride=g.int("stride"),
        padding=g.int("padding"),
        output_padding=g.int("output_padding", 0),
        dilation=g.int("dilation", 1),
        groups=g.int("groups", 1),
    )
    y, cache = conv.conv_transpose2d_forward(g["x"], g["w"], g["b"], **hp)
    check(y, g["y"], "y")
    for axis in (2, 3):
        size = conv.deconv_output_size(
            g["x"].shape[axis],
            g["w"].shape[axis],
            hp["stride"],
            hp["padding"],
            hp["output_padding"],
            hp["dilation"],
        )
        assert size == g["y"].shape[axis]
    dx, dw, db = conv.conv_transpose2d_backward(g["dy"], cache)
    check(dx, g["dx"], "dx")
    check(dw, g["dw"], "dw")
    check(db, g["db"], "db")
    # the adjoint identity of README §3: dx = conv2d(dy, w, s, p)
    dx2, _ = conv.conv2d_forward(
        g["dy"], g["w"], None, hp["stride"], hp["padding"], hp["dilation"], hp["groups"]
    )
    check(dx2, g["dx"], "conv2d(dy, w)")

    y32, c32 = conv.conv_transpose2d_forward(*_f32(g["x"], g["w"], g["b"]), **hp)
    check32(y32, g["y"], "y")
    grads = conv.conv_transpose2d_backward(g["dy"].astype(np.float32), c32)
    for mine, name in zip(grads, ["dx", "dw", "db"]):
        check32(mine, g[name], name)


@pytest.mark.golden_family("dense")
def test_dense_golden_as_whole_input_conv(golden, check):
    """A dense layer is a conv whose kernel covers the whole input: w [out, in] is the
    OIHW weight [out, C, H, W] of the flattened (C-major, NCHW) input. The registry's
    dense layer has its own tests; this pins the flatten order and the conv fast path."""
    g = golden
    x = g["x"]
    n = x.shape[0]
    x4 = x if x.ndim == 4 else x.reshape(n, -1, 1, 1)
    w4 = g["w"].reshape(g["w"].shape[0], *x4.shape[1:])
    y, cache = conv.conv2d_forward(x4, w4, g["b"], 1, 0)
    check(y.reshape(n, -1), g["y"], "y")
    dx, dw, db = conv.conv2d_backward(g["dy"].reshape(y.shape), cache)
    check(dx.reshape(x.shape), g["dx"], "dx")
    check(dw.reshape(g["w"].shape), g["dw"], "dw")
    check(db, g["db"], "db")


@pytest.mark.golden_family("flatten")
def test_flatten_golden_is_nchw_reshape(golden, check):
    g = golden
    n = g["x"].shape[0]
    assert g.int("start_dim", 1) == 1
    check(g["x"].reshape(n, -1), g["y"], "y")
    check(g["dy"].reshape(g["x"].shape), g["dx"], "dx")
