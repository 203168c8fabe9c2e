"""Paths and the Digit record shared by the viz tests (imported as ``vizdata``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
MNIST = ROOT / "sample_data" / "mnist"
LENET = ROOT / "architectures" / "lenet5_modern.yaml"
#: A digit's bounding box: the pixels brighter than this (of 255).
INK = 0.2 * 255


@dataclass
class Digit:
    path: Path
    label: int
    pixels: np.ndarray  # uint8 [28, 28]
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) of the ink

    @property
    def box_area(self) -> float:
        x0, y0, x1, y1 = self.box
        return (x1 - x0) * (y1 - y0) / self.pixels.size


