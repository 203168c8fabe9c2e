"""Checkpoints: one self-contained ``.npz`` per save, written atomically, read without pickle.

Layout of the archive (what ``np.savez`` writes, uncompressed: weights barely compress and
saving should cost next to nothing per epoch):

* every entry of ``arrays`` under its own name (names may contain ``/``, e.g.
  ``param/conv1/w`` or ``optim/exp_avg/conv1/w``);
* ``__format__``: 0-d int64, :data:`FORMAT_VERSION`;
* ``__meta__``: 1-D uint8, the UTF-8 bytes of ``json.dumps(meta)``. JSON keeps Python's big
  integers exactly, so ``Generator.bit_generator.state`` (128-bit PCG64 state) goes in as it
  is; floats round-trip exactly too.

Writing goes to a temporary file in the destination's folder, is flushed and fsynced, then
``os.replace``d over the destination, so a reader sees either the old file or the new one,
never half of one, and a failed save leaves the previous checkpoint untouched.
"""

from __future__ import annotations

import json
import math
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from cnncli.errors import DataError
from cnncli.fileio import atomic_write

__all__ = [
    "FORMAT_VERSION",
    "ArrayHeader",
    "read_checkpoint_meta",
    "generator_from_state",
    "generator_state",
    "load_checkpoint",
    "save_checkpoint",
]

FORMAT_VERSION = 1
_META = "__meta__"
_FORMAT = "__format__"
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937")


def _json_default(obj: Any) -> Any:
    """Let NumPy scalars and small arrays (MT19937's key) into the JSON meta."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"checkpoint meta: {type(obj).__name__} is not JSON-serialisable")


def save_checkpoint(
    path: str | Path, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]
) -> Path:
    """Write ``arrays`` and the JSON-serialisable ``meta`` to ``path`` atomically.

    Raises TypeError/ValueError for arrays or meta that cannot be stored (a bug in the
    caller) and CnnError when the file cannot be written (disk full, no permission).
    """
    path = Path(path)
    out: dict[str, np.ndarray] = {}
    for name, a in arrays.items():
        if name in (_META, _FORMAT) or not name:
            raise ValueError(f"checkpoint: array name {name!r} is reserved")
        a = np.asarray(a)
        if a.dtype.hasobject:
            raise TypeError(f"checkpoint: array '{name}' has dtype object (needs pickle)")
        out[name] = a
    text = json.dumps(dict(meta), default=_json_default)
    out[_META] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    out[_FORMAT] = np.array(FORMAT_VERSION, dtype=np.int64)

    atomic_write(path, lambda f: _write_npz(f, out), what="checkpoint")
    return path


def _write_npz(f: Any, arrays: Mapping[str, np.ndarray]) -> None:
    """What ``np.savez`` does, minus its keyword clash (an array named "file") and pickle."""
    with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, a in arrays.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, a, allow_pickle=False)


class ArrayHeader(NamedTuple):
    """What a member's ``.npy`` header declares, read before any of its data."""

    shape: tuple[int, ...]
    dtype: np.dtype


#: Checks the meta and the declared arrays before their data is read (raises DataError).
HeaderCheck = Callable[[dict[str, Any], dict[str, ArrayHeader]], None]


def load_checkpoint(
    path: str | Path, *, check: HeaderCheck | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a checkpoint: ``(arrays, meta)``; DataError naming the file if it is unusable.

    Only a regular file is opened. Every member's header is read first and must declare
    exactly the bytes the member holds, and ``check(meta, headers)`` (e.g. against the
    spec's shapes) runs before any array data is read: a header declaring a
    10^7 x 10^7 array fails at once instead of asking for 400 TB. Every array is then read in
    full, so a truncated or bit-flipped file fails now (zip CRC) rather than halfway through
    restoring a model.
    """
    with _Archive(path) as archive:
        meta = archive.meta()
        if check is not None:
            check(meta, archive.headers)
        return archive.read_arrays(), meta


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """Only the meta of a checkpoint (its arrays' headers are checked, their data not read)."""
    with _Archive(path) as archive:
        return archive.meta()


class _Archive:
    """An open checkpoint: the zip directory and every member's declared array header."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __enter__(self) -> _Archive:
        from cnncli.fileio import FileReadError, open_regular

        path = self.path
        try:
            self.fh = open_regular(path, "checkpoint")
        except FileReadError as exc:
            reason = "is a folder, expected a checkpoint .npz file" \
                if exc.reason.startswith("is a folder") else exc.reason
            raise DataError(f"{path}: {reason}") from None
        try:
            self.zf = zipfile.ZipFile(self.fh)
            self.headers, self.members = self._read_headers()
        except BaseException as exc:
            self.fh.close()
            if isinstance(exc, DataError):
                raise
            if isinstance(exc, zipfile.BadZipFile) and "not a zip file" in str(exc).lower():
                raise DataError(f"{path}: not a checkpoint (not an .npz archive, or "
                                "truncated)") from None
            if isinstance(exc, _READ_ERRORS):
                raise DataError(f"{path}: corrupt or truncated checkpoint ({exc})") from None
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.zf.close()
        self.fh.close()

    def _read_headers(self) -> tuple[dict[str, ArrayHeader], dict[str, zipfile.ZipInfo]]:
        headers: dict[str, ArrayHeader] = {}
        members: dict[str, zipfile.ZipInfo] = {}
        for info in self.zf.infolist():
            if info.is_dir():
                continue
            if not info.filename.endswith(".npy"):
                raise DataError(f"{self.path}: not a cnncli checkpoint (member "
                                f"'{info.filename}' is not an array)")
            name = info.filename[:-4]
            with self.zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _fortran, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, _fortran, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise ValueError(f"array '{name}': unsupported .npy version {version}")
                if dtype.hasobject:
                    raise ValueError(f"array '{name}' holds Python objects (pickle), which "
                                     "is never loaded")
                declared = math.prod(shape) * dtype.itemsize
                held = info.file_size - f.tell()
            if declared != held:
                dims = "x".join(map(str, shape)) or "scalar"
                raise DataError(f"{self.path}: corrupt checkpoint: array '{name}' declares "
                                f"{dims} {dtype} ({declared:,} bytes) but holds {held:,}")
            headers[name] = ArrayHeader(tuple(shape), dtype)
            members[name] = info
        if _FORMAT not in headers or _META not in headers:
            raise DataError(f"{self.path}: not a cnncli checkpoint (no {_FORMAT}/{_META} "
                            "entries)")
        return headers, members

    def _read(self, name: str) -> np.ndarray:
        try:
            with self.zf.open(self.members[name]) as f:
                return np.lib.format.read_array(f, allow_pickle=False)
        except _READ_ERRORS as exc:
            raise DataError(f"{self.path}: corrupt or truncated checkpoint ({exc})") from None

    def meta(self) -> dict[str, Any]:
        path = self.path
        version = self._read(_FORMAT)
        if version.shape != () or version.dtype.kind not in "iu":
            raise DataError(f"{path}: bad checkpoint format version")
        if int(version) > FORMAT_VERSION:
            raise DataError(
                f"{path}: checkpoint format {int(version)} is newer than this cnncli reads "
                f"({FORMAT_VERSION}); upgrade cnncli"
            )
        raw = self._read(_META)
        try:
            if raw.dtype != np.uint8 or raw.ndim != 1:
                raise ValueError("meta is not a byte string")
            meta = json.loads(raw.tobytes().decode("utf-8"))
            if not isinstance(meta, dict):
                raise ValueError("meta is not a JSON object")
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise DataError(f"{path}: corrupt checkpoint metadata ({exc})") from None
        return meta

    def read_arrays(self) -> dict[str, np.ndarray]:
        return {name: self._read(name) for name in self.headers if name not in (_META, _FORMAT)}


_READ_ERRORS = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error,
                NotImplementedError, RuntimeError)


def generator_state(rng: np.random.Generator) -> dict[str, Any]:
    """The generator's state as a JSON-ready dict (``bit_generator.state``, arrays listed)."""
    return json.loads(json.dumps(rng.bit_generator.state, default=_json_default))


def generator_from_state(state: Mapping[str, Any]) -> np.random.Generator:
    """A Generator continuing exactly where the one whose ``bit_generator.state`` was saved.

    DataError for a state that is not one of NumPy's bit generators or does not fit it.
    """
    name = state.get("bit_generator") if isinstance(state, Mapping) else None
    if name not in _BIT_GENERATORS:
        raise DataError(f"checkpoint: unknown random generator {name!r}")
    bit_gen = getattr(np.random, name)()
    st = dict(state)
    try:
        if name == "MT19937":
            inner = dict(st["state"])
            inner["key"] = np.asarray(inner["key"], dtype=np.uint32)
            st["state"] = inner
        bit_gen.state = st
    except (TypeError, ValueError, KeyError) as exc:
        raise DataError(f"checkpoint: bad random generator state ({exc})") from None
    return np.random.Generator(bit_gen)
