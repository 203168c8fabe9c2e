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
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cnncli.errors import DataError
from cnncli.fileio import atomic_write

__all__ = [
    "FORMAT_VERSION",
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




def load_checkpoint(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a checkpoint: ``(arrays, meta)``; DataError naming the file if it is unusable.

    Every array is read in full here, so a truncated or bit-flipped file fails now (zip CRC)
    rather than halfway through restoring a model.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: checkpoint not found")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a checkpoint .npz file")
    try:
        if not zipfile.is_zipfile(path):
            raise DataError(f"{path}: not a checkpoint (not an .npz archive, or truncated)")
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
    except DataError:
        raise
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated checkpoint ({exc})") from None
    if _FORMAT not in arrays or _META not in arrays:
        raise DataError(f"{path}: not a cnncli checkpoint (no {_FORMAT}/{_META} entries)")
    version = arrays.pop(_FORMAT)
    if version.shape != () or version.dtype.kind not in "iu":
        raise DataError(f"{path}: bad checkpoint format version")
    if int(version) > FORMAT_VERSION:
        raise DataError(
            f"{path}: checkpoint format {int(version)} is newer than this cnncli reads "
            f"({FORMAT_VERSION}); upgrade cnncli"
        )
    raw = arrays.pop(_META)
    try:
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise ValueError("meta is not a byte string")
        meta = json.loads(raw.tobytes().decode("utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("meta is not a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: corrupt checkpoint metadata ({exc})") from None
    return arrays, meta


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
