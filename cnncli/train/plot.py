"""Learning curves and the confusion matrix as PNG files, drawn with matplotlib.

The same code draws ``curves.png`` during training, ``cnn viz curves`` and
``cnn evaluate --confusion-png``. Sizes: curves 1100 x 420 pixels; the confusion matrix
760 x 660 pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cnncli.viz.canvas import axes_px, figure, save_png

CURVES_SIZE = (1100, 420)
CONFUSION_SIZE = (760, 660)
SPLITS = {"train": "#1f77b4", "val": "#ff7f0e", "test": "#2ca02c"}


def learning_curves(history: list[dict[str, Any]], path: str | Path,
                    run_name: str | None = None) -> Path:
    """Loss and accuracy (in percent) per epoch for train/val/test, side by side."""
    with figure(*CURVES_SIZE) as fig:
        draw_curves(fig, history, run_name)
        return save_png(fig, path)


def draw_curves(fig: Any, history: list[dict[str, Any]], run_name: str | None = None) -> list:
    """The two panels of :func:`learning_curves` on ``fig``; returns their axes."""
    from matplotlib.ticker import MaxNLocator

    width, height = CURVES_SIZE
    n = len(history)
    title = "learning curves" + (f": {run_name}" if run_name else "") + (
        f" ({n} epoch{'s' * (n != 1)})")
    fig.text(0.5, 1 - 20 / height, title, ha="center", va="center", fontsize=13,
             weight="bold")
    epochs = [r["epoch"] for r in history]
    handles: dict[str, Any] = {}
    panels = []
    for i, (metric, label) in enumerate((("loss", "loss"), ("accuracy", "accuracy (%)"))):
        ax = axes_px(fig, 75 + i * 455, 55, 380, 290)
        scale = 100.0 if metric == "accuracy" else 1.0  # accuracy in percent, as printed
        for split, colour in SPLITS.items():
            pts = [(e, r[f"{split}_{metric}"] * scale) for e, r in zip(epochs, history)
                   if r.get(f"{split}_{metric}") is not None]
            if pts:
                xs, ys = zip(*pts)
                (line,) = ax.plot(xs, ys, color=colour, marker="o", markersize=4,
                                  linewidth=1.8, label=split)
                handles[split] = line
        ax.set_title(f"{metric} per epoch")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, color="#dddddd", linewidth=0.8)
        ax.set_axisbelow(True)
        panels.append(ax)
    if handles:  # one legend for both panels, to the right of them (never over a curve)
        fig.legend(list(handles.values()), list(handles), loc="upper left",
                   bbox_to_anchor=(935 / width, 1 - 75 / height), title="split",
                   frameon=False)
    return panels


def confusion_png(cm: list[list[int]], classes: list[str], path: str | Path) -> Path:
    """The confusion matrix as a heat map (rows: true class, columns: predicted), counts
    centred in their cells when there is room (up to 30 classes), with a colour bar."""
    with figure(*CONFUSION_SIZE) as fig:
        draw_confusion(fig, cm, classes)
        return save_png(fig, path)


def draw_confusion(fig: Any, cm: list[list[int]], classes: list[str]) -> Any:
    """The picture of :func:`confusion_png` on ``fig``; returns the matrix's axes."""
    import numpy as np

    width, height = CONFUSION_SIZE
    counts = np.asarray(cm, dtype=np.int64).reshape(len(classes), len(classes))
    k = len(classes)
    total = int(counts.sum())
    right = int(np.trace(counts))
    names = [c if len(c) <= 12 else c[:11] + "…" for c in classes]
    acc = f", accuracy {right / total:.1%}" if total else ""
    fig.text(0.5, 1 - 22 / height, f"confusion matrix ({total:,} images{acc})",
             ha="center", va="center", fontsize=13, weight="bold")
    side = 480
    ax = axes_px(fig, 130, 100, side, side)
    peak = int(counts.max(initial=0))
    im = ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(peak, 1), interpolation="nearest")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    long = max(map(len, names), default=0) > 2
    ax.set_xticks(range(k), names, rotation=45 if long else 0, ha="right" if long else "center")
    ax.set_yticks(range(k), names)
    if k > 20:
        ax.tick_params(labelsize=max(5, int(200 / k)))
    if k <= 30:
        size = max(6, min(12, int(side / max(k, 1) / 3)))
        for i in range(k):
            for j in range(k):
                v = int(counts[i, j])
                ax.text(j, i, str(v), ha="center", va="center", fontsize=size,
                        color="white" if v > peak / 2 else "black")
    cax = axes_px(fig, 130 + side + 20, 100, 18, side)
    fig.colorbar(im, cax=cax).set_label("images")
    return ax
