"""Exceptions and exit codes shared by the library and the CLI.

Every error a user can cause is a :class:`CnnError`; the CLI prints its one-line message
and exits with its ``exit_code``. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Named process exit statuses (the same across every ``cnn`` command)."""

    OK = 0
    FAILURE = 1  # the command ran but its verdict is negative (gradcheck failed, files skipped)
    BAD_INPUT = 2  # invalid arguments, spec, data or checkpoint; nothing was done
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
    TERMINATED = 143  # SIGTERM (128 + 15), handled like Ctrl-C


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C's KeyboardInterrupt would be, so that every clean-up
    written for Ctrl-C (temporary files, the last good checkpoint) runs for it too."""


def interrupt_exit_code(exc: BaseException) -> ExitCode:
    """143 for SIGTERM, 130 for Ctrl-C."""
    return ExitCode.TERMINATED if isinstance(exc, Terminated) else ExitCode.INTERRUPTED


class CnnError(Exception):
    """A user-facing error: one line, no traceback, exit code 2 unless said otherwise."""

    exit_code: ExitCode = ExitCode.BAD_INPUT


class SpecError(CnnError):
    """A problem in an architecture spec, located by file, YAML line and layer."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        layer: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.layer = layer
        super().__init__(self.__str__())

    def located(self, *, file: str | None = None) -> SpecError:
        """Return a copy that also names ``file`` (set once the source is known)."""
        return SpecError(self.message, file=self.file or file, line=self.line, layer=self.layer)

    def __str__(self) -> str:
        where = self.file or "<spec>"
        if self.line is not None:
            where += f":{self.line}"
        who = f" layer '{self.layer}':" if self.layer else ""
        return f"{where}:{who} {self.message}"


class DataError(CnnError):
    """Missing, unreadable or inconsistent data (images, labels, checkpoints)."""


class ShapeMismatchError(CnnError, ValueError):
    """An array passed to the engine API has the wrong shape, dtype or values."""
