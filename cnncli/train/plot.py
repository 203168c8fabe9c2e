"""Small PNG charts drawn with Pillow (no plotting library): learning curves, confusion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLOURS = {"train": (31, 119, 180), "val": (255, 127, 14), "test": (44, 160, 44)}


def _save(img: Any, path: Path) -> None:
    from cnncli.fileio import atomic_write

    atomic_write(path, lambda f: img.save(f, format="PNG"))


def learning_curves(history: list[dict[str, Any]], path: str | Path) -> Path:
    """Loss and accuracy per epoch for train/val/test, side by side, as a PNG."""
    from PIL import Image, ImageDraw

    w, h, pad = 420, 300, 40
    img = Image.new("RGB", (2 * w, h), "white")
    draw = ImageDraw.Draw(img)
    epochs = [r["epoch"] for r in history]
    for panel, metric in enumerate(("loss", "accuracy")):
        x0 = panel * w
        series = {s: [r.get(f"{s}_{metric}") for r in history] for s in COLOURS}
        values = [v for vs in series.values() for v in vs if v is not None]
        if not values:
            continue
        lo, hi = min(values), max(values)
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5
        draw.rectangle([x0 + pad, pad // 2, x0 + w - 10, h - pad], outline="black")
        draw.text((x0 + pad, 4), f"{metric} per epoch", fill="black")
        draw.text((x0 + 2, pad // 2), f"{hi:.3g}", fill="black")
        draw.text((x0 + 2, h - pad - 10), f"{lo:.3g}", fill="black")
        draw.text((x0 + pad, h - pad + 6), f"epoch {epochs[0]}", fill="black")
        draw.text((x0 + w - 70, h - pad + 6), f"epoch {epochs[-1]}", fill="black")
        span = max(epochs[-1] - epochs[0], 1)
        for i, (name, vs) in enumerate(series.items()):
            pts = [
                (x0 + pad + (e - epochs[0]) / span * (w - pad - 10),
                 h - pad - (v - lo) / (hi - lo) * (h - 1.5 * pad))
                for e, v in zip(epochs, vs) if v is not None
            ]
            if not pts:
                continue
            if len(pts) > 1:
                draw.line(pts, fill=COLOURS[name], width=2)
            for px, py in pts:
                draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=COLOURS[name])
            draw.text((x0 + 150 + 50 * i, 4), name, fill=COLOURS[name])  # legend in the title row
    _save(img, Path(path))
    return Path(path)


def confusion_png(cm: list[list[int]], classes: list[str], path: str | Path) -> Path:
    """The confusion matrix as a heat map (rows: true class, columns: predicted)."""
    from PIL import Image, ImageDraw

    k = len(classes)
    cell = max(18, min(48, 480 // max(k, 1)))
    left, top = 60, 40
    img = Image.new("RGB", (left + cell * k + 10, top + cell * k + 10), "white")
    draw = ImageDraw.Draw(img)
    peak = max(max(row) for row in cm) or 1
    draw.text((left, 4), "true (rows) vs predicted (columns)", fill="black")
    for i in range(k):
        draw.text((4, top + i * cell + cell // 3), classes[i][:8], fill="black")
        draw.text((left + i * cell + 2, top - 14), classes[i][:4], fill="black")
        for j in range(k):
            v = cm[i][j]
            shade = int(255 - 215 * v / peak)
            box = [left + j * cell, top + i * cell, left + (j + 1) * cell - 1,
                   top + (i + 1) * cell - 1]
            draw.rectangle(box, fill=(shade, shade, 255))
            if cell >= 24:
                draw.text((box[0] + 3, box[1] + cell // 3), str(v),
                          fill="white" if shade < 128 else "black")
    _save(img, Path(path))
    return Path(path)
