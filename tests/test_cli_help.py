"""``--help`` of every command, usage errors, and what the light commands import.

Help is click's plain layout: usage lines name arguments ``SPEC``/``[INPUT]`` (not
``{SPEC}``), flags show no ``<bool>``, choice lists stay whole, required parameters say so.
A usage error is one ``error:`` line on stderr naming the command, exit code 2.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

import cnncli.cli.main  # noqa: F401  (registers the commands on the app)
from cnncli.cli.app import app

ROOT = Path(__file__).parent.parent
LENET = Path(__file__).parent / "data" / "specs" / "lenet5.yaml"

runner = CliRunner()


def _commands(group=None, path=()):
    """(path, click command) of every command and group, the app itself first."""
    group = group or get_command(app)
    yield path, group
    for name, cmd in getattr(group, "commands", {}).items():
        if not cmd.hidden:
            yield from _commands(cmd, (*path, name)) if hasattr(cmd, "commands") else [
                ((*path, name), cmd)]


COMMANDS = list(_commands())


def test_every_command_is_covered():
    names = {" ".join(p) for p, _ in COMMANDS}
    assert {"", "shapes", "time", "train", "augment", "viz", "viz cam"} <= names


def _help(path, columns: int) -> str:
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    return result.stdout


@pytest.mark.parametrize("columns", [80, 120])
@pytest.mark.parametrize("path,cmd", COMMANDS, ids=lambda v: " ".join(v) or "cnn"
                         if isinstance(v, tuple) else "")
def test_help_reads_cleanly(path, cmd, columns):
    text = _help(path, columns)
    lines = text.splitlines()
    usage = lines[0]
    assert usage.startswith("Usage: " + " ".join(("cnn", *path)) + " [OPTIONS]"), usage
    assert "{" not in usage and "}" not in usage
    for p in cmd.params:
        if p.param_type_name == "argument":  # SPEC if required, [INPUT] if not
            name = p.metavar
            assert name and name.isupper(), (path, p.name)
            piece = name if p.required else f"[{name}]"
            assert piece + ("..." if p.nargs != 1 else "") in usage.split(), (usage, piece)
    assert "<bool>" not in text
    # textwrap must not break an option name or a default after a hyphen
    assert not [ln for ln in lines if re.search(r"\w-$", ln)], text
    # a choice list stays on one line, and so does the --option it follows
    for p in cmd.params:
        choices = getattr(getattr(p, "type_descriptor", None), "choices", None)
        if p.param_type_name == "option" and choices:
            shown = "<" + "|".join(str(getattr(c, "value", c)) for c in choices) + ">"
            assert any(p.opts[-1] in ln and shown in ln for ln in lines), (p.opts, text)
    # required options and arguments say so
    for p in cmd.params:
        if p.required:
            label = p.opts[-1] if p.param_type_name == "option" else p.metavar
            at = next(i for i, ln in enumerate(lines) if re.match(rf"\s+(-\w, )?{label}\b", ln))
            block = " ".join(lines[at:at + 4])  # the option's help, wrapped
            assert "[required]" in block.split(label, 1)[1].split("  -")[0], (label, text)


def test_architecture_files_are_spec_everywhere():
    """An architecture file is SPEC, as an argument or as train's --arch."""
    for path, cmd in COMMANDS:
        for p in cmd.params:
            if "Architecture YAML" in (getattr(p, "help", None) or ""):
                assert p.metavar == "SPEC", (path, p.name)
    assert re.search(r"-a, --arch SPEC\s", _help(("train",), 80))


def test_command_list_gives_whole_sentences():
    text = _help((), 80)
    commands = text.split("Commands:", 1)[1]
    assert "..." not in commands
    flat = " ".join(commands.split())
    assert "Every layer's output size, parameters, multiply-adds and receptive field." in flat


def test_augment_examples_one_per_line():
    text = _help(("augment",), 80)
    examples = text.split("Examples:", 1)[1].strip().splitlines()
    assert len(examples) == 5
    assert all(ln.strip().startswith("cnn augment ") for ln in examples), examples
    assert all(ln.count("cnn augment") == 1 for ln in examples)


def test_no_arguments_prints_the_help():
    result = runner.invoke(app, [])
    assert result.exit_code == 2
    assert result.stdout.startswith("Usage: cnn [OPTIONS] COMMAND")


# -- usage errors: one line, exit code 2 -------------------------------------------------------


def usage_error(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and "╭" not in result.stderr
    return lines[0]


@pytest.mark.parametrize("args,line", [
    (["time", str(LENET), "--warmup", "3"],
     "error: cnn time: no such option --warmup (try 'cnn time --help')"),
    (["time", str(LENET), "--bach", "3"],
     "error: cnn time: no such option --bach (did you mean --batch?) (try 'cnn time --help')"),
    (["time"], "error: cnn time: missing argument 'SPEC' (try 'cnn time --help')"),
    (["shapes", str(LENET), "--batch", "0"],
     "error: cnn shapes: invalid value for '--batch' / '-b': 0 is not in the range x>=1 "
     "(try 'cnn shapes --help')"),
    (["shapes", str(LENET), "-f", "xml"],
     "error: cnn shapes: invalid value for '--format' / '-f': 'xml' is not one of table, json, "
     "csv, markdown, yaml (try 'cnn shapes --help')"),
    (["calc", "conv"], "error: cnn calc: missing option '--input' / '-i' (try 'cnn calc --help')"),
    (["frobnicate"], "error: cnn: no such command 'frobnicate' (try 'cnn --help')"),
    (["viz", "cam", "--nope"], "error: cnn viz cam: no such option --nope "
     "(try 'cnn viz cam --help')"),
])
def test_usage_errors_are_one_line(args, line):
    assert usage_error(*args) == line


def test_usage_error_of_the_program():
    """The real entry point: ``cnn``, whatever the executable is called; exit code 2."""
    proc = subprocess.run([sys.executable, "-m", "cnncli.cli.main", "time", "x.yaml",
                           "--warmup", "3"], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == "error: cnn time: no such option --warmup (try 'cnn time --help')\n"
