"""The feature maps of one image at one layer: what the layer found, and where.

Scaling (``--scale``): ``layer`` (default) shows the activations themselves on one colour
scale for the whole layer (the colour bar is in activation units), so a weak channel looks
weak; ``channel`` stretches each channel to its own [min, max] as [0, 1], so every
channel's pattern is visible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cnncli.errors import CnnError
from cnncli.layers.base import Node
from cnncli.viz.probe import activations
from cnncli.viz.tiles import Tiles, square_grid

SCALES = ("layer", "channel")


@dataclass
class FeatureMaps:
    layer: str
    type: str
    detail: str
    values: np.ndarray  # [C, H, W], the model's activations for the image
    scale: str
    tiles: Tiles

    def stats(self) -> list[dict[str, Any]]:
        """Per-channel min/max/mean (means summed in float64: the figures a script reads
        should not depend on float32 summation order)."""
        v = self.values.reshape(len(self.values), -1)
        means = v.mean(1, dtype=np.float64)
        return [{"channel": i, "min": float(lo), "max": float(hi), "mean": float(m)}
                for i, (lo, hi, m) in enumerate(zip(v.min(1), v.max(1), means))]

    def summary(self) -> dict[str, Any]:
        c, h, w = self.values.shape
        return {"layer": self.layer, "type": self.type, "detail": self.detail,
                "shape": [h, w, c], "min": float(self.values.min()),
                "max": float(self.values.max()), "mean": float(self.values.mean(dtype=np.float64)),
                "scale": self.scale, "channels_shown": len(self.tiles.values),
                "grid": [self.tiles.rows, self.tiles.cols], "channels": self.stats()}


def feature_maps(model: Any, x: np.ndarray, node: Node, scale: str = "layer",
                 max_tiles: int = 64) -> FeatureMaps:
    """The activations of ``node`` for one normalised image ``x`` ``[1, C, H, W]``."""
    if scale not in SCALES:
        raise CnnError(f"--scale must be one of {', '.join(SCALES)}, not '{scale}'")
    if max_tiles < 1:
        raise CnnError("--max-tiles must be at least 1")
    if len(node.out_shape) != 3:
        raise CnnError(f"layer '{node.path}' outputs a vector of {node.out_shape[0]} values, "
                       "not feature maps; pick a layer with an H x W x C output")
    a, _ = activations(model, x, node.path)
    values = np.asarray(a[0], dtype=np.float64)
    shown = values[:max_tiles]
    if scale == "channel":
        lo = shown.min(axis=(1, 2), keepdims=True)
        span = shown.max(axis=(1, 2), keepdims=True) - lo
        shown = (shown - lo) / np.where(span > 0, span, 1.0)
    rows, cols = square_grid(len(shown))
    tiles = Tiles(shown, rows, cols, labels=[str(i) for i in range(len(shown))])
    return FeatureMaps(node.path, node.type, node.layer.describe(), values, scale, tiles)
