"""README stays true: its vocabulary section is what the registry generates, and its
Quickstart is what CI runs and runs as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from typer.testing import CliRunner

import cnncli.cli.main  # noqa: F401  (registers the commands on the app)
from cnncli.cli.app import app
from cnncli.vocabulary import vocabulary, vocabulary_markdown

README = Path(__file__).parent.parent / "README.md"


def test_readme_vocabulary_is_generated_from_the_registry():
    text = README.read_text(encoding="utf-8")
    m = re.search(r"<!-- vocabulary:start[^>]*-->\n(.*?)\n<!-- vocabulary:end -->", text, re.S)
    assert m, "README lacks the vocabulary markers"
    assert m.group(1) == vocabulary_markdown(vocabulary()).rstrip("\n"), (
        "README vocabulary is stale: paste `cnn layers --format markdown` between the markers")


def _quickstart_blocks() -> list[list[str]]:
    text = README.read_text(encoding="utf-8")
    section = re.search(r"## Quickstart\n(.*?)\n## ", text, re.S).group(1)
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [[ln.split("  #")[0].strip() for ln in b.splitlines() if ln.strip()] for b in blocks]


def test_ci_runs_exactly_the_quickstart_install_and_test_commands():
    install = _quickstart_blocks()[0]
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    ci_commands = [ln for ln in ci.splitlines()
                   if ln.strip() and not ln.startswith(("#", "set ", "cd "))]
    assert ci_commands == ['pip install -e ".[dev]"', "python -m pytest"]
    assert all(c in install for c in ci_commands)
    assert install[0].startswith("python3 -m venv")


def test_quickstart_commands_run_as_written(tmp_path, monkeypatch):
    """The Quickstart's cnn commands, in order, from a folder holding the repository's
    architectures/ and sample_data/ (training for 1 epoch instead of 20): each exits 0, and
    the run folder the training writes is the one the next steps name."""
    root = README.parent
    for name in ("architectures", "sample_data"):
        (tmp_path / name).symlink_to(root / name)
    monkeypatch.chdir(tmp_path)
    install, steps = _quickstart_blocks()
    commands = [c for c in install if c.startswith("cnn ")] + steps
    assert commands[0] == "cnn train --arch architectures/lenet5.yaml --out runs/lenet5"
    runner = CliRunner()
    for command in commands:
        args = shlex.split(command)[1:]
        if args[0] == "train":
            args += ["--epochs", "1", "--quiet"]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, f"{command}: {result.output[-500:]}"
    assert (tmp_path / "runs" / "lenet5" / "checkpoints" / "best.npz").is_file()
    assert len(list((tmp_path / "runs" / "augmented").rglob("*.png"))) >= 60


def test_reliability_section_names_the_tests_that_check_it():
    text = README.read_text(encoding="utf-8")
    section = re.search(r"## Reliability\n(.*?)\n## ", text, re.S).group(1)
    named = set(re.findall(r"`(test_\w+\.py)`", section))
    folder = README.parent / "tests" / "reliability"
    assert named == {p.name for p in folder.glob("test_*.py")}
