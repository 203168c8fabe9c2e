"""Fitting images to a network's input size and channel count: one stated rule for all sources.

Size (per image, height and width together):

* the same size: used as it is;
* no larger in either dimension: **zero-padded, centered** (odd leftovers go to the bottom
  and right), no resampling. This is LeCun's rule for MNIST: the 28x28 digits sit in the
  middle of LeNet-5's 32x32 field so that strokes can reach the centre of the top
  feature detectors' receptive fields;
* otherwise: **resized** (bilinear, antialiased, aspect ratio kept) so that it just covers
  the target, i.e. its shorter side (relative to the target) matches, then **center-cropped**
  (torchvision's ``Resize`` + ``CenterCrop``).

Channels: grey to colour replicates the grey channel three times; colour to grey takes the
ITU-R BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` (what Pillow's ``convert("L")`` uses); an
alpha channel is dropped.

Pixel values are float32 in [0, 1] here; padding is 0 (black) before normalisation, so a
padded border looks like MNIST's own background.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

__all__ = [
    "LUMA_601",
    "FitPlan",
    "describe_channels",
    "describe_sizes",
    "fit_array",
    "plan_fit",
    "to_channels",
]

LUMA_601 = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class FitPlan(NamedTuple):
    """How one ``H x W`` image reaches ``h x w``: ``kind`` is "same", "pad" or "resize".

    For "resize", ``size`` is the intermediate (height, width) before the center crop at
    ``top``/``left``; for "pad", ``top``/``left`` are the zero rows/columns added before.
    """

    kind: str
    size: tuple[int, int]
    top: int
    left: int


def plan_fit(H: int, W: int, h: int, w: int) -> FitPlan:
    """The size rule above as pure integers (shared by arrays and PIL images)."""
    if (h, w) == (H, W):
        return FitPlan("same", (h, w), 0, 0)
    if h >= H and w >= W:
        return FitPlan("pad", (H, W), (h - H) // 2, (w - W) // 2)
    scale = max(h / H, w / W)
    nh = max(h, round(H * scale))
    nw = max(w, round(W * scale))
    return FitPlan("resize", (nh, nw), (nh - h) // 2, (nw - w) // 2)


def _resize_plane(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear, antialiased resize of one float32 plane with Pillow's mode "F"."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32))  # 2-D float32: "F"
    return np.asarray(img.resize((size[1], size[0]), Image.Resampling.BILINEAR))


def fit_array(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Fit float32 images ``[N, C, H, W]`` (all one size) to ``[N, C, h, w]`` by the rule."""
    n, c, H, W = x.shape
    plan = plan_fit(H, W, h, w)
    if plan.kind == "same":
        return x
    out = np.zeros((n, c, h, w), dtype=np.float32)
    if plan.kind == "pad":
        out[:, :, plan.top : plan.top + H, plan.left : plan.left + W] = x
        return out
    for i in range(n):
        for ch in range(c):
            big = _resize_plane(x[i, ch], plan.size)
            out[i, ch] = big[plan.top : plan.top + h, plan.left : plan.left + w]
    return out


def to_channels(x: np.ndarray, c: int) -> np.ndarray:
    """Convert float32 ``[N, C0, H, W]`` (C0 in 1, 3, 4) to ``c`` channels (1 or 3)."""
    c0 = x.shape[1]
    if c0 == 4:  # RGBA: drop alpha
        x = x[:, :3]
        c0 = 3
    if c0 == c:
        return np.ascontiguousarray(x, dtype=np.float32)
    if c0 == 1 and c == 3:
        return np.repeat(x, 3, axis=1).astype(np.float32, copy=False)
    if c0 == 3 and c == 1:
        return np.einsum("nchw,c->nhw", x, LUMA_601, dtype=np.float32)[:, None]
    raise ValueError(f"cannot convert {c0} channels to {c}")


def describe_sizes(sizes: Iterable[tuple[int, int]], h: int, w: int) -> str:
    """One phrase for how images of the given (H, W) sizes were fitted to ``h x w``."""
    counts: dict[str, int] = {"same": 0, "pad": 0, "resize": 0}
    seen: set[tuple[int, int]] = set()
    for H, W in sizes:
        seen.add((H, W))
        counts[plan_fit(H, W, h, w).kind] += 1
    if len(seen) == 1:
        (H, W) = next(iter(seen))
        plan = plan_fit(H, W, h, w)
        if plan.kind == "same":
            return f"{H}x{W} used as is"
        if plan.kind == "pad":
            lecun = ", as LeCun did for MNIST" if (H, W, h, w) == (28, 28, 32, 32) else ""
            return (
                f"{H}x{W} zero-padded to {h}x{w} ({plan.top} rows on top, {plan.left} columns "
                f"on the left, centered; no resampling{lecun})"
            )
        return (
            f"{H}x{W} resized to {plan.size[0]}x{plan.size[1]} (bilinear, aspect kept) and "
            f"center-cropped to {h}x{w}"
        )
    parts = []
    if counts["same"]:
        parts.append(f"{counts['same']} already {h}x{w}")
    if counts["pad"]:
        parts.append(f"{counts['pad']} smaller ones zero-padded (centered, no resampling)")
    if counts["resize"]:
        parts.append(
            f"{counts['resize']} resized (bilinear, aspect kept, to cover {h}x{w}) and "
            "center-cropped"
        )
    return f"mixed sizes fitted to {h}x{w}: " + ", ".join(parts)


def describe_channels(c0s: Iterable[int], c: int) -> str:
    """One phrase for the channel conversion of images with the given channel counts."""
    src = sorted(set(c0s))
    notes = []
    if 4 in src:
        notes.append("alpha dropped")
    base = {1 if c0 == 1 else 3 for c0 in src}
    if c == 3 and 1 in base:
        notes.append("grey replicated to 3 channels")
    if c == 1 and 3 in base:
        notes.append("colour converted to grey (ITU-R 601 luma 0.299 R + 0.587 G + 0.114 B)")
    name = "grey" if c == 1 else "RGB"
    return f"{name}" + (f" ({'; '.join(notes)})" if notes else "")
