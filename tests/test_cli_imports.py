"""What the light commands import: ``--help`` and the ``-f json``/``-f csv`` reports never
import rich (20-60 ms of a 100-150 ms command); a table does, when it is drawn."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
LENET = Path(__file__).parent / "data" / "specs" / "lenet5.yaml"

IMPORTS = r"""
import sys
from cnncli.cli.main import main
sys.argv = ["cnn", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    code = exc.code
print("RICH" if any(m == "rich" or m.startswith("rich.") for m in sys.modules) else "NO RICH",
      code, file=sys.stderr)
"""


def _imports_rich(*args: str) -> bool:
    proc = subprocess.run([sys.executable, "-c", IMPORTS, *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.endswith(" 0"), proc.stderr
    return last.startswith("RICH")


@pytest.mark.parametrize("args", [
    ["--help"],
    ["time", "--help"],
    ["shapes", str(LENET), "-f", "json"],
    ["shapes", str(LENET), "-f", "csv"],
    ["layers", "-f", "json"],
])
def test_light_output_does_not_import_rich(args):
    assert not _imports_rich(*args)


def test_a_table_does_import_rich():
    """The check above can see rich: a table is drawn by it."""
    assert _imports_rich("shapes", str(LENET))


def test_lazy_console_is_made_on_first_use():
    from cnncli.cli.common import _LazyConsole

    made = []

    class Fake:
        width = 80

    lazy = _LazyConsole(lambda: made.append(1) or Fake())
    assert made == []
    lazy.width = 160  # writes go to the console
    assert lazy.width == 160 and lazy.console.width == 160 and made == [1]
