"""Checkpoints: exact round trips (RNG included), atomic writes, corrupt and truncated files."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

import cnncli.checkpoint as ckpt
import cnncli.fileio as fileio
from cnncli.checkpoint import (
    FORMAT_VERSION,
    generator_from_state,
    generator_state,
    load_checkpoint,
    save_checkpoint,
)
from cnncli.errors import CnnError, DataError
from cnncli.optim import make_optimizer


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "param/conv1/w": rng.standard_normal((6, 1, 5, 5)).astype(np.float32),
        "param/conv1/b": np.zeros(6, np.float32),
        "bn/running_var": rng.random(3),
        "optim/step": np.array(7, dtype=np.int64),
        "file": np.arange(3),  # a name that would clash with np.savez's own argument
    }


def test_round_trip_arrays_and_meta(tmp_path: Path) -> None:
    rng = np.random.default_rng(42)
    rng.standard_normal(5)
    meta = {
        "spec": "name: lenet5\nlayers: []\n",
        "classes": ["0", "1", "ünï"],
        "epoch": 3,
        "lr": 0.1 + 0.2,  # floats must come back bit for bit
        "normalization": {"mean": [0.13085988895558223], "std": [0.30801556483535625]},
        "rng": rng.bit_generator.state,
        "config": {"optimizer": "sgd", "nesterov": False, "schedule": None},
    }
    path = save_checkpoint(tmp_path / "last.npz", _arrays(), meta)
    arrays, back = load_checkpoint(path)
    assert set(arrays) == set(_arrays())
    for k, a in _arrays().items():
        assert arrays[k].dtype == a.dtype and arrays[k].shape == a.shape
        np.testing.assert_array_equal(arrays[k], a)
    assert back == json.loads(json.dumps(meta))
    assert back["lr"] == 0.1 + 0.2 and back["rng"]["state"]["state"] > 2**64
    with np.load(path, allow_pickle=False) as z:  # a plain npz, no pickle needed
        assert int(z["__format__"]) == FORMAT_VERSION
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's private 0600


def test_rng_state_reproduces_the_same_stream(tmp_path: Path) -> None:
    rng = np.random.default_rng(2024)
    rng.permutation(100)
    save_checkpoint(tmp_path / "c.npz", {}, {"rng": rng.bit_generator.state})
    _, meta = load_checkpoint(tmp_path / "c.npz")
    restored = generator_from_state(meta["rng"])
    np.testing.assert_array_equal(restored.permutation(1000), rng.permutation(1000))
    assert restored.standard_normal() == rng.standard_normal()
    for bit_gen in (np.random.MT19937(1), np.random.Philox(2), np.random.SFC64(3)):
        g = np.random.Generator(bit_gen)
        g.random(3)
        h = generator_from_state(json.loads(json.dumps(generator_state(g))))
        assert h.random() == g.random()
    with pytest.raises(DataError, match="unknown random generator 'os.system'"):
        generator_from_state({"bit_generator": "os.system"})
    with pytest.raises(DataError, match="bad random generator state"):
        generator_from_state({"bit_generator": "PCG64", "state": {}})


def test_optimizer_state_survives_a_checkpoint(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    p = rng.standard_normal((3, 3))
    grads = rng.standard_normal((4, 3, 3))
    ref = make_optimizer("adam", lr=0.01)
    pr = p.copy()
    for g in grads:
        ref.step({"w": pr}, {"w": g})
    opt = make_optimizer("adam", lr=0.01)
    pc = p.copy()
    for g in grads[:2]:
        opt.step({"w": pc}, {"w": g})
    arrays = {"param/w": pc} | {f"optim/{k}": v for k, v in opt.state_dict().items()}
    save_checkpoint(tmp_path / "c.npz", arrays, {"optimizer": opt.config()})
    loaded, meta = load_checkpoint(tmp_path / "c.npz")
    cfg = dict(meta["optimizer"])
    again = make_optimizer(cfg.pop("name"), **cfg)
    again.load_state_dict({k[6:]: v for k, v in loaded.items() if k.startswith("optim/")})
    pw = loaded["param/w"]
    for g in grads[2:]:
        again.step({"w": pw}, {"w": g})
    np.testing.assert_array_equal(pw, pr)


def _good(path: Path) -> bytes:
    save_checkpoint(path, _arrays(), {"epoch": 1})
    return path.read_bytes()


def test_failed_write_leaves_the_old_checkpoint_intact(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "best.npz"
    before = _good(path)

    def half_then_disk_full(f, arrays) -> None:
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "_write_npz", half_then_disk_full)
    with pytest.raises(CnnError, match="best.npz: cannot write checkpoint \\(No space left"):
        save_checkpoint(path, {"w": np.ones(3)}, {"epoch": 2})
    assert path.read_bytes() == before
    assert load_checkpoint(path)[1] == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.npz"]  # no temp file left

    monkeypatch.undo()

    def no_rename(src, dst) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(fileio.os, "replace", no_rename)
    with pytest.raises(CnnError, match="cannot write checkpoint"):
        save_checkpoint(path, {"w": np.ones(3)}, {"epoch": 2})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.npz"]


def test_unwritable_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CnnError, match="cannot write checkpoint"):
        save_checkpoint(tmp_path / "missing" / "c.npz", {}, {})


def test_caller_bugs_are_not_user_errors(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        save_checkpoint(tmp_path / "c.npz", {}, {"bad": object()})
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "c.npz", {"__meta__": np.zeros(1)}, {})
    with pytest.raises(TypeError, match="dtype object"):
        save_checkpoint(tmp_path / "c.npz", {"o": np.array([None])}, {})
    assert list(tmp_path.iterdir()) == []
    save_checkpoint(tmp_path / "c.npz", {"s": np.float32(2.5)}, {"n": np.int64(3)})
    arrays, meta = load_checkpoint(tmp_path / "c.npz")
    assert arrays["s"].dtype == np.float32 and meta == {"n": 3}


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.99, 40])
def test_truncated_checkpoints_are_data_errors(tmp_path: Path, keep: float) -> None:
    raw = _good(tmp_path / "good.npz")
    n = int(len(raw) * keep) if keep < 1 else int(keep)
    bad = tmp_path / "cut.npz"
    bad.write_bytes(raw[:n])
    with pytest.raises(DataError, match="cut.npz: ") as err:
        load_checkpoint(bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


def test_random_bytes_and_bit_flips_are_data_errors(tmp_path: Path) -> None:
    rnd = tmp_path / "random.npz"
    rnd.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(DataError, match="random.npz: not a checkpoint"):
        load_checkpoint(rnd)
    raw = bytearray(_good(tmp_path / "good.npz"))
    raw[600] ^= 0xFF  # inside the first array's data: only the CRC can tell
    flipped = tmp_path / "flipped.npz"
    flipped.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="flipped.npz: corrupt or truncated checkpoint"):
        load_checkpoint(flipped)


def test_missing_foreign_and_future_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.npz: checkpoint not found"):
        load_checkpoint(tmp_path / "nope.npz")
    with pytest.raises(DataError, match="is a folder"):
        load_checkpoint(tmp_path)
    np.savez(tmp_path / "plain.npz", w=np.ones(2))
    with pytest.raises(DataError, match="plain.npz: not a cnncli checkpoint"):
        load_checkpoint(tmp_path / "plain.npz")
    np.savez(
        tmp_path / "future.npz",
        __format__=np.array(FORMAT_VERSION + 1),
        __meta__=np.frombuffer(b"{}", np.uint8),
    )
    with pytest.raises(DataError, match="newer than this cnncli reads"):
        load_checkpoint(tmp_path / "future.npz")
    np.savez(
        tmp_path / "badmeta.npz",
        __format__=np.array(1),
        __meta__=np.frombuffer(b"{not json", np.uint8),
    )
    with pytest.raises(DataError, match="badmeta.npz: corrupt checkpoint metadata"):
        load_checkpoint(tmp_path / "badmeta.npz")
    with zipfile.ZipFile(tmp_path / "pickled.npz", "w") as zf, zf.open("w.npy", "w") as f:
        np.lib.format.write_array(f, np.array([None, 1], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="pickled.npz: corrupt or truncated checkpoint"):
        load_checkpoint(tmp_path / "pickled.npz")
