"""``cnn augment`` end to end, in-process (CliRunner), on real images copied into tests/data."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import cnncli.cli.main  # noqa: F401  (registers the commands)
from cnncli.augment.io import encode_image, output_format, read_image
from cnncli.augment.pipeline import Pipeline
from cnncli.augment.runner import OutputRecord, write_manifests
from cnncli.augment.transforms import OPS
from cnncli.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "images"
SAMPLE = ROOT / "sample_data" / "images"

runner = CliRunner()


def cnn(*args: object):
    return runner.invoke(app, ["augment", *[str(a) for a in args]])


def hashes(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def one_error_line(result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def images_under(root: Path) -> list[str]:
    exts = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
    return sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix.lower() in exts
    )


# --------------------------------------------------------------------------- happy paths


def test_sample_data_works_out_of_the_box(tmp_path):
    before = hashes(SAMPLE)
    out = tmp_path / "aug"
    result = cnn(SAMPLE, "--out", out, "-n", 2, "--seed", 0, "-j", 1)
    assert result.exit_code == 0, result.stderr
    assert "using preset 'default'" in result.stderr
    sources = images_under(SAMPLE)
    outputs = images_under(out)
    assert len(outputs) == 2 * len(sources)
    # Same layout: every output sits in its source's folder, with a deterministic name.
    for src in sources:
        stem, parent = Path(src).stem, Path(src).parent.as_posix()
        for i in range(2):
            assert (out / parent / f"{stem}_{i}{Path(src).suffix}").is_file()
    assert hashes(SAMPLE) == before  # sources untouched
    assert not [p for p in out.rglob(".*.tmp")]  # no temporary files left


def test_manifest_records_source_and_exact_parameters(photo_tree, tmp_path):
    out = tmp_path / "aug"
    ops = "flip,rotate=15,crop=0.8,brightness=0.2"
    result = cnn(photo_tree, "--out", out, "-n", 3, "--seed", 5, "--ops", ops, "-j", 1)
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO((out / "manifest.csv").read_text())))
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == len(lines) == 3 * len(images_under(photo_tree))
    assert list(rows[0]) == ["output", "source", "index", "width", "height", "ops"]
    for row, line in zip(rows, lines, strict=True):
        assert row["output"] == line["output"] and row["source"] == line["source"]
        assert json.loads(row["ops"]) == line["ops"]
        assert [o["op"] for o in line["ops"]] == ["flip", "rotate", "crop", "brightness"]
        assert all(isinstance(o["applied"], bool) for o in line["ops"])
        assert -15 <= line["ops"][1]["angle"] <= 15
        with Image.open(out / line["output"]) as im:
            assert im.size == (line["width"], line["height"])
        assert (photo_tree / line["source"]).is_file()
    saved = Pipeline.load(out / "pipeline.yaml")
    assert saved.seed == 5 and saved.short() == Pipeline.load(out / "pipeline.yaml").short()


def test_manifest_lines_are_compact_json_dumps(tmp_path):
    """The bytes of a manifest line, non-ASCII and quotes in names included."""
    ops = [{"op": "rotate", "applied": True, "angle": -3.25}, {"op": "flip", "applied": False}]
    rec = OutputRecord('ä "q"/x_0.jpg', 'ä "q"/x.jpg', 0, 224, 200, ops)
    write_manifests(tmp_path, [rec])
    compact = {"separators": (",", ":")}
    head = {"output": rec.output, "source": rec.source, "index": 0, "width": 224, "height": 200}
    line = f'{json.dumps(head, **compact)[:-1]},"ops":{json.dumps(ops, **compact)}}}\n'
    assert (tmp_path / "manifest.jsonl").read_text(encoding="utf-8") == line
    rows = list(csv.reader(io.StringIO((tmp_path / "manifest.csv").read_text(encoding="utf-8"))))
    assert rows[1] == [rec.output, rec.source, "0", "224", "200", json.dumps(ops, **compact)]


def test_any_output_can_be_reproduced_from_the_manifest(photo_tree, tmp_path):
    out = tmp_path / "aug"
    assert cnn(photo_tree, "--out", out, "-n", 2, "--preset", "photos", "-j", 1).exit_code == 0
    pipe = Pipeline.load(out / "pipeline.yaml")
    for line in [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()][::5]:
        pixels, meta = read_image(photo_tree / line["source"])
        img = pipe.apply(pixels, line["ops"])
        fmt = output_format(meta.format, "keep")
        assert (
            encode_image(img, meta, fmt, quality=95, png_level=1)
            == (out / line["output"]).read_bytes()
        )


def test_outputs_do_not_depend_on_how_they_are_grouped(photo_tree, tmp_path, monkeypatch):
    """process_source works stage by stage over groups of outputs; one output per group (the
    smallest budget) must give the same files and manifests as the default groups."""
    from cnncli.augment import runner as run_mod

    runs = []
    for budget in (run_mod.GROUP_BYTES, 1):
        monkeypatch.setattr(run_mod, "GROUP_BYTES", budget)
        out = tmp_path / f"g{budget}"
        result = cnn(photo_tree, "--out", out, "-n", 3, "--preset", "photos", "-j", 1)
        assert result.exit_code == 0, result.stderr
        runs.append(hashes(out))
    assert runs[0] == runs[1]


def test_groups_hold_at_most_the_budget_or_one_output(monkeypatch):
    from cnncli.augment import runner as run_mod
    from cnncli.augment.pipeline import parse_ops

    pipe = parse_ops("resize(size=100)")  # every output 100 x 100 x 3 = 30,000 bytes
    sampled = [pipe.sample(np.random.default_rng(i), (50, 60, 3)) for i in range(7)]
    monkeypatch.setattr(run_mod, "GROUP_BYTES", 65_000)
    assert run_mod._groups(pipe, sampled, (50, 60, 3), 1) == [2, 4, 6, 7]
    monkeypatch.setattr(run_mod, "GROUP_BYTES", 10)  # smaller than one output: one each
    assert run_mod._groups(pipe, sampled, (50, 60, 3), 1) == [1, 2, 3, 4, 5, 6, 7]
    assert run_mod._groups(pipe, [], (50, 60, 3), 1) == []


def test_same_seed_same_bytes_whatever_the_number_of_workers(photo_tree, tmp_path):
    before = hashes(photo_tree)
    runs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        result = cnn(
            photo_tree, "--out", out, "-n", 2, "--seed", 11, "--preset", "photos", "-j", workers
        )
        assert result.exit_code == 0, result.stderr
        runs[workers] = hashes(out)
    assert runs[1] == runs[2]
    assert hashes(photo_tree) == before
    other = tmp_path / "seed12"
    assert (
        cnn(
            photo_tree, "--out", other, "-n", 2, "--seed", 12, "--preset", "photos", "-j", 1
        ).exit_code
        == 0
    )
    assert hashes(other, skip=("pipeline.yaml",)) != {
        k: v for k, v in runs[1].items() if k != "pipeline.yaml"
    }


def test_more_outputs_per_input_repeat_the_first_ones(photo_tree, tmp_path):
    """Outputs draw in index order from one generator per source: -n 3 extends -n 2."""
    runs = {}
    for n in (2, 3):
        out = tmp_path / f"n{n}"
        assert cnn(photo_tree, "--out", out, "-n", n, "--seed", 4, "-j", 1).exit_code == 0
        runs[n] = hashes(out, skip=("manifest.csv", "manifest.jsonl", "pipeline.yaml"))
    assert runs[2].items() <= runs[3].items() and len(runs[3]) == len(runs[2]) * 3 // 2


def test_saved_pipeline_reproduces_a_run(photo_tree, tmp_path):
    saved = tmp_path / "aug.yaml"
    first, second = tmp_path / "a", tmp_path / "b"
    ops = (
        "flip,rotate(limit=10, border=reflect),random_resized_crop(size=48, area=[0.5, 1]),pca=0.2"
    )
    result = cnn(
        photo_tree, "--out", first, "--ops", ops, "--seed", 3, "--save-pipeline", saved, "-j", 1
    )
    assert result.exit_code == 0, result.stderr
    assert Pipeline.load(saved).seed == 3
    # No --seed: the file's seed is used.
    assert cnn(photo_tree, "--out", second, "--pipeline", saved, "-j", 1).exit_code == 0
    assert hashes(first) == hashes(second)


def test_save_pipeline_alone(tmp_path):
    path = tmp_path / "p.yaml"
    result = cnn("--preset", "digits", "--save-pipeline", path)
    assert result.exit_code == 0, result.stderr
    assert [op.name for op in Pipeline.load(path).ops] == ["rotate", "shift", "scale"]


def test_output_formats(photo_tree, tmp_path):
    out = tmp_path / "jpg"
    assert (
        cnn(
            photo_tree / "digits", "--out", out, "--format", "jpg", "--quality", 80, "-j", 1
        ).exit_code
        == 0
    )
    assert all(p.endswith(".jpg") for p in images_under(out))
    with Image.open(out / images_under(out)[0]) as im:
        assert im.format == "JPEG" and im.mode == "L"
    out = tmp_path / "png"
    assert (
        cnn(
            photo_tree / "photos", "--out", out, "--format", "png", "--png-level", 6, "-j", 1
        ).exit_code
        == 0
    )
    assert all(p.endswith(".png") for p in images_under(out))


def test_name_collisions_get_the_source_extension(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(DATA / "photos" / "cat" / "chelsea_crop_face.jpg", src / "a.jpg")
    Image.open(src / "a.jpg").save(src / "a.png")
    out = tmp_path / "out"
    assert cnn(src, "--out", out, "--format", "png", "-j", 1).exit_code == 0
    assert images_under(out) == ["a_jpg_0.png", "a_png_0.png"]


def test_single_image_input(tmp_path):
    out = tmp_path / "out"
    result = cnn(DATA / "photos" / "cat" / "chelsea_crop_face.jpg", "--out", out, "-n", 3, "-j", 1)
    assert result.exit_code == 0, result.stderr
    assert images_under(out) == [f"chelsea_crop_face_{i}.jpg" for i in range(3)]


def test_dry_run_writes_nothing(tmp_path):
    src = tmp_path / "edge"
    shutil.copytree(DATA / "edge", src)
    out = tmp_path / "out"
    result = cnn(src, "--out", out, "-n", 4, "--dry-run", "--json")
    assert result.exit_code == 1  # a dry run reads headers: the non-image is found already
    summary = json.loads(result.stdout)
    assert {p["path"] for p in summary["failed"]} == {"broken/not_an_image.jpg"}
    assert summary["dry_run"] and summary["done"] == 4 * (summary["sources"] - 1)
    assert not out.exists()
    assert "would write" in result.stderr


def test_list_ops_comes_from_the_registry():
    result = cnn("--list-ops")
    assert result.exit_code == 0
    for name in OPS:
        assert name in result.stdout
    rows = json.loads(cnn("--list-ops", "--json").stdout)
    assert [r["op"] for r in rows] == list(OPS)
    assert {"p", "limit", "border", "fill"} <= {p["name"] for p in rows[1]["params"]}


# --------------------------------------------------------------------------- bad input


def test_edge_files_are_handled_and_bad_ones_listed(tmp_path):
    src = tmp_path / "edge"
    shutil.copytree(DATA / "edge", src)
    before = hashes(src)
    out = tmp_path / "out"
    result = cnn(src, "--out", out, "-n", 2, "--preset", "photos", "--json", "-j", 2)
    assert result.exit_code == 1, result.stderr
    summary = json.loads(result.stdout)
    failed = {p["path"]: p["reason"] for p in summary["failed"]}
    assert set(failed) == {"broken/truncated_china.jpg", "broken/not_an_image.jpg"}
    assert "truncated" in failed["broken/truncated_china.jpg"]
    assert "not a readable image" in failed["broken/not_an_image.jpg"]
    assert "broken/truncated_china.jpg" in result.stderr and "failed (2)" in result.stderr
    assert hashes(src) == before
    assert summary["done"] == 2 * 5 and summary["sources"] == 7
    modes = {}
    for name in images_under(out):
        with Image.open(out / name) as im:
            modes[Path(name).name] = (im.mode, im.size)
    assert modes["rgba_coffee_0.png"][0] == "RGBA"
    assert modes["palette_coffee_0.png"][0] == "P"
    assert modes["gray16_camera_0.png"][0] == "I;16"
    assert modes["exif_orientation6_chelsea_0.jpg"] == ("RGB", (451, 300))  # upright
    assert modes["tiny_8x8_chelsea_0.png"][1] == (8, 8)
    g16 = np.array(Image.open(out / "unusual" / "gray16_camera_0.png"))
    assert g16.max() > 50_000 and g16.mean() < 45_000  # still 16-bit, not white
    assert not (out / "broken").exists()  # no empty folders for failed sources


def test_existing_output_folder_needs_overwrite(photo_tree, tmp_path):
    out = tmp_path / "out"
    assert cnn(photo_tree / "digits", "--out", out, "-j", 1).exit_code == 0
    first = hashes(out)
    line = one_error_line(cnn(photo_tree / "digits", "--out", out, "-j", 1))
    assert "already exists" in line and "--overwrite" in line
    assert hashes(out) == first
    assert cnn(photo_tree / "digits", "--out", out, "-j", 1, "--overwrite").exit_code == 0
    assert hashes(out) == first  # same seed, same bytes


def test_output_inside_input_is_refused(photo_tree):
    line = one_error_line(cnn(photo_tree, "--out", photo_tree / "augmented"))
    assert "the output folder lies inside the input folder" in line
    assert not (photo_tree / "augmented").exists()
    # (the test's own folder name holds "inside": check the words around the paths)
    assert "the output folder is the input folder" in one_error_line(
        cnn(photo_tree, "--out", photo_tree))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ops", "flip,rotat=15"], "unknown op 'rotat' (did you mean 'rotate'?)"),
        (
            ["--ops", "rotate(limit=15, fil=3)"],
            "op 'rotate' has no parameter 'fil' (did you mean 'fill'?)",
        ),
        (["--ops", "brightness=lots"], "op 'brightness' parameter 'limit'"),
        (["--preset", "digitz"], "unknown preset 'digitz' (did you mean 'digits'?)"),
        (
            ["--ops", "flip", "--preset", "digits"],
            "give only one of --ops, --pipeline and --preset",
        ),
        (["--format", "gif"], "--format must be one of keep, png, jpg"),
        (["-n", "0"], "-n must be at least 1"),
        (["--quality", "101"], "--quality must be in 1..100"),
        (["--png-level", "10"], "--png-level must be in 0..9"),
        (["--pipeline", "/nonexistent/p.yaml"], "cannot read pipeline file"),
    ],
)
def test_bad_usage_exits_2_with_one_line(photo_tree, tmp_path, args, message):
    line = one_error_line(cnn(photo_tree, "--out", tmp_path / "out", *args))
    assert message in line
    assert not (tmp_path / "out").exists()


def test_missing_input_and_out(tmp_path):
    assert "input not found" in one_error_line(cnn(tmp_path / "nope", "--out", tmp_path / "o"))
    assert "missing --out" in one_error_line(cnn(tmp_path))
    assert "missing INPUT" in one_error_line(cnn("--ops", "flip"))


def test_decompression_bomb_limit(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.new("RGB", (3000, 2000), (10, 20, 30)).save(src / "huge.png", compress_level=1)
    shutil.copy(DATA / "photos" / "cat" / "chelsea_crop_face.jpg", src / "ok.jpg")
    out = tmp_path / "out"
    result = cnn(src, "--out", out, "--max-pixels", 1_000_000, "-j", 1)
    assert result.exit_code == 1
    assert "huge.png" in result.stderr and "too many pixels" in result.stderr
    assert images_under(out) == ["ok_0.jpg"]


def test_symlink_loops_are_skipped_not_followed_forever(tmp_path):
    src = tmp_path / "in"
    (src / "cls").mkdir(parents=True)
    shutil.copy(DATA / "photos" / "cat" / "chelsea_crop_face.jpg", src / "cls" / "x.jpg")
    (src / "cls" / "again").symlink_to(src)  # a folder loop back to the root
    (src / "self.jpg").symlink_to(src / "self.jpg")  # a file that links to itself
    out = tmp_path / "out"
    result = cnn(src, "--out", out, "--json", "-j", 1)
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert {p["path"] for p in summary["skipped"]} == {"cls/again", "self.jpg"}
    assert all("loop" in p["reason"] for p in summary["skipped"])
    assert "symlink loop" in result.stderr
    assert images_under(out) == ["cls/x_0.jpg"]


def test_help_lists_the_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "augment" in result.stdout


def test_folder_without_images_is_bad_input(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("no pictures here")
    line = one_error_line(cnn(tmp_path / "in", "--out", tmp_path / "out"))
    assert "no image files" in line
    assert not (tmp_path / "out").exists()


def test_pca_folder_eigen_is_computed_once_and_saved(photo_tree, tmp_path):
    out = tmp_path / "out"
    result = cnn(
        photo_tree / "photos", "--out", out, "--ops", "pca(sigma=0.3, eigen=folder)", "-j", 2
    )
    assert result.exit_code == 0, result.stderr
    (op,) = Pipeline.load(out / "pipeline.yaml").ops
    vals, vecs = np.array(op["eigvals"]), np.array(op["eigvecs"])
    assert vals.shape == (3,) and (np.diff(vals) <= 0).all() and vals[0] > 100
    np.testing.assert_allclose(vecs.T @ vecs, np.eye(3), atol=1e-9)
    # Replaying with the saved pipeline (eigen fixed) gives the same bytes.
    again = tmp_path / "again"
    assert (
        cnn(
            photo_tree / "photos", "--out", again, "--pipeline", out / "pipeline.yaml", "-j", 1
        ).exit_code
        == 0
    )
    assert hashes(again) == hashes(out)
