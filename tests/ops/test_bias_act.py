"""The one-pass bias + ReLU/ReLU6 of the conv output paths against the NumPy sequence."""

from __future__ import annotations

import numpy as np
import pytest

from cnncli.ops.conv.common import act_inplace, bias_act_inplace


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", [None, "relu", "relu6", "tanh"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_bias_act_inplace_is_the_numpy_sequence_bit_for_bit(dtype, act, with_bias):
    rng = np.random.default_rng(3)
    y0 = (rng.standard_normal((3, 5, 4, 7)) * 5).astype(dtype)
    y0[0, 0, 0, :3] = [np.nan, -0.0, 6.0]
    bias = rng.standard_normal(5).astype(dtype) if with_bias else np.empty(0, dtype)
    want = y0.copy()
    if with_bias:
        want += bias.reshape(1, 5, 1, 1)
    if act == "relu":
        np.maximum(want, 0, out=want)
    elif act == "relu6":
        np.clip(want, 0, 6, out=want)
    elif act == "tanh":
        np.tanh(want, out=want)
    got = y0.copy()
    bias_act_inplace(got, bias, act)
    np.testing.assert_array_equal(got, want)
    # the activation alone, on a contiguous slice and on a strided view (NumPy's path)
    got = y0.copy()
    if with_bias:
        got += bias.reshape(1, 5, 1, 1)
    view = got[:, ::2]
    ref = view.copy()
    act_inplace(view, act)
    act_inplace(got[:, 1::2], act)
    np.testing.assert_array_equal(got, want)
    assert ref.shape == view.shape
