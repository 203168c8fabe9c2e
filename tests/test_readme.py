"""README stays true: its vocabulary section is exactly what the registry generates."""

from __future__ import annotations

import re
from pathlib import Path

from cnncli.vocabulary import vocabulary, vocabulary_markdown

README = Path(__file__).parent.parent / "README.md"


def test_readme_vocabulary_is_generated_from_the_registry():
    text = README.read_text(encoding="utf-8")
    m = re.search(r"<!-- vocabulary:start[^>]*-->\n(.*?)\n<!-- vocabulary:end -->", text, re.S)
    assert m, "README lacks the vocabulary markers"
    assert m.group(1) == vocabulary_markdown(vocabulary()).rstrip("\n"), (
        "README vocabulary is stale: paste `cnn layers --format markdown` between the markers")


def test_quickstart_is_three_commands_and_ci_runs_them():
    text = README.read_text(encoding="utf-8")
    block = re.search(r"## Quickstart\n\n```bash\n(.*?)```", text, re.S).group(1)
    commands = [line for line in block.splitlines() if line.strip()]
    assert len(commands) == 3
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert commands[0] in ci and commands[2] in ci


def test_reliability_section_names_the_tests_that_check_it():
    text = README.read_text(encoding="utf-8")
    section = re.search(r"## Reliability\n(.*?)\n## ", text, re.S).group(1)
    named = set(re.findall(r"`(test_\w+\.py)`", section))
    folder = README.parent / "tests" / "reliability"
    assert named == {p.name for p in folder.glob("test_*.py")}
