"""Laying out many small images (filters, feature maps) as one grid.

A :class:`Tiles` keeps the exact values of every tile; :meth:`Tiles.mosaic` puts them in one
array with NaN (or transparent) gaps, which the picture shows with a single ``imshow``, so
the picture and ``--format json`` come from the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import ceil, sqrt

import numpy as np


def square_grid(n: int) -> tuple[int, int]:
    """(rows, cols) of the most square grid for ``n`` tiles: cols = ceil(sqrt(n))."""
    if n < 1:
        raise ValueError("no tiles")
    cols = ceil(sqrt(n))
    return ceil(n / cols), cols


@dataclass
class Tiles:
    """``values`` is ``[n, h, w]`` (one colour scale) or ``[n, h, w, 3]`` (RGB in [0, 1]),
    laid out row by row in a ``rows x cols`` grid; ``labels`` name each tile."""

    values: np.ndarray
    rows: int
    cols: int
    labels: list[str] = field(default_factory=list)
    row_labels: list[str] | None = None  # when each row is one thing (a filter)
    col_labels: list[str] | None = None  # and each column another (an input channel)

    def __post_init__(self) -> None:
        if len(self.values) > self.rows * self.cols:
            raise ValueError(f"{len(self.values)} tiles do not fit {self.rows} x {self.cols}")

    @property
    def rgb(self) -> bool:
        return self.values.ndim == 4

    @property
    def tile_shape(self) -> tuple[int, int]:
        return int(self.values.shape[1]), int(self.values.shape[2])

    @property
    def gap(self) -> int:
        """Blank data pixels between tiles: an eighth of a tile's side, at least one."""
        return max(1, round(max(self.tile_shape) / 8))

    def cell(self, i: int) -> tuple[slice, slice]:
        """Where tile ``i`` lies in :meth:`mosaic`."""
        h, w = self.tile_shape
        g = self.gap
        r, c = divmod(i, self.cols)
        return slice(r * (h + g), r * (h + g) + h), slice(c * (w + g), c * (w + g) + w)

    def mosaic(self) -> np.ndarray:
        """All tiles in one array: NaN gaps, or alpha 0 gaps for RGB (then ``[H, W, 4]``)."""
        h, w = self.tile_shape
        g = self.gap
        size = (self.rows * (h + g) - g, self.cols * (w + g) - g)
        if self.rgb:
            out = np.zeros((*size, 4))
            for i, t in enumerate(self.values):
                ys, xs = self.cell(i)
                out[ys, xs, :3] = t
                out[ys, xs, 3] = 1.0
            return out
        out = np.full(size, np.nan)
        for i, t in enumerate(self.values):
            out[self.cell(i)] = t
        return out
