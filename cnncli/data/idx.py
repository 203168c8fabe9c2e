"""MNIST-style IDX files (LeCun's format), gzipped or not.

An IDX file is a 4-byte magic number ``00 00 <type> <ndim>``, then ``ndim`` big-endian
uint32 sizes, then the data in C order, big-endian. MNIST images have magic 2051
(``0x00000803``: unsigned bytes, 3 dimensions N x rows x cols) and labels 2049
(``0x00000801``: unsigned bytes, 1 dimension). Gzip is detected from the content (its
``1f 8b`` signature), not the file name. The data must fill the file exactly, so a truncated
or padded file is an error rather than silently short.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from cnncli.errors import DataError

__all__ = ["IMAGES_MAGIC", "LABELS_MAGIC", "read_idx", "read_idx_images", "read_idx_labels"]

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049

# IDX type byte -> big-endian NumPy dtype
_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when they start with the gzip signature."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected an IDX file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip data ({exc})") from None


def read_idx(path: str | Path, magic: int | None = None) -> np.ndarray:
    """Read any IDX file into an array of its native type (native byte order).

    ``magic``, when given, is the exact magic number required (2051 or 2049 for MNIST).
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: not an IDX file (only {len(data)} bytes)")
    found = int.from_bytes(data[:4], "big")
    if data[0] != 0 or data[1] != 0 or data[2] not in _TYPES or data[3] == 0:
        raise DataError(f"{path}: not an IDX file (magic number {found})")
    if magic is not None and found != magic:
        raise DataError(f"{path}: IDX magic number is {found}, expected {magic}")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_TYPES[data[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header
    if actual != expected:
        dims = "x".join(map(str, shape))
        what = "truncated" if actual < expected else "has trailing bytes"
        raise DataError(
            f"{path}: {what}: header says {dims} ({expected} data bytes), found {actual}"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))


def read_idx_images(path: str | Path) -> np.ndarray:
    """MNIST images (magic 2051) as uint8 ``[N, H, W]``."""
    return read_idx(path, IMAGES_MAGIC)


def read_idx_labels(path: str | Path) -> np.ndarray:
    """MNIST labels (magic 2049) as int64 ``[N]``."""
    from cnncli.data.source import labels_to_int64

    return labels_to_int64(read_idx(path, LABELS_MAGIC), str(path))
