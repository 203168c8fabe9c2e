"""The tap-table im2col/col2im for small output maps against the loop kernels."""

from __future__ import annotations

import numpy as np
import pytest

from cnncli.ops import _kernels as kern
from cnncli.ops import conv
from cnncli.ops.conv import im2col


@pytest.mark.parametrize(("c", "h", "w", "k", "s", "p", "d"), [
    (3, 2, 2, 3, 1, 1, 1), (2, 4, 4, 3, 2, 1, 1), (5, 8, 8, 3, 2, 1, 1), (1, 3, 5, 3, 1, 0, 1),
    (2, 5, 5, 3, 1, 2, 2), (4, 7, 6, 5, 2, 2, 1), (3, 1, 1, 3, 1, 1, 1), (2, 9, 9, 7, 2, 3, 1),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_table_kernels_equal_the_loop_kernels(c, h, w, k, s, p, d, dtype):
    rng = np.random.default_rng(c * 100 + h)
    x = rng.standard_normal((6, c, h, w)).astype(dtype)
    g = conv.geometry((h, w), (4, c, k, k), s, p, d, 1)
    (ho, wo), n0, nb = g.out_hw, 1, 4
    want = np.empty((c * k * k, nb * ho * wo), dtype)
    kern.im2col(x, n0, nb, k, k, s, s, p, p, d, d, ho, wo, want)
    got = np.full_like(want, np.nan)
    kern.im2col_table(x, n0, nb, im2col.tap_table(g), got)
    np.testing.assert_array_equal(got, want)
    cols = rng.standard_normal(want.shape).astype(dtype)
    want_dx = np.full_like(x, 7.0)
    got_dx = np.full_like(x, 7.0)  # images outside n0..n0+nb-1 must stay untouched
    kern.col2im(cols, n0, nb, k, k, s, s, p, p, d, d, ho, wo, want_dx)
    kern.col2im_table(cols, n0, nb, im2col.tap_table(g), got_dx)
    np.testing.assert_allclose(got_dx, want_dx, rtol=1e-6 if dtype == np.float32 else 1e-13)
    assert (got_dx[0] == 7.0).all() and (got_dx[5] == 7.0).all()
