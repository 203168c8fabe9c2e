"""Helpers shared by every command: consoles, output formats, error handling."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from enum import Enum
from typing import Any, TypeVar

import typer
from rich.console import Console

from cnncli.errors import CnnError, ExitCode

# Data goes to stdout, everything else (progress, warnings, errors) to stderr. rich turns
# colour off by itself when the stream is not a terminal, and honours NO_COLOR.
stdout = Console()
stderr = Console(stderr=True, soft_wrap=True)
if not stdout.is_terminal:  # piped tables get room instead of the 80-column fallback
    stdout.width = 160


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
        except KeyboardInterrupt:
            error("interrupted")
            raise typer.Exit(int(ExitCode.INTERRUPTED)) from None

    return wrapper  # type: ignore[return-value]


def error(message: str) -> None:
    """Print ``error: message`` on stderr (one line, markup-safe)."""
    stderr.print(f"[bold red]error:[/] {_escape(message)}", highlight=False)


def warn(message: str) -> None:
    stderr.print(f"[yellow]warning:[/] {_escape(message)}", highlight=False)


def info(message: str) -> None:
    stderr.print(_escape(message), highlight=False)


def write_stdout(text: str) -> None:
    """Write raw data (JSON, CSV) to stdout without rich's wrapping or markup."""
    sys.stdout.write(text)
    if not text.endswith("\n"):
        sys.stdout.write("\n")
    sys.stdout.flush()


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
