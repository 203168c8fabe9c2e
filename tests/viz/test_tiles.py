"""Filters and feature maps as tiles: the tiles hold the model's own numbers (weights after
the documented scaling, activations at the layer), the grid follows from the counts, and
the PNG shows those numbers at the documented size."""

from __future__ import annotations

import numpy as np
import pytest
from viz_helpers import model_input, png, sub_model, trained
from vizdata import LENET

from cnncli.engine.model import build_model
from cnncli.errors import CnnError
from cnncli.viz.figures import tile_layout, tiles_png
from cnncli.viz.filters import MAX_CHANNELS, filter_tiles
from cnncli.viz.maps import feature_maps
from cnncli.viz.probe import conv_node, find_node
from cnncli.viz.tiles import Tiles, square_grid


@pytest.mark.parametrize("n,grid", [(1, (1, 1)), (2, (1, 2)), (6, (2, 3)), (10, (3, 4)),
                                    (16, (4, 4)), (17, (4, 5)), (64, (8, 8)), (65, (8, 9))])
def test_square_grid_follows_from_the_count(n, grid):
    assert square_grid(n) == grid
    rows, cols = grid
    assert rows * cols >= n > (rows - 1) * cols  # no empty row


def test_mosaic_holds_every_tile_in_its_cell():
    values = np.random.default_rng(0).normal(size=(5, 4, 3))
    t = Tiles(values, 2, 3)
    m = t.mosaic()
    assert t.gap == 1 and m.shape == (2 * 5 - 1, 3 * 4 - 1)
    for i in range(5):
        np.testing.assert_array_equal(m[t.cell(i)], values[i])
    assert np.isnan(m).sum() == m.size - values.size  # everything else is gap
    with pytest.raises(ValueError):
        Tiles(values, 2, 2)


# -- feature maps -------------------------------------------------------------------------


@pytest.mark.parametrize("layer,upto", [("C1", 1), ("S2", 2), ("C3", 3), ("S4", 4)])
def test_map_tiles_equal_the_activations_at_the_layer(lenet_run, digits, layer, upto):
    """Against the network's first layers run as a model of their own (C1+S2 and C3+S4 run
    as fused conv+pool passes in the full model; the tapped conv runs on its own)."""
    model, meta = trained(lenet_run)
    _, x = model_input(meta, digits[3].path)
    fm = feature_maps(model, x, find_node(model.network, layer))
    expected = sub_model(LENET, model, 0, upto, [28, 28, 1]).forward(x.copy())[0]
    np.testing.assert_array_equal(fm.values, expected)
    c, h, w = expected.shape
    assert (fm.tiles.rows, fm.tiles.cols) == square_grid(c)
    for i in range(c):
        np.testing.assert_array_equal(fm.tiles.mosaic()[fm.tiles.cell(i)], expected[i])
    s = fm.summary()
    assert s["shape"] == [h, w, c] and s["layer"] == layer
    assert [r["max"] for r in s["channels"]] == [float(v) for v in expected.max(axis=(1, 2))]
    assert s["min"] == float(expected.min())
    np.testing.assert_allclose([r["mean"] for r in s["channels"]],
                               expected.astype(np.float64).mean(axis=(1, 2)), rtol=1e-12)


def test_map_channel_scale_and_tile_limit(lenet_run, digits):
    model, meta = trained(lenet_run)
    _, x = model_input(meta, digits[0].path)
    node = find_node(model.network, "C3")
    fm = feature_maps(model, x, node, "channel", max_tiles=5)
    assert len(fm.tiles.values) == 5 and (fm.tiles.rows, fm.tiles.cols) == (2, 3)
    assert len(fm.summary()["channels"]) == 16  # the numbers cover every channel
    for tile, raw in zip(fm.tiles.values, fm.values):
        if raw.max() > raw.min():
            np.testing.assert_allclose(tile, (raw - raw.min()) / (raw.max() - raw.min()))
    with pytest.raises(CnnError, match="not feature maps"):
        feature_maps(model, x, find_node(model.network, "F6"))


def _pixel(lay, tiles, i, r, c, height):
    """PNG (row, col) of data pixel (r, c) of tile i's centre."""
    h, w = tiles.tile_shape
    g = tiles.gap
    ys, xs = tiles.cell(i)
    fx = (xs.start + c + 0.5 + g / 2) / (tiles.cols * (w + g))
    fy = (ys.start + r + 0.5 + g / 2) / (tiles.rows * (h + g))
    top = height - (50 + lay["grid_h"])
    return int(top + fy * lay["grid_h"]), int(lay["left"] + fx * lay["grid_w"])


def test_maps_png_shows_the_activations_at_the_documented_size(lenet_run, digits, tmp_path):
    import matplotlib

    model, meta = trained(lenet_run)
    _, x = model_input(meta, digits[0].path)
    fm = feature_maps(model, x, find_node(model.network, "C1"))
    lo, hi = fm.values.min(), fm.values.max()
    out = tiles_png(fm.tiles, tmp_path / "maps.png", "t", "s", cmap="viridis", vmin=lo,
                    vmax=hi, colorbar="activation")
    lay = tile_layout(fm.tiles)
    # 6 maps of 28 x 28 in 2 x 3 cells of min(160, 900/3, 900/2) = 160 pixels
    assert (lay["width"], lay["height"]) == (70 + 3 * 160 + 140, 90 + 2 * 160 + 50)
    rgb = png(out, (690, 460))
    cmap = matplotlib.colormaps["viridis"]
    rng = np.random.default_rng(1)
    for _ in range(60):
        i, r, c = rng.integers(6), rng.integers(28), rng.integers(28)
        want = np.array(cmap((fm.values[i, r, c] - lo) / (hi - lo))[:3]) * 255
        y, xp = _pixel(lay, fm.tiles, i, r, c, 460)
        np.testing.assert_allclose(rgb[y, xp], want, atol=3, err_msg=str((i, r, c)))


# -- filters ------------------------------------------------------------------------------


def test_filter_tiles_equal_the_weights_scaled_per_filter_and_per_layer(lenet_run):
    model, _ = trained(lenet_run)
    c1 = conv_node(model.network, None)
    assert c1.path == "C1"  # the default: the first conv layer
    w = model.get("C1.weight").astype(np.float64)  # [6, 1, 5, 5]
    ft = filter_tiles(model, c1)
    assert (ft.tiles.rows, ft.tiles.cols) == (2, 3) and not ft.tiles.rgb
    for f in range(6):
        np.testing.assert_allclose(ft.tiles.values[f], w[f, 0] / np.abs(w[f]).max())
        assert np.abs(ft.tiles.values[f]).max() == pytest.approx(1.0)
    layer = filter_tiles(model, c1, "layer")
    np.testing.assert_allclose(layer.tiles.values, w[:, 0] / np.abs(w).max())

    w3 = model.get("C3.weight").astype(np.float64)  # [16, 6, 5, 5]
    ft3 = filter_tiles(model, conv_node(model.network, "C3"))
    assert (ft3.tiles.rows, ft3.tiles.cols) == (16, 6)  # a row per filter, a tile per channel
    for f in range(16):
        for ch in range(6):
            np.testing.assert_allclose(ft3.tiles.values[f * 6 + ch],
                                       w3[f, ch] / np.abs(w3[f]).max())
    with pytest.raises(CnnError, match="not a conv layer; conv layers: C1, C3, C5"):
        conv_node(model.network, "S2")


def _conv_model(channels, filters, seed=0):
    spec = {"name": "t", "input": [12, 12, channels], "layers": [
        {"conv": {"name": "c", "filters": filters, "kernel": 3}}, "flatten",
        {"dense": {"name": "d", "units": 2}}]}
    return build_model(spec, seed=seed)


def test_rgb_filters_are_one_tile_each_with_zero_at_grey():
    model = _conv_model(3, 10)
    w = model.get("c.weight").astype(np.float64)
    w[4] = 0.0  # a dead filter stays grey, not NaN
    model.set("c.weight", w)
    ft = filter_tiles(model, conv_node(model.network, None))
    assert ft.tiles.rgb and ft.tiles.values.shape == (10, 3, 3, 3)
    assert (ft.tiles.rows, ft.tiles.cols) == (3, 4)
    for f in range(10):
        peak = np.abs(w[f]).max() or 1.0
        np.testing.assert_allclose(ft.tiles.values[f], (w[f] / peak + 1).transpose(1, 2, 0) / 2)
    np.testing.assert_array_equal(ft.tiles.values[4], 0.5)
    mosaic = ft.tiles.mosaic()
    assert mosaic.shape[-1] == 4 and (mosaic[..., 3] == 0).any()  # transparent gaps


@pytest.mark.parametrize("channels,filters,max_tiles,grid", [
    (64, 32, 256, (16, MAX_CHANNELS)),  # 16 channels per filter, 256 // 16 filters
    (64, 32, 40, (2, MAX_CHANNELS)),
    (5, 7, 256, (7, 5)),
    (1, 70, 256, (8, 9)),
    (1, 70, 20, (4, 5)),
])
def test_filter_grid_follows_from_the_counts(channels, filters, max_tiles, grid):
    model = _conv_model(channels, filters)
    ft = filter_tiles(model, conv_node(model.network, None), max_tiles=max_tiles)
    assert (ft.tiles.rows, ft.tiles.cols) == grid
    assert len(ft.tiles.values) <= max_tiles
    s = ft.summary()
    assert s["filters"] == filters and s["channels"] == channels


def test_filters_png_shows_the_scaled_weights_at_the_documented_size(lenet_run, tmp_path):
    import matplotlib

    model, _ = trained(lenet_run)
    ft = filter_tiles(model, conv_node(model.network, "C3"))
    out = tiles_png(ft.tiles, tmp_path / "f.png", "t", "s", cmap="RdBu_r", vmin=-1, vmax=1,
                    colorbar="w")
    # 16 rows x 6 cells of floor(min(160, 900/6, 900/16)) = 56 px; at least 640 wide
    rgb = png(out, (640, 90 + 16 * 56 + 50))
    lay = tile_layout(ft.tiles)
    cmap = matplotlib.colormaps["RdBu_r"]
    for i in (0, 7, 50, 95):
        for r, c in ((0, 0), (2, 2), (4, 1)):
            want = np.array(cmap((ft.tiles.values[i, r, c] + 1) / 2)[:3]) * 255
            y, x = _pixel(lay, ft.tiles, i, r, c, rgb.shape[0])
            np.testing.assert_allclose(rgb[y, x], want, atol=3, err_msg=str((i, r, c)))
