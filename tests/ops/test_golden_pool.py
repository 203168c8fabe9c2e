"""Spatial, depth and global pooling against the PyTorch golden files."""

from __future__ import annotations

import re

import numpy as np
import pytest

from cnncli.ops import pool


def _pool_case(g, kind, check, check32):
    hp = dict(
        kernel=g.int("kernel_size"),
        stride=g.int("stride"),
        padding=g.int("padding", 0),
        ceil_mode=bool(g.int("ceil_mode", 0)),
    )
    y, cache = pool.pool2d_forward(g["x"], kind, **hp)
    check(y, g["y"], "y")
    for axis in (2, 3):
        size = pool.pool_output_size(
            g["x"].shape[axis], hp["kernel"], hp["stride"], hp["padding"], hp["ceil_mode"]
        )
        assert size == g["y"].shape[axis]
    check(pool.pool2d_backward(g["dy"], cache), g["dx"], "dx")

    y32, c32 = pool.pool2d_forward(g["x"].astype(np.float32), kind, **hp)
    check32(y32, g["y"], "y")
    check32(pool.pool2d_backward(g["dy"].astype(np.float32), c32), g["dx"], "dx")
    return cache


@pytest.mark.golden_family("max_pool2d")
def test_max_pool2d_golden(golden, check, check32):
    cache = _pool_case(golden, "max", check, check32)
    assert np.array_equal(cache.argmax, golden["indices"]), "winner indices (first max)"


@pytest.mark.golden_family("avg_pool2d")
def test_avg_pool2d_golden(golden, check, check32):
    _pool_case(golden, "avg", check, check32)


@pytest.mark.golden_family("lp_pool2d")
def test_lp_pool2d_golden(golden, check, check32):
    assert golden.float("norm_type") == 2.0, "only L2 pooling (norm_type 2) is implemented"
    _pool_case(golden, "l2", check, check32)


@pytest.mark.golden_family("depth_pool")
def test_depth_pool_golden(golden, check, check32):
    g = golden
    kind = re.fullmatch(r"depth_([a-z0-9]+)_pool.*", g.name).group(1)
    kind = {"lp": "l2"}.get(kind, kind)
    k, s = g.int("kernel_size"), g.int("stride")
    y, cache = pool.depth_pool_forward(g["x"], kind, k, s)
    check(y, g["y"], "y")
    assert y.shape[1] == pool.depth_output_size(g["x"].shape[1], k, s)
    if "argmax_c" in g:
        c_out = y.shape[1]
        winner = np.arange(c_out).reshape(1, -1, 1, 1) * s + cache.offset
        assert np.array_equal(winner, g["argmax_c"]), "winning channels"
    check(pool.depth_pool_backward(g["dy"], cache), g["dx"], "dx")
    if kind == "max" and k == s and g["x"].shape[1] % k == 0:  # maxout identity (§8)
        n, c, h, w = g["x"].shape
        check(g["x"].reshape(n, c // k, k, h, w).max(axis=2), y, "maxout")

    y32, c32 = pool.depth_pool_forward(g["x"].astype(np.float32), kind, k, s)
    check32(y32, g["y"], "y")
    check32(pool.depth_pool_backward(g["dy"].astype(np.float32), c32), g["dx"], "dx")


@pytest.mark.golden_family("global_pool")
def test_global_pool_golden(golden, check, check32):
    g = golden
    kind = re.fullmatch(r"global_(avg|max)_pool.*", g.name).group(1)
    assert g.int("output_size", 1) == 1
    n, c = g["x"].shape[:2]
    y, cache = pool.global_pool_forward(g["x"], kind)
    assert y.shape == (n, c), "global pooling returns a flat [N, C] vector"
    check(y.reshape(g["y"].shape), g["y"], "y")
    check(pool.global_pool_backward(g["dy"].reshape(n, c), cache), g["dx"], "dx")

    y32, c32 = pool.global_pool_forward(g["x"].astype(np.float32), kind)
    check32(y32.reshape(g["y"].shape), g["y"], "y")
    dx32 = pool.global_pool_backward(g["dy"].reshape(n, c).astype(np.float32), c32)
    check32(dx32, g["dx"], "dx")
