"""Nothing lost: no output may be, contain or lie inside an input, and a refused command writes
nothing (every case was data loss before: a checkpoint replaced by CSV, a data set by a PNG,
a source image by YAML, a spec deleted by --overwrite, a foreign folder's files replaced)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml
from harness import TINY, cnn, copy_run, ok, one_error, tree

from cnncli.errors import CnnError


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "fsync", lambda fd: None)


# -- cnn evaluate -------------------------------------------------------------------------------


def test_evaluate_never_writes_over_its_checkpoint(run: Path, tmp_path: Path) -> None:
    run = copy_run(run, tmp_path / "run")
    before = tree(run)
    best = run / "checkpoints" / "best.npz"
    line = one_error(cnn("evaluate", run, "--confusion-csv", best))
    assert str(best) in line and "the checkpoint" in line
    # another file of the run's checkpoints folder is refused too
    line = one_error(cnn("evaluate", run, "--confusion-png", run / "checkpoints" / "last.npz"))
    assert "checkpoints folder" in line
    assert tree(run) == before
    # next to the checkpoints (the README's example) is fine
    ok(cnn("evaluate", run, "--confusion-csv", run / "confusion.csv"))
    assert (run / "confusion.csv").read_text().startswith("true\\pred,")


def test_evaluate_never_writes_over_or_into_its_data(
    run: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    npz = shutil.copy(data["npz"], tmp_path / "data.npz")
    before = Path(npz).read_bytes()
    line = one_error(cnn("evaluate", run, "--data", npz, "--confusion-png", npz))
    assert "--confusion-png is the data set" in line
    assert Path(npz).read_bytes() == before

    images = tmp_path / "images"
    shutil.copytree(data["images"], images)
    before = tree(images)
    # a PNG written into a class folder would become a training image
    line = one_error(cnn("evaluate", run, "--data", images,
                         "--confusion-png", images / "c0" / "cm.png"))
    assert "lies inside the data set" in line
    assert tree(images) == before


def test_evaluate_outputs_must_differ(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "cm"
    line = one_error(cnn("evaluate", run, "--confusion-csv", out, "--confusion-png", out))
    assert "same file" in line
    assert not out.exists()


# -- cnn augment ---------------------------------------------------------------------------------


def _photos(tmp_path: Path) -> Path:
    from harness import IMAGES

    src = tmp_path / "in"
    shutil.copytree(IMAGES / "digits", src / "a")
    return src


def test_save_pipeline_never_writes_over_a_source(tmp_path: Path) -> None:
    src = _photos(tmp_path)
    before = tree(src)
    victim = sorted((src / "a").rglob("*.png"))[0]
    for extra in ([], ["--dry-run"]):
        line = one_error(cnn("augment", src, "--out", tmp_path / "o", "--save-pipeline", victim,
                             "-j", 1, *extra))
        assert "--save-pipeline lies inside the input folder" in line
    assert tree(src) == before
    assert not (tmp_path / "o").exists()


def test_a_dry_run_writes_nothing_at_all(tmp_path: Path) -> None:
    src = _photos(tmp_path)
    saved = tmp_path / "pipe.yaml"
    result = cnn("augment", src, "--out", tmp_path / "o", "--save-pipeline", saved, "--dry-run",
                 "-j", 1)
    ok(result)
    assert not saved.exists() and not (tmp_path / "o").exists()
    assert "would save the pipeline" in result.stderr
    ok(cnn("augment", "--save-pipeline", saved, "--dry-run"))
    assert not saved.exists()


def test_save_pipeline_never_writes_over_the_pipeline_it_read(tmp_path: Path) -> None:
    src = _photos(tmp_path)
    pipe = tmp_path / "p.yaml"
    ok(cnn("augment", "--ops", "flip", "--save-pipeline", pipe))
    before = pipe.read_bytes()
    line = one_error(cnn("augment", src, "--out", tmp_path / "o", "--pipeline", pipe,
                         "--save-pipeline", pipe, "--seed", 7))
    assert "is the pipeline file" in line
    assert pipe.read_bytes() == before and not (tmp_path / "o").exists()


def test_augment_output_may_not_contain_its_input(tmp_path: Path) -> None:
    src = _photos(tmp_path)
    before = tree(tmp_path)
    line = one_error(cnn("augment", src / "a", "--out", tmp_path, "--overwrite"))
    assert "contains the input folder" in line
    assert tree(tmp_path) == before


# -- cnn train -----------------------------------------------------------------------------------


def test_train_never_writes_into_its_data(data: dict[str, Path], tmp_path: Path) -> None:
    images = tmp_path / "images"
    shutil.copytree(data["images"], images)
    before = tree(images)
    for out in (images, images / "run", images / "c0"):
        line = one_error(cnn("train", "--arch", data["spec"], "--data", images, "--out", out,
                             "--epochs", 1))
        assert "the data set" in line, line
    assert tree(images) == before
    ok(cnn("train", "--arch", data["spec"], "--data", images, "--epochs", 1, "-q"))  # loads


def test_train_never_deletes_its_spec_or_config(data: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "S"
    folder.mkdir()
    spec = folder / "config.yaml"
    spec.write_text(yaml.safe_dump(TINY))
    line = one_error(cnn("train", "--arch", spec, "--data", data["npz"], "--out", folder,
                         "--overwrite", "--epochs", 1))
    assert "contains the spec" in line
    assert spec.read_text() == yaml.safe_dump(TINY)

    settings = folder / "settings.yaml"
    settings.write_text("epochs: 1\n")
    line = one_error(cnn("train", "--arch", data["spec"], "--data", data["npz"], "--config",
                         settings, "--out", folder))
    assert "contains the training config" in line
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", "settings.yaml"]


def test_train_augmentation_pipeline_is_an_input(data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    pipe = out / "aug.yaml"
    ok(cnn("augment", "--ops", "shift=0.1", "--save-pipeline", pipe))
    line = one_error(cnn("train", "--arch", data["spec"], "--data", data["npz"], "--augment",
                         pipe, "--out", out, "--epochs", 1))
    assert "contains the augmentation pipeline" in line


def test_resume_needs_a_run_folder(run: Path, data: dict[str, Path], tmp_path: Path) -> None:
    """A checkpoint copied into a folder that is not a run: resuming it must not write
    metrics.csv and summary.json into that folder."""
    folder = tmp_path / "DIR"
    (folder / "checkpoints").mkdir(parents=True)
    shutil.copy(run / "checkpoints" / "last.npz", folder / "checkpoints" / "x.npz")
    (folder / "metrics.csv").write_text("mine\n")
    before = tree(folder)
    line = one_error(cnn("train", "--resume", folder / "checkpoints" / "x.npz", "--epochs", 2))
    assert "not a checkpoint inside a run folder" in line
    assert tree(folder) == before

    loose = tmp_path / "loose.npz"
    shutil.copy(run / "checkpoints" / "last.npz", loose)
    line = one_error(cnn("train", "--resume", loose, "--epochs", 2))
    assert "not a checkpoint inside a run folder" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["DIR", "loose.npz"]


def test_resume_never_writes_into_its_data(run: Path, data: dict[str, Path],
                                           tmp_path: Path) -> None:
    run = copy_run(run, tmp_path / "run")
    inside = shutil.copy(data["npz"], run / "data.npz")
    before = tree(run)
    line = one_error(cnn("train", "--resume", run, "--data", inside, "--epochs", 2))
    assert "contains the data set" in line
    assert tree(run) == before


# -- the helper itself ---------------------------------------------------------------------------


def test_guard_outputs_resolves_links_and_dots(tmp_path: Path) -> None:
    from cnncli.fileio import guard_outputs

    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "link").symlink_to(data)
    (data / "f.npz").write_bytes(b"x")
    os.link(data / "f.npz", tmp_path / "hard.npz")
    f = data / "f.npz"
    cases = [
        (tmp_path / "link" / "f.npz", f, "is"),  # through a symlinked folder
        (tmp_path / "other" / ".." / "data", data, "is"),
        (tmp_path / "hard.npz", f, "is"),  # a hard link to the same file
        (tmp_path / "link" / "sub" / "x.csv", data, "lies inside"),
        (tmp_path, data, "contains"),
    ]
    for out, inp, word in cases:
        with pytest.raises(CnnError, match=f"--out {word} the data set"):
            guard_outputs([(out, "--out")], [(inp, "the data set")])
    guard_outputs([(tmp_path / "out", "--out")], [(data, "the data set"), (None, "nothing")])
