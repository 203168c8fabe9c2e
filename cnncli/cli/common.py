"""Helpers shared by every command: consoles, output formats, error handling."""

from __future__ import annotations

import functools
import os
import signal
import sys
import time
from collections.abc import Callable
from enum import Enum
from typing import Any, TypeVar

import typer

from cnncli.errors import CnnError, Terminated, interrupt_exit_code


class _LazyConsole:
    """A rich ``Console`` made on first use: importing rich costs 20-60 ms, which
    ``cnn shapes -f json`` or ``--help`` would pay for nothing. Attribute reads and writes
    go to the console (``stdout.print``, ``stderr.is_terminal``, ``stdout.quiet = True``);
    pass ``.console`` where rich itself wants a ``Console``."""

    def __init__(self, make: Callable[[], Any]) -> None:
        object.__setattr__(self, "_make", make)
        object.__setattr__(self, "_console", None)

    @property
    def console(self) -> Any:
        if self._console is None:
            object.__setattr__(self, "_console", self._make())
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.console, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.console, name, value)


def _stdout_console() -> Any:
    from rich.console import Console

    console = Console()
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console.width = 160  # piped tables get room instead of the 80-column fallback
    return console


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


# Data goes to stdout, everything else (progress, warnings, errors) to stderr. rich turns
# colour off by itself when the stream is not a terminal, and honours NO_COLOR.
stdout = _LazyConsole(_stdout_console)
stderr = _LazyConsole(_stderr_console)


class OutputFormat(str, Enum):
    """Data formats of reports (``cnn shapes``, ``cnn layers``)."""

    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"


class TableOrJson(str, Enum):
    """Commands whose output is a table for people or JSON for scripts, nothing else."""

    table = "table"
    json = "json"


F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(func: F) -> F:
    """Turn :class:`CnnError` into a one-line message and its exit code, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CnnError as exc:
            error(str(exc))
            raise typer.Exit(int(exc.exit_code)) from None
        except KeyboardInterrupt as exc:
            error("terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted")
            raise typer.Exit(int(interrupt_exit_code(exc))) from None
        except MemoryError:
            error("out of memory (try a smaller --batch, --batch-size or input size)")
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


#: After a first Ctrl-C or SIGTERM, more of them within this many seconds are ignored: the
#: command is already cleaning up (a second Ctrl-C a few ms later must not interrupt that
#: and print a traceback). One later than that ends the process at once.
SIGNAL_GRACE_S = 2.0


def install_signal_handlers() -> None:
    """SIGTERM behaves like Ctrl-C (:class:`~cnncli.errors.Terminated` is a
    KeyboardInterrupt, so the same clean-up runs; exit code 143 instead of 130), and a
    second signal during the clean-up is ignored. Called by the ``cnn`` program only."""
    first: list[float] = []

    def on_signal(signum: int, frame: Any) -> None:
        code = 143 if signum == signal.SIGTERM else 130
        if first:
            if time.monotonic() - first[0] < SIGNAL_GRACE_S:
                return
            os._exit(code)  # asked again, well after the first: stop now
        first.append(time.monotonic())
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)


def ignore_signals() -> None:
    """Ignore Ctrl-C and SIGTERM while the interpreter shuts down: Python resets signals
    that have Python handlers to their default there, and one arriving then would end the
    process by the signal instead of with the exit code already chosen (130, 143, ...)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def error(message: str) -> None:
    """Print ``error: message`` on stderr (one line, markup-safe)."""
    stderr.print(f"[bold red]error:[/] {_escape(one_line(message))}", highlight=False)


def warn(message: str) -> None:
    stderr.print(f"[yellow]warning:[/] {_escape(one_line(message))}", highlight=False)


def info(message: str) -> None:
    stderr.print(_escape(message), highlight=False)


_CONTROL = {i: f"\\x{i:02x}" for i in [*range(32), 127] if i != 9}
_CONTROL.update({10: "\\n", 13: "\\r", 0: "\\0"})


def one_line(message: str) -> str:
    """``message`` with line breaks and other control characters escaped: an error or warning
    that quotes the user's text (a spec key, an --ops string) stays one line."""
    return message.translate(_CONTROL)


def write_stdout(text: str) -> None:
    """Write raw data (JSON, CSV) to stdout without rich's wrapping or markup."""
    sys.stdout.write(text)
    if not text.endswith("\n"):
        sys.stdout.write("\n")
    sys.stdout.flush()


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
