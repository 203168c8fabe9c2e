"""What a format reader hands to :func:`cnncli.data.dataset.load_dataset`.

Readers (IDX, npz, image folders) only decode; the loader checks counts and labels, fits
sizes and channels, splits and normalises, once for every format. Each split remembers the
files it came from so that every error can name one.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from cnncli.errors import DataError

__all__ = ["RawSplit", "Source", "labels_to_int64"]


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
    warnings: tuple[str, ...] = ()  # e.g. entries of an image folder that are not regular files


def labels_to_int64(y: np.ndarray, where: str) -> np.ndarray:
    """Class-index labels as int64 ``[N]`` (``[N, 1]`` flattened); whole-number floats are
    accepted. A label too large for a class index is an error here, before the cast could
    wrap it (uint64 ``2**63 + 5`` is not "negative")."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{where}: labels have shape {y.shape}, expected [N] (class indices)")
    if y.dtype.kind in "uif" and y.size:
        big = np.flatnonzero(np.abs(y) > _MAX_LABEL) if y.dtype.kind != "u" else \
            np.flatnonzero(y > _MAX_LABEL)
        if big.size:
            i = int(big[0])
            value = int(y[i]) if y.dtype.kind in "ui" else float(y[i])
            raise DataError(f"{where}: label {value} at index {i} is not a class index "
                            "(labels are 0..K-1 for K classes)")
    if y.dtype.kind in "ui":
        return y.astype(np.int64)
    if y.dtype.kind == "f" and np.isfinite(y).all() and (y == np.round(y)).all():
        return y.astype(np.int64)
    raise DataError(f"{where}: labels must be whole numbers, got dtype {y.dtype}")


_MAX_LABEL = 2**31  # no network has that many classes; every label above is a mistake
