"""Entry point of the ``cnn`` program: imports the command modules, which register on ``app``."""

from __future__ import annotations

from cnncli.cli.app import app

# One import per command module (each keeps heavy imports inside its commands).
from cnncli.cli import shapes_cmd  # noqa: E402,F401  isort: skip
from cnncli.cli import engine_cmd  # noqa: E402,F401  isort: skip
from cnncli.cli import train_cmd  # noqa: E402,F401  isort: skip
from cnncli.cli import augment_cmd  # noqa: E402,F401  isort: skip
from cnncli.cli import onnx_cmd  # noqa: E402,F401  isort: skip
from cnncli.cli import viz_cmd  # noqa: E402,F401  isort: skip


def main() -> None:
    from cnncli.cli.common import ignore_signals, install_signal_handlers

    install_signal_handlers()
    try:
        app(prog_name="cnn")  # "cnn time", not "python -m cnncli.cli.main time"
    finally:
        ignore_signals()  # from here to the end of the process: see ignore_signals


if __name__ == "__main__":
    main()
