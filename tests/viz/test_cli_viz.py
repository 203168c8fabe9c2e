"""``cnn viz`` through the command line, the learning-curve and confusion plots, and what the
commands refuse (exit 2, one line, nothing written)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner
from viz_helpers import png

import cnncli.cli.main  # noqa: F401  (registers the commands)
from cnncli.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def ok(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.stderr + result.stdout
    return result


def one_error(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# -- the pictures -------------------------------------------------------------------------


def test_filters_png(lenet_run, tmp_path):
    out = tmp_path / "filters.png"
    result = ok("viz", "filters", lenet_run, "--out", out)
    assert f"wrote {out} (690 x 460)" in result.stderr
    png(out, (690, 460))
    ok("viz", "filters", lenet_run, "--layer", "C3", "--scale", "layer", "--out", out)
    png(out, (640, 1036))


def test_maps_png_and_json(lenet_run, digits, tmp_path):
    out = tmp_path / "maps.png"
    result = ok("viz", "maps", lenet_run, digits[7].path, "--layer", "S2", "--out", out,
                "--format", "json")
    data = json.loads(result.stdout)
    assert data["layer"] == "S2" and data["shape"] == [14, 14, 6] and data["out"] == str(out)
    assert len(data["channels"]) == 6 and data["grid"] == [2, 3]
    assert data["min"] == min(c["min"] for c in data["channels"])
    png(out, (690, 460))
    table = ok("viz", "maps", lenet_run, digits[7].path, "--layer", "C3", "--out", out,
               "--scale", "channel").stdout
    assert "C3 (conv)" in table and "10 x 10 x 16" in table and "channel" in table
    assert len(json.loads(ok("viz", "maps", lenet_run, digits[7].path, "-l", "C3",
                             "-f", "json").stdout)["channels"]) == 16  # numbers alone
    before = sorted(tmp_path.iterdir())
    assert "10 x 10 x 16" in ok("viz", "maps", lenet_run, digits[7].path, "-l", "C3").stdout
    assert sorted(tmp_path.iterdir()) == before  # no --out: no picture


def test_cam_png_and_json(lenet_run, digits, tmp_path):
    d = digits[2]
    out = tmp_path / "cam.png"
    box = ",".join(map(str, d.box))
    data = json.loads(ok("viz", "cam", lenet_run, d.path, "--out", out, "--box", box,
                         "--format", "json").stdout)
    assert data["method"] == "gradcam" and data["layer"] == "S4"
    assert data["layer_shape"] == [5, 5, 16] and data["map_shape"] == [5, 5]
    assert np.array(data["map"]).shape == (5, 5) and len(data["weights"]) == 16
    assert data["class"]["label"] == data["top"][0]["label"]
    assert 0 <= data["box_share"] <= 1 and data["box"] == list(d.box)
    peak = data["argmax"]["map"]
    assert np.array(data["map"])[peak[0], peak[1]] == data["map_max"]
    assert data["input_size"] == [28, 28]
    png(out, (1200, 480))
    sal = json.loads(ok("viz", "cam", lenet_run, d.path, "-m", "saliency", "--class", "3",
                        "-f", "json").stdout)
    assert sal["layer"] is None and sal["map_shape"] == [28, 28]
    assert sal["class"] == {"index": 3, "label": "3", "probability": sal["class"]["probability"]}
    text = ok("viz", "cam", lenet_run, d.path, "-m", "hirescam", "-l", "S2", "--box", box,
              "--out", out).stdout
    assert "hirescam at S2 (14 x 14 x 6)" in text and "share inside box" in text


def test_curves_are_the_training_plot_redrawn(lenet_run, tmp_path):
    """cnn viz curves and the training loop draw with the same code: the same bytes."""
    out = tmp_path / "curves.png"
    ok("viz", "curves", lenet_run, "--out", out)
    png(out, (1100, 420))
    assert out.read_bytes() == (lenet_run / "curves.png").read_bytes()
    ok("viz", "curves", lenet_run / "checkpoints" / "best.npz", "--out", out)  # its history
    png(out, (1100, 420))


def test_curves_of_a_run_still_training(lenet_run, tmp_path):
    """A run folder holds metrics.jsonl once an epoch has finished; two epochs so far."""
    run = tmp_path / "live"
    run.mkdir()
    lines = (lenet_run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n")
    out = tmp_path / "now.png"
    ok("viz", "curves", run, "--out", out)
    png(out, (1100, 420))
    (run / "metrics.jsonl").write_text(lines[0] + "\n{not json\n")
    assert f"{run / 'metrics.jsonl'}:2: not a JSON line" in one_error("viz", "curves", run,
                                                                      "--out", out)
    (run / "metrics.jsonl").unlink()
    assert "no epoch has finished yet" in one_error("viz", "curves", run, "--out", out)


def test_confusion_png_from_evaluate(lenet_run, tmp_path):
    out = tmp_path / "cm.png"
    ok("evaluate", lenet_run, "--confusion-png", out)
    png(out, (760, 660))


# -- what the plots show --------------------------------------------------------------------


HISTORY = [{"epoch": e, "train_loss": 1.0 / e, "train_accuracy": 0.5 + e / 10,
            "val_loss": 1.2 / e, "val_accuracy": 0.45 + e / 10} for e in (1, 2, 3)]


def test_curves_have_axis_titles_grid_percent_and_the_legend_outside():
    from cnncli.train.plot import CURVES_SIZE, draw_curves
    from cnncli.viz.canvas import figure

    with figure(*CURVES_SIZE) as fig:
        loss, acc = draw_curves(fig, HISTORY, "run")
        fig.canvas.draw()
        assert [ax.get_xlabel() for ax in (loss, acc)] == ["epoch", "epoch"]
        assert (loss.get_ylabel(), acc.get_ylabel()) == ("loss", "accuracy (%)")
        lines = {ln.get_label(): ln for ln in acc.get_lines()}
        assert set(lines) == {"train", "val"}  # no test split in this history
        np.testing.assert_allclose(lines["train"].get_ydata(), [60, 70, 80])  # percent
        assert all(gl.get_visible() for gl in acc.get_ygridlines())
        ticks = [t for t in acc.get_xticks() if 1 <= t <= 3]
        assert ticks == [1, 2, 3]  # whole epochs
        legend = fig.legends[0].get_window_extent()
        for ax in (loss, acc):  # the legend overlaps neither panel
            assert not legend.overlaps(ax.get_window_extent())


def test_confusion_counts_are_centred_with_a_colour_bar():
    from cnncli.train.plot import CONFUSION_SIZE, draw_confusion
    from cnncli.viz.canvas import figure

    cm = [[5, 1, 0], [2, 7, 1], [0, 0, 9]]
    with figure(*CONFUSION_SIZE) as fig:
        ax = draw_confusion(fig, cm, ["cat", "dog", "bird"])
        texts = {(t.get_position(), t.get_text()) for t in ax.texts}
        assert texts == {((j, i), str(cm[i][j])) for i in range(3) for j in range(3)}
        assert all(t.get_ha() == "center" and t.get_va() == "center" for t in ax.texts)
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted class", "true class")
        assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "images"  # the colour bar
        assert "25 images, accuracy 84.0%" in " ".join(t.get_text() for t in fig.texts)


# -- refusals -------------------------------------------------------------------------------


def test_outputs_never_overwrite_inputs(lenet_run, digits, tmp_path):
    image = tmp_path / "digit.png"
    shutil.copy(digits[0].path, image)
    before = image.read_bytes()
    for cmd in (["maps", lenet_run, image, "-l", "C1"], ["cam", lenet_run, image]):
        assert "would overwrite the input" in one_error("viz", *cmd, "--out", image)
        (tmp_path / "link.png").unlink(missing_ok=True)
        (tmp_path / "link.png").symlink_to(image)
        assert "would overwrite the input" in one_error("viz", *cmd, "--out",
                                                        tmp_path / "link.png")
    assert image.read_bytes() == before
    assert "must end in .png" in one_error("viz", "filters", lenet_run, "--out",
                                           lenet_run / "checkpoints" / "best.npz")
    curves = lenet_run / "metrics.jsonl"
    assert "must end in .png" in one_error("viz", "curves", lenet_run, "--out", curves)


@pytest.mark.parametrize("args,fragment", [
    (["filters", "{run}", "--out", "{tmp}/no/such/f.png"], "does not exist"),
    (["filters", "{run}", "--out", "{tmp}"], "must end in .png"),
    (["filters", "{run}", "--out", "{tmp}/f.jpg"], "must end in .png"),
    (["filters", "{run}", "--layer", "S2", "--out", "{tmp}/f.png"], "not a conv layer"),
    (["filters", "{run}", "--layer", "C33", "--out", "{tmp}/f.png"], "did you mean 'C3'"),
    (["filters", "{tmp}", "--out", "{tmp}/f.png"], "no checkpoints/best.npz"),
    (["maps", "{run}", "{img}", "--layer", "F6", "-f", "json"], "not feature maps"),
    (["maps", "{run}", "{tmp}/missing.png", "--layer", "C1", "-f", "json"], "no such image"),
    (["maps", "{run}", "{bad}", "--layer", "C1", "-f", "json"], "not a readable image"),
    (["cam", "{run}", "{img}", "--layer", "F6", "-f", "json"], "not feature maps"),
    (["cam", "{run}", "{img}", "--class", "cat", "-f", "json"], "not a class label or index"),
    (["cam", "{run}", "{img}", "--box", "0,0,29,5", "-f", "json"], "0 <= X0 < X1 <= 28"),
    (["cam", "{run}", "{img}", "-m", "saliency", "-l", "C1", "-f", "json"], "does not apply"),
    (["curves", "{tmp}", "--out", "{tmp}/c.png"], "no metrics.jsonl"),
])
def test_bad_usage_is_one_line_and_exit_2(lenet_run, digits, tmp_path, args, fragment):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    subs = {"{run}": str(lenet_run), "{img}": str(digits[0].path), "{tmp}": str(tmp_path),
            "{bad}": str(bad)}
    argv = []
    for a in args:
        for k, v in subs.items():
            a = a.replace(k, v)
        argv.append(a)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert fragment in one_error("viz", *argv)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_help_shapes_and_dot_graph_do_not_import_matplotlib(tmp_path):
    spec = ROOT / "architectures" / "resnet18.yaml"
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "import cnncli.cli.main\n"
        "from cnncli.cli.app import app\n"
        "r = CliRunner()\n"
        "for args in (['--help'], ['viz', '--help'], ['viz', 'cam', '--help'],\n"
        f"             ['shapes', {str(spec)!r}],\n"
        f"             ['viz', 'graph', {str(spec)!r}, '--out', {str(tmp_path / 'n.dot')!r}]):\n"
        "    res = r.invoke(app, args)\n"
        "    assert res.exit_code == 0, (args, res.output)\n"
        "print([m for m in ('matplotlib', 'numpy') if m in sys.modules])\n"
        "sys.exit(1 if 'matplotlib' in sys.modules else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "[]"  # not even numpy
    assert (tmp_path / "n.dot").read_text().startswith("digraph cnn {")
