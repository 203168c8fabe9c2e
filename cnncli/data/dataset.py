"""Datasets for training: load any supported source, fit it to the network, split, normalise.

``load_dataset`` looks at what ``path`` holds:

* a folder with MNIST-style IDX files (``train-images-idx3-ubyte[.gz]``,
  ``train-labels-idx1-ubyte[.gz]``, optionally ``t10k-*`` or ``test-*``): :mod:`.idx`;
* a folder of CIFAR-10 or CIFAR-100 binary batches (``data_batch_*.bin``, ``test_batch.bin``;
  ``train.bin``, ``test.bin``): :mod:`.cifar`;
* an ``.npz`` file (``x_train``, ``y_train``, ``x_test``, ``y_test``): :mod:`.npz`;
* a folder of class subfolders (optionally under ``train/``, ``val/``, ``test/``): :mod:`.folders`.

Every image is fitted to the network's input by the rule in :mod:`.fit` (smaller: zero-pad,
centered; larger: resize to cover and center-crop; grey/colour converted), then normalised
per channel by the mean and standard deviation of the fitted TRAINING split (after the
validation split is carved out; population std). The rule actually applied comes back as
``DataSplits.fit_rule``, a sentence for the CLI to print.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnncli.data.fit import describe_channels, describe_sizes, fit_array, to_channels
from cnncli.data.source import RawSplit, Source
from cnncli.errors import CnnError, DataError

__all__ = [
    "DataSplits",
    "Dataset",
    "Normalizer",
    "batches",
    "detect_format",
    "load_dataset",
    "num_batches",
]

# (split, images pattern, labels pattern): lower-cased file-name prefixes and IDX markers
_IDX_FILES = {
    "train": (("train-images",), ("train-labels",)),
    "test": (("t10k-images", "test-images"), ("t10k-labels", "test-labels")),
}


@dataclass
class Dataset:
    """Images ``x`` float32 ``[N, C, H, W]`` (fitted and normalised) and labels ``y`` int64."""

    x: np.ndarray
    y: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class Normalizer:
    """Per-channel ``(x - mean) / std``; float64 statistics, applied in float32.

    Stored with the model (``to_dict``) so that evaluation and prediction use the training
    statistics, never their own data's.
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, chunk_elems: int = 1 << 22) -> Normalizer:
        """Mean and population std per channel of ``[N, C, H, W]``: two float64 passes over
        chunks of about ``chunk_elems`` values (exact enough, bounded memory)."""
        n, c = x.shape[:2]
        per_image = max(1, int(np.prod(x.shape[1:])))
        count = n * per_image // max(c, 1)
        if count == 0:
            raise DataError("cannot compute normalisation statistics of no images")
        step = max(1, chunk_elems // per_image)
        total = np.zeros(c)
        for i in range(0, n, step):
            total += x[i : i + step].astype(np.float64).reshape(-1, c, per_image // c).sum(2).sum(0)
        mean = total / count
        sq = np.zeros(c)
        for i in range(0, n, step):
            d = x[i : i + step].astype(np.float64).reshape(-1, c, per_image // c)
            d -= mean[:, None]
            np.square(d, out=d)
            sq += d.sum(2).sum(0)
        std = np.sqrt(sq / count)
        std[std < 1e-12] = 1.0  # a constant channel: centre it, don't blow it up
        return cls(mean, std)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Normalise float32 ``[N, C, H, W]`` IN PLACE and return it."""
        if x.ndim != 4 or x.shape[1] != self.mean.shape[0]:
            raise DataError(
                f"normalisation has {self.mean.shape[0]} channels, images have shape {x.shape}"
            )
        np.subtract(x, self.mean.astype(np.float32)[:, None, None], out=x)
        np.divide(x, self.std.astype(np.float32)[:, None, None], out=x)
        return x

    def to_dict(self) -> dict[str, list[float]]:
        """JSON-ready ``{"mean": [...], "std": [...]}`` (floats round-trip exactly)."""
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "normalisation") -> Normalizer:
        """The inverse of :meth:`to_dict`; ``where`` (the checkpoint) starts any error."""
        short = repr(d) if len(repr(d)) <= 80 else repr(d)[:77] + "..."
        try:
            mean = np.asarray(d["mean"], dtype=np.float64)
            std = np.asarray(d["std"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{where}: bad normalisation record {short} ({exc})") from None
        if (mean.ndim != 1 or mean.shape != std.shape or not mean.size
                or not np.isfinite(mean).all() or not np.isfinite(std).all()
                or not (std > 0).all()):
            raise DataError(f"{where}: bad normalisation record {short} (needs one finite "
                            "mean and one positive std per channel)")
        return cls(mean, std)

    def describe(self) -> str:
        fmt = ", ".join
        return (
            f"mean {fmt(f'{v:.4f}' for v in self.mean)} and std {fmt(f'{v:.4f}' for v in self.std)}"
        )


@dataclass
class DataSplits:
    """What ``load_dataset`` returns. ``val``/``test`` are None when there is none.

    ``fit_rule`` is the human-readable account of what was read and how it was fitted and
    normalised; ``normalizer`` is the one applied (store its ``to_dict()`` in checkpoints).
    """

    train: Dataset
    val: Dataset | None
    test: Dataset | None
    classes: list[str]
    fit_rule: str
    normalizer: Normalizer
    source: str
    warnings: list[str] = field(default_factory=list)  # e.g. skipped non-regular files


def _find(folder: Path, prefixes: Sequence[str], marker: str) -> Path | None:
    hits = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.name.lower().startswith(prefixes) and marker in p.name.lower()
    )
    return hits[0] if hits else None


def _idx_files(folder: Path) -> dict[str, tuple[Path | None, Path | None]]:
    return {
        split: (_find(folder, imgs, "idx3"), _find(folder, labs, "idx1"))
        for split, (imgs, labs) in _IDX_FILES.items()
    }


def detect_format(path: Path) -> str:
    """ "idx", "cifar", "npz" or "folder" for what ``path`` holds; DataError if none."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return "npz"
        raise DataError(f"{path}: unknown data format (expected an .npz file or a folder)")
    try:
        files = _idx_files(path)
        if any(f is not None for pair in files.values() for f in pair):
            return "idx"
        from cnncli.data.cifar import is_cifar_folder

        if is_cifar_folder(path):
            return "cifar"
        from cnncli.data.folders import is_image_folder

        if is_image_folder(path):
            return "folder"
    except OSError as exc:
        raise DataError(f"{path}: cannot read folder ({exc.strerror or exc})") from None
    raise DataError(
        f"{path}: unknown data format (no MNIST IDX files, no CIFAR .bin batches, no .npz, "
        "no class subfolders with images)"
    )


def _read_idx_folder(folder: Path) -> Source:
    from cnncli.data.idx import read_idx_images, read_idx_labels

    splits = {}
    for split, (img, lab) in _idx_files(folder).items():
        if img is None and lab is None:
            continue
        if img is None or lab is None:
            kind = "images (*-idx3-ubyte[.gz])" if img is None else "labels (*-idx1-ubyte[.gz])"
            have = lab if img is None else img
            raise DataError(f"{folder}: found {have.name} but no matching {split} {kind} file")
        x = read_idx_images(img)
        y = read_idx_labels(lab)
        xf = x[:, None].astype(np.float32) * np.float32(1.0 / 255.0)
        splits[split] = RawSplit(xf, y, str(img), str(lab))
    if "train" not in splits:
        raise DataError(f"{folder}: has no train-images/train-labels IDX files")
    counts = ", ".join(f"{k} {len(s.y)}" for k, s in splits.items())
    return Source("idx", splits, None, f"MNIST IDX files in {folder} ({counts} images)")


def _check_split(name: str, s: RawSplit, n_classes: int | None) -> None:
    if s.x.shape[0] != s.y.shape[0]:
        where = s.x_file if s.x_file == s.y_file else f"{s.x_file} / {s.y_file}"
        raise DataError(
            f"{where}: {s.x.shape[0]} images but {s.y.shape[0]} labels in the {name} split"
        )
    if s.y.shape[0] == 0:
        raise DataError(f"{s.x_file}: the {name} split has no images")
    if 0 in s.x.shape[2:]:
        raise DataError(f"{s.x_file}: the {name} split's images are "
                        f"{s.x.shape[2]}x{s.x.shape[3]} pixels (no pixels to train on)")
    if s.x.dtype.kind == "f" and not np.isfinite(s.x).all():
        i = int(np.flatnonzero(~np.isfinite(s.x).reshape(len(s.x), -1).all(axis=1))[0])
        raise DataError(f"{s.x_file}: image {i} of the {name} split holds NaN or infinite "
                        "values")
    bad = np.flatnonzero(s.y < 0)
    if bad.size:
        raise DataError(f"{s.y_file}: negative label {s.y[bad[0]]} at index {bad[0]}")
    if n_classes is not None:
        bad = np.flatnonzero(s.y >= n_classes)
        if bad.size:
            raise DataError(
                f"{s.y_file}: label {s.y[bad[0]]} at index {bad[0]} is out of range "
                f"0..{n_classes - 1} (the network has {n_classes} outputs)"
            )


def _val_indices(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Stratified: round(fraction * n_c) of each class, at least one left for training."""
    rng = np.random.default_rng([seed, 1])  # its own stream, independent of training's
    picked = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = min(int(round(fraction * idx.size)), idx.size - 1)
        picked.append(rng.permutation(idx)[:k])
    return np.sort(np.concatenate(picked))


def load_dataset(
    path: str | Path,
    input_hwc: tuple[int, int, int],
    val_split: float = 0.0,
    seed: int = 0,
    *,
    normalizer: Normalizer | None = None,
    num_classes: int | None = None,
) -> DataSplits:
    """Load, fit to ``input_hwc`` = (H, W, C) with C 1 or 3, split and normalise a dataset.

    ``val_split`` carves a stratified fraction of the training split (drawn from
    ``default_rng([seed, 1])``) unless the source has its own ``val/`` folder.
    ``normalizer`` (from a checkpoint) is applied instead of fitting a new one.
    ``num_classes`` (the network's output size) makes labels >= it, or a different number of
    named classes, an error.
    """
    path = Path(path)
    val_split = float(val_split or 0.0)
    h, w, c = (int(v) for v in input_hwc)
    if h < 1 or w < 1 or c not in (1, 3):
        raise CnnError(f"input size must be HxWx1 or HxWx3, got {h}x{w}x{c}")
    if not 0.0 <= val_split < 1.0:
        raise CnnError(f"validation split must be in [0, 1), got {val_split}")
    fmt = detect_format(path)
    if fmt == "npz":
        from cnncli.data.npz import read_npz

        src = read_npz(path)
    elif fmt == "idx":
        src = _read_idx_folder(path)
    elif fmt == "cifar":
        from cnncli.data.cifar import read_cifar_folder

        src = read_cifar_folder(path, num_classes)
    else:
        from cnncli.data.folders import read_image_folder

        src = read_image_folder(path, h, w, c)

    # classes: named by the source, or 0..K-1 from the spec or the training labels
    if src.classes is not None:
        classes = list(src.classes)
        if num_classes is not None and len(classes) != num_classes:
            raise DataError(
                f"{path}: has {len(classes)} classes but the network has {num_classes} outputs"
            )
    n_known = len(classes) if src.classes is not None else num_classes
    train_raw = src.splits["train"]
    _check_split("train", train_raw, n_known)
    if src.classes is None:
        k = num_classes if num_classes is not None else int(train_raw.y.max()) + 1
        classes = [str(i) for i in range(k)]
    for name, s in src.splits.items():
        if name != "train":
            _check_split(name, s, len(classes))

    # fit sizes and channels (image folders did it per image while reading)
    notes = [src.note]
    fitted: dict[str, np.ndarray] = {}
    for name, s in src.splits.items():
        fitted[name] = s.x if src.fitted else fit_array(to_channels(s.x, c), h, w)
    if not src.fitted:
        sizes = {s.x.shape[2:] for s in src.splits.values()}
        c0s = {s.x.shape[1] for s in src.splits.values()}
        notes.append(describe_sizes(sorted(sizes), h, w))  # type: ignore[arg-type]
        notes.append(describe_channels(c0s, c))

    # validation split
    x_tr, y_tr = fitted["train"], src.splits["train"].y
    val: Dataset | None = None
    if "val" in src.splits:
        val = Dataset(fitted["val"], src.splits["val"].y, classes)
        if val_split:
            notes.append("validation: the val/ folder (the val split fraction is ignored)")
    elif val_split:
        vi = _val_indices(y_tr, val_split, seed)
        if vi.size == 0:
            raise DataError(f"{path}: validation split {val_split} leaves no validation images")
        keep = np.ones(y_tr.size, dtype=bool)
        keep[vi] = False
        val = Dataset(x_tr[vi], y_tr[vi], classes)
        x_tr, y_tr = x_tr[keep], y_tr[keep]
        notes.append(
            f"validation: {vi.size} images held out of the training split (fraction "
            f"{val_split:g}, stratified by class, seed {seed})"
        )
    train = Dataset(np.ascontiguousarray(x_tr), y_tr, classes)
    test = Dataset(fitted["test"], src.splits["test"].y, classes) if "test" in fitted else None

    # normalisation from the training split only
    if normalizer is None:
        normalizer = Normalizer.fit(train.x)
        notes.append(f"normalised per channel by the training split's {normalizer.describe()}")
    else:
        notes.append(f"normalised per channel by the saved {normalizer.describe()}")
    for ds in (train, val, test):
        if ds is not None:
            if not ds.x.flags.writeable or not ds.x.flags.c_contiguous:
                ds.x = np.ascontiguousarray(ds.x, dtype=np.float32).copy()
            normalizer.apply(ds.x)
    return DataSplits(train, val, test, classes, "; ".join(notes), normalizer, src.kind,
                      list(src.warnings))


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """How many batches ``batches`` yields for ``n`` images."""
    return n // batch_size if drop_last else -(-n // batch_size)


def batches(
    dataset: Dataset,
    batch_size: int,
    rng: np.random.Generator | None = None,
    shuffle: bool = True,
    drop_last: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Iterate ``(x, y)`` mini-batches copied into two preallocated buffers.

    The shuffle order is drawn NOW (one ``rng.permutation(N)`` call), not when iteration
    starts, so the generator's state after this call is the same whether or not the epoch
    is run to the end: checkpoints taken at an epoch boundary resume exactly.
    The yielded arrays are the same buffers every time (the last batch a view of their
    first rows): use them before asking for the next batch and do not keep them.
    """
    if batch_size < 1:
        raise CnnError(f"batch size must be >= 1, got {batch_size}")
    n = len(dataset)
    if shuffle:
        if rng is None:
            raise ValueError("batches: shuffle=True needs a numpy.random.Generator")
        order = rng.permutation(n)
    else:
        order = None
    size = min(batch_size, n)
    xbuf = np.empty((size, *dataset.x.shape[1:]), dtype=np.float32)
    ybuf = np.empty(size, dtype=np.int64)
    return _iterate(dataset, order, xbuf, ybuf, num_batches(n, batch_size, drop_last))


def _iterate(
    ds: Dataset, order: np.ndarray | None, xbuf: np.ndarray, ybuf: np.ndarray, count: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    bs = xbuf.shape[0]
    n = len(ds)
    for b in range(count):
        lo = b * bs
        k = min(bs, n - lo)
        xb, yb = xbuf[:k], ybuf[:k]
        if order is None:
            np.copyto(xb, ds.x[lo : lo + k])
            np.copyto(yb, ds.y[lo : lo + k])
        else:
            idx = order[lo : lo + k]
            np.take(ds.x, idx, axis=0, out=xb, mode="clip")
            np.take(ds.y, idx, axis=0, out=yb, mode="clip")
        yield xb, yb
