"""The kernels of a conv layer as tiles: what the layer looks for in its input.

Scaling (``--scale``), so that the colours mean the same thing in every tile:

* ``filter`` (default): every weight of a filter divided by that filter's largest |weight|
  (over all its input channels), so each filter uses the whole colour range;
* ``layer``: every weight divided by the layer's largest |weight|, so filters compare.

Single-channel tiles then hold values in [-1, 1] (0 is the middle of a diverging colour
map). A filter over 3 input channels is one RGB tile, ``(w / m + 1) / 2`` in [0, 1], so a
zero weight is mid grey. Any other number of input channels gives one row per filter and
one tile per input channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cnncli.errors import CnnError
from cnncli.layers.base import Node
from cnncli.viz.tiles import Tiles, square_grid

SCALES = ("filter", "layer")
#: At most this many input channels are shown per filter (one tile each).
MAX_CHANNELS = 16


@dataclass
class FilterTiles:
    layer: str
    detail: str
    weight_shape: tuple[int, ...]  # [filters, channels per filter, kh, kw]
    scale: str
    tiles: Tiles
    filters_shown: int
    channels_shown: int
    peak: np.ndarray  # the divisor of each shown filter (all equal for scale=layer)

    def summary(self) -> dict[str, Any]:
        f, c, kh, kw = self.weight_shape
        return {"layer": self.layer, "kernel": [kh, kw], "filters": f, "channels": c,
                "filters_shown": self.filters_shown, "channels_shown": self.channels_shown,
                "rgb": self.tiles.rgb, "grid": [self.tiles.rows, self.tiles.cols],
                "scale": self.scale}


def filter_tiles(model: Any, node: Node, scale: str = "filter",
                 max_tiles: int = 256) -> FilterTiles:
    """Tiles of ``node``'s kernels (the first filters and channels when there are many)."""
    if scale not in SCALES:
        raise CnnError(f"--scale must be one of {', '.join(SCALES)}, not '{scale}'")
    if max_tiles < 1:
        raise CnnError("--max-tiles must be at least 1")
    w = np.asarray(model.get(f"{node.path}.weight"), dtype=np.float64)  # [F, C/g, kh, kw]
    f, c = w.shape[:2]
    rgb = c == 3
    per_filter = 1 if rgb else min(c, MAX_CHANNELS)
    nf = min(f, max(1, max_tiles // per_filter))
    shown = w[:nf, : (3 if rgb else per_filter)]
    if scale == "layer":
        peak = np.full(nf, np.abs(w).max())
    else:
        peak = np.abs(w[:nf].reshape(nf, -1)).max(axis=1)
    peak = np.where(peak > 0, peak, 1.0)  # an all-zero filter stays zero
    scaled = shown / peak[:, None, None, None]
    if rgb:
        values = ((scaled + 1.0) / 2.0).transpose(0, 2, 3, 1)  # [nf, kh, kw, 3]
        rows, cols = square_grid(nf)
        tiles = Tiles(values, rows, cols, labels=[str(i) for i in range(nf)])
    elif per_filter == 1:
        rows, cols = square_grid(nf)
        tiles = Tiles(scaled[:, 0], rows, cols, labels=[str(i) for i in range(nf)])
    else:
        tiles = Tiles(scaled.reshape(nf * per_filter, *w.shape[2:]), nf, per_filter,
                      row_labels=[f"filter {i}" for i in range(nf)],
                      col_labels=[f"in {j}" for j in range(per_filter)])
    return FilterTiles(node.path, node.layer.describe(), tuple(int(v) for v in w.shape), scale,
                       tiles, nf, 3 if rgb else per_filter, peak)
