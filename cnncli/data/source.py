"""What a format reader hands to :func:`cnncli.data.dataset.load_dataset`.

Readers (IDX, npz, image folders) only decode; the loader checks counts and labels, fits
sizes and channels, splits and normalises, once for every format. Each split remembers the
files it came from so that every error can name one.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["RawSplit", "Source"]


class RawSplit(NamedTuple):
    """One split as read: images float32 ``[N, C, H, W]`` in [0, 1], labels integers ``[N]``.

    ``x_file``/``y_file`` name the sources of images and labels for error messages (the
    same file for an npz, a folder for image folders).
    """

    x: np.ndarray
    y: np.ndarray
    x_file: str
    y_file: str


class Source(NamedTuple):
    """A decoded dataset: ``splits`` has "train" and optionally "test" and "val".

    ``classes`` is None when the format has no names (labels 0..K-1 then name themselves).
    ``fitted`` is True when the reader already fitted images to the target size and
    channels (image folders, whose images differ in size); ``note`` says what was read and,
    when fitted, how.
    """

    kind: str
    splits: dict[str, RawSplit]
    classes: list[str] | None
    note: str
    fitted: bool = False
