"""matplotlib set up for writing picture files: the Agg renderer, figures sized in pixels,
one style, atomic PNG writes.

No pyplot: a :class:`matplotlib.figure.Figure` with an Agg canvas has no global state and
no GUI backend to pick, so drawing works the same in a terminal, a test or a thread.
matplotlib is imported here only, inside the functions, when a picture is drawn.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DPI = 100
#: Readable at 100% zoom: 11 px text, 12 px titles.
STYLE = {
    "font.family": "DejaVu Sans", "font.size": 11, "axes.titlesize": 12,
    "axes.labelsize": 11, "xtick.labelsize": 10, "ytick.labelsize": 10,
    "legend.fontsize": 10, "figure.titlesize": 13, "axes.titlepad": 8,
    "image.interpolation": "antialiased", "savefig.facecolor": "white",
}


@contextmanager
def figure(width: int, height: int) -> Iterator[Any]:
    """A white ``width`` x ``height`` pixel figure drawn in the house style."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
        FigureCanvasAgg(fig)
        yield fig


def axes_px(fig: Any, left: float, bottom: float, width: float, height: float) -> Any:
    """Axes placed in pixels from the figure's bottom-left corner."""
    w, h = fig.get_size_inches() * DPI
    return fig.add_axes((left / w, bottom / h, width / w, height / h))


def save_png(fig: Any, path: str | Path) -> Path:
    """Write the figure as a PNG of exactly its pixel size, atomically."""
    from cnncli.fileio import atomic_write

    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=DPI,
                                             metadata={"Software": "cnncli"}), what="picture")
    return Path(path)


def colormap(name: str, bad: str | None = None) -> Any:
    """A named colour map, with NaN drawn in ``bad`` (default: transparent)."""
    import matplotlib

    cmap = matplotlib.colormaps[name]
    return cmap.with_extremes(bad=bad or (0, 0, 0, 0))
