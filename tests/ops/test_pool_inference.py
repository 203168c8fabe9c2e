"""2x2/2 max pooling without the argmax (inference, ``need_argmax=False``) against the
path that records it: same values, NaNs included, and a backward pass after it still
works (it finds the winners again)."""

from __future__ import annotations

import numpy as np
import pytest

from cnncli.ops import pool


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 4, 8, 8), (2, 3, 7, 9), (9, 2, 2, 2)])
def test_maxpool2x2_without_argmax_matches(dtype, shape):
    rng = np.random.default_rng(11)
    x = rng.standard_normal(shape).astype(dtype)
    x[0, 0, 0, 1] = np.nan
    x[-1, -1, 1, 0] = x[-1, -1, 0, 0]  # a tie
    want, cache = pool.pool2d_forward(x, "max", 2, 2)
    got, fast = pool.pool2d_forward(x, "max", 2, 2, need_argmax=False)
    assert fast.argmax is None
    np.testing.assert_array_equal(got, want)  # NaN in the same places
    dy = rng.standard_normal(want.shape).astype(dtype)
    np.testing.assert_array_equal(pool.pool2d_backward(dy, fast),
                                  pool.pool2d_backward(dy, cache))


def test_other_pools_ignore_need_argmax():
    x = np.random.default_rng(12).standard_normal((2, 3, 9, 9))
    for kind, k, s in [("max", 3, 2), ("avg", 2, 2), ("l2", 2, 2)]:
        want, _ = pool.pool2d_forward(x, kind, k, s)
        got, _ = pool.pool2d_forward(x, kind, k, s, need_argmax=False)
        np.testing.assert_array_equal(got, want)
