"""The pictures of ``cnn viz``: tile grids (filters, feature maps) and class maps.

Sizes, so that a picture's pixels can be predicted (and are tested):

* tile grids: each tile gets a cell of ``cell = floor(min(160, 900 / cols, 900 / rows))``
  pixels (tiles and their gaps keep their own aspect ratio vertically); the picture is
  ``max(640, 70 + cols * cell + 140)`` x ``(90 + rows * cell_h + 50)`` pixels: a title band
  above, tick labels to the left and below, the colour bar to the right;
* class maps: 1200 x 480 pixels (the input, the map on the layer's grid, the overlay).
"""

from __future__ import annotations

from math import floor
from pathlib import Path
from typing import Any

import numpy as np

from cnncli.viz.canvas import axes_px, colormap, figure, save_png
from cnncli.viz.tiles import Tiles

CELL_MAX, GRID_MAX = 160, 900
LEFT, RIGHT, TOP, BOTTOM, MIN_WIDTH = 70, 140, 90, 50, 640
CAM_SIZE = (1200, 480)


def tile_layout(tiles: Tiles) -> dict[str, float]:
    """Pixel geometry of a tile picture: cell sizes, grid size, figure size."""
    h, w = tiles.tile_shape
    g = tiles.gap
    aspect = (h + g) / (w + g)
    cell = floor(min(CELL_MAX, GRID_MAX / tiles.cols, GRID_MAX / (tiles.rows * aspect)))
    cell = max(cell, 1)
    cell_h = cell * aspect
    grid_w, grid_h = tiles.cols * cell, tiles.rows * cell_h
    width = max(MIN_WIDTH, LEFT + grid_w + RIGHT)
    return {"cell": cell, "cell_h": cell_h, "grid_w": grid_w, "grid_h": grid_h,
            "width": int(width), "height": int(round(TOP + grid_h + BOTTOM)),
            "left": (width - grid_w - RIGHT - LEFT) / 2 + LEFT}


def tiles_png(tiles: Tiles, path: str | Path, title: str, subtitle: str, *, cmap: str,
              vmin: float, vmax: float, colorbar: str | None, gap_colour: str = "white"
              ) -> Path:
    """One picture of all tiles (one ``imshow`` of :meth:`Tiles.mosaic`)."""
    lay = tile_layout(tiles)
    h, w = tiles.tile_shape
    g = tiles.gap
    with figure(lay["width"], lay["height"]) as fig:
        fig.text(0.5, 1 - 28 / lay["height"], title, ha="center", va="center",
                 fontsize=13, weight="bold")
        fig.text(0.5, 1 - 58 / lay["height"], subtitle, ha="center", va="center",
                 fontsize=11, color="#333333")
        ax = axes_px(fig, lay["left"], BOTTOM, lay["grid_w"], lay["grid_h"])
        ax.set_facecolor(gap_colour)
        extent = (0, tiles.cols * (w + g) - g, tiles.rows * (h + g) - g, 0)
        im = ax.imshow(tiles.mosaic(), cmap=colormap(cmap), vmin=vmin, vmax=vmax,
                       extent=extent, aspect="auto", interpolation="antialiased")
        ax.set_xlim(-g / 2, tiles.cols * (w + g) - g / 2)
        ax.set_ylim(tiles.rows * (h + g) - g / 2, -g / 2)
        for side in ax.spines.values():
            side.set_visible(False)
        if tiles.row_labels and tiles.col_labels:
            ax.set_yticks([r * (h + g) + h / 2 for r in range(tiles.rows)], tiles.row_labels)
            ax.set_xticks([c * (w + g) + w / 2 for c in range(tiles.cols)], tiles.col_labels)
            ax.tick_params(length=0, labelsize=min(10, max(7, lay["cell_h"] / 2.2)))
            ax.xaxis.tick_bottom()
        else:
            ax.set_xticks([])
            ax.set_yticks([])
            if tiles.labels and lay["cell"] >= 48:
                for i, text in enumerate(tiles.labels):
                    ys, xs = tiles.cell(i)
                    ax.text(xs.start + w * 0.04, ys.start + h * 0.04, text, ha="left",
                            va="top", fontsize=8, color="black",
                            bbox={"boxstyle": "square,pad=0.15", "fc": "white", "ec": "none",
                                  "alpha": 0.75})
        if colorbar is not None:
            cax = axes_px(fig, lay["left"] + lay["grid_w"] + 24, BOTTOM, 16, lay["grid_h"])
            bar = fig.colorbar(im, cax=cax)
            bar.set_label(colorbar)
        return save_png(fig, path)


def cam_png(cm: Any, image: np.ndarray, path: str | Path, title: str) -> Path:
    """The input as the network sees it, the class map on its own grid, and the overlay.

    ``image`` is the fitted input ``[C, H, W]`` in [0, 1], before normalisation."""
    from matplotlib.patches import Rectangle

    width, height = CAM_SIZE
    shown = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    grey = image.mean(axis=0)
    grid = cm.map / cm.map.max() if cm.map.max() > 0 else cm.map
    names = {"gradcam": "Grad-CAM", "hirescam": "HiResCAM", "saliency": "saliency"}
    where = (f"at {cm.layer} ({' x '.join(map(str, cm.layer_shape))})" if cm.layer
             else "|d score / d input|")
    with figure(width, height) as fig:
        fig.text(0.5, 1 - 24 / height, title, ha="center", va="center", fontsize=13,
                 weight="bold")
        top = ", ".join(f"{t['label']} {t['probability']:.1%}" for t in cm.top)
        fig.text(0.5, 1 - 48 / height, f"predicted: {top}", ha="center", va="center",
                 fontsize=11, color="#333333")
        side, y0 = 320, 45
        panels = [axes_px(fig, 40 + i * 370, y0, side, side) for i in range(3)]
        kw = {"cmap": "gray", "vmin": 0, "vmax": 1} if image.shape[0] == 1 else {}
        panels[0].imshow(np.clip(shown, 0, 1), interpolation="nearest", **kw)
        panels[0].set_title("input (fitted as for cnn predict)")
        im = panels[1].imshow(grid, cmap="inferno", vmin=0, vmax=1, interpolation="nearest")
        panels[1].set_title(f"{names[cm.method]} {where}", fontsize=11)
        panels[2].imshow(grey, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        panels[2].imshow(cm.heat, cmap="inferno", vmin=0, vmax=1, alpha=0.6,
                         interpolation="bilinear")
        panels[2].set_title("overlay")
        if cm.box is not None:
            x0, y0b, x1, y1 = cm.box
            panels[2].add_patch(Rectangle((x0 - 0.5, y0b - 0.5), x1 - x0, y1 - y0b,
                                          fill=False, ec="#00e5ff", lw=2))
            if cm.share is not None:
                panels[2].set_title(f"overlay ({cm.share:.0%} of the map in the box)")
        for ax in panels:
            ax.tick_params(labelsize=9)
        cax = axes_px(fig, 40 + 2 * 370 + side + 14, y0, 14, side)
        bar = fig.colorbar(im, cax=cax)
        bar.set_label("share of the map's maximum")
        return save_png(fig, path)
