"""NumPy ``.npz`` datasets: ``x_train``, ``y_train`` and optionally ``x_test``, ``y_test``.

Loaded with ``allow_pickle=False``. An optional ``class_names`` (1-D string array) names the
classes; without it the classes are 0..K-1 with K = largest label + 1.

Image layout rule:

* 3-D ``x``: ``[N, H, W]``, grey;
* 4-D ``x``: channels-last ``[N, H, W, C]`` when the last axis has 1, 3 or 4 entries,
  else channels-first ``[N, C, H, W]`` when axis 1 has 1, 3 or 4 entries, else an error.
  Channels-last wins when both could be channels (Keras and PIL store images that way).
  4 channels are RGBA; alpha is dropped.

Value rule: unsigned and signed integer images are divided by their type's maximum (255 for
uint8, 65535 for uint16); float images are taken as they are (expected in [0, 1]; anything
else is still fine after normalisation). Labels must be integers (or floats holding whole
numbers).
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from cnncli.data.source import RawSplit, Source, labels_to_int64
from cnncli.errors import DataError

__all__ = ["images_to_nchw", "read_npz"]

_CHANNELS = (1, 3, 4)


def images_to_nchw(x: np.ndarray, where: str) -> tuple[np.ndarray, str]:
    """Float32 ``[N, C, H, W]`` in [0, 1] from an array laid out as the rule says."""
    if x.ndim in (3, 4) and 0 in x.shape[1:]:
        raise DataError(f"{where}: images have shape {x.shape}, with no pixels (an empty "
                        "height, width or channel axis)")
    if x.ndim == 3:
        x = x[:, None]
        layout = "N,H,W"
    elif x.ndim == 4 and x.shape[3] in _CHANNELS:
        x = x.transpose(0, 3, 1, 2)
        layout = "N,H,W,C"
    elif x.ndim == 4 and x.shape[1] in _CHANNELS:
        layout = "N,C,H,W"
    else:
        raise DataError(
            f"{where}: images have shape {x.shape}; expected N,H,W or N,H,W,C or N,C,H,W "
            "with C in 1, 3, 4"
        )
    if x.dtype.kind in "ui":
        scale = np.float32(1.0 / np.iinfo(x.dtype).max)
        out = x.astype(np.float32) * scale
    elif x.dtype.kind == "f" or x.dtype.kind == "b":
        out = x.astype(np.float32)
    else:
        raise DataError(f"{where}: images have dtype {x.dtype}, expected numbers")
    if not np.isfinite(out).all():
        raise DataError(f"{where}: images contain NaN or infinite values")
    return np.ascontiguousarray(out), layout


def read_npz(path: Path) -> Source:
    """Read an ``.npz`` dataset (see the module docstring for the rules)."""
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        if not zipfile.is_zipfile(path):
            raise DataError(f"{path}: not an .npz archive (not a zip file, or truncated)")
        with np.load(path, allow_pickle=False) as z:
            names = set(z.files)
            need = {"x_train", "y_train"}
            if not need <= names:
                raise DataError(
                    f"{path}: needs arrays x_train and y_train (and optionally x_test, "
                    f"y_test); found {', '.join(sorted(names)) or 'none'}"
                )
            if ("x_test" in names) != ("y_test" in names):
                raise DataError(f"{path}: has only one of x_test and y_test")
            arrays = {k: z[k] for k in names & {"x_train", "y_train", "x_test", "y_test"}}
            class_names = z["class_names"] if "class_names" in names else None
    except DataError:
        raise
    except ValueError as exc:  # pickled object arrays, not an npz at all
        raise DataError(f"{path}: not a valid .npz without pickled objects ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated .npz ({exc})") from None
    where = str(path)
    classes = None
    if class_names is not None:
        if class_names.ndim != 1 or class_names.dtype.kind not in "US":
            raise DataError(f"{path}: class_names must be a 1-D array of strings")
        classes = [str(s) for s in class_names.tolist()]
    splits = {}
    layouts = set()
    for split in ("train", "test"):
        if f"x_{split}" not in arrays:
            continue
        x, layout = images_to_nchw(arrays[f"x_{split}"], f"{where} (x_{split})")
        y = labels_to_int64(arrays[f"y_{split}"], f"{where} (y_{split})")
        layouts.add(layout)
        splits[split] = RawSplit(x, y, f"{where} (x_{split})", f"{where} (y_{split})")
    counts = ", ".join(f"{k} {len(s.y)}" for k, s in splits.items())
    note = f"npz {path} ({counts} images, layout {'/'.join(sorted(layouts))})"
    return Source("npz", splits, classes, note)
