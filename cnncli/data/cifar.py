"""CIFAR-10 and CIFAR-100 in their binary format, read natively (never through pickle).

The "binary version" of both data sets is a folder of fixed-size records, one per image: the
label byte(s), then 3072 pixel bytes, the 1024 red values of the 32x32 image row by row, then
the green and the blue ones (so a record's pixels are already [C, H, W]).

* CIFAR-10: ``data_batch_1.bin`` ... ``data_batch_5.bin`` (train, 10,000 records each),
  ``test_batch.bin``; one label byte 0-9; class names in ``batches.meta.txt``, one a line.
* CIFAR-100: ``train.bin``, ``test.bin``; two label bytes, coarse (0-19) then fine (0-99);
  names in ``coarse_label_names.txt`` and ``fine_label_names.txt``. Which label is used follows
  the network: 20 outputs take the coarse labels, anything else the fine ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnncli.data.source import RawSplit, Source
from cnncli.errors import DataError

PIXELS = 3 * 32 * 32


def is_cifar_folder(folder: Path) -> bool:
    """Whether ``folder`` holds CIFAR-10 or CIFAR-100 binary batches."""
    return bool(_cifar10_files(folder)) or (folder / "train.bin").is_file()


def _cifar10_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("data_batch_*.bin"), key=lambda p: (len(p.name), p.name))


def _records(path: Path, label_bytes: int) -> np.ndarray:
    """The file's records as a uint8 [N, label_bytes + 3072] array; DataError if it is not
    a whole number of records."""
    size = label_bytes + PIXELS
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if data.size == 0 or data.size % size:
        raise DataError(f"{path}: {data.size} bytes is not a whole number of CIFAR records of "
                        f"{size} bytes ({label_bytes} label byte(s) + 3072 pixels)")
    return data.reshape(-1, size)


def _split(paths: list[Path], label_bytes: int, label_index: int, classes: int) -> RawSplit:
    recs = np.concatenate([_records(p, label_bytes) for p in paths])
    y = recs[:, label_index].astype(np.int64)
    bad = np.flatnonzero(y >= classes)
    if bad.size:
        raise DataError(f"{paths[0].parent}: record {int(bad[0])} has label {int(y[bad[0]])}, "
                        f"but the data set has {classes} classes")
    x = recs[:, label_bytes:].reshape(-1, 3, 32, 32).astype(np.float32)
    x *= np.float32(1.0 / 255.0)
    where = str(paths[0]) if len(paths) == 1 else f"{paths[0].parent}/{paths[0].name}..."
    return RawSplit(x, y, where, where)


def _names(path: Path, count: int) -> list[str]:
    if not path.is_file():
        return [str(i) for i in range(count)]
    names = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if len(names) != count:
        raise DataError(f"{path}: {len(names)} class names, expected {count}")
    return names


def read_cifar_folder(folder: Path, num_classes: int | None = None) -> Source:
    """The train (and test, when present) splits of a CIFAR-10 or CIFAR-100 binary folder."""
    batches = _cifar10_files(folder)
    if batches:
        splits = {"train": _split(batches, 1, 0, 10)}
        if (folder / "test_batch.bin").is_file():
            splits["test"] = _split([folder / "test_batch.bin"], 1, 0, 10)
        classes = _names(folder / "batches.meta.txt", 10)
        kind = "CIFAR-10"
    else:
        coarse = num_classes == 20
        index, count = (0, 20) if coarse else (1, 100)
        splits = {"train": _split([folder / "train.bin"], 2, index, count)}
        if (folder / "test.bin").is_file():
            splits["test"] = _split([folder / "test.bin"], 2, index, count)
        names = "coarse_label_names.txt" if coarse else "fine_label_names.txt"
        classes = _names(folder / names, count)
        kind = f"CIFAR-100 ({'coarse' if coarse else 'fine'} labels)"
    counts = ", ".join(f"{k} {len(s.y)}" for k, s in splits.items())
    return Source("cifar", splits, classes, f"{kind} binary batches in {folder} ({counts} images)")
