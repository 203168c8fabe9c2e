"""Checks on where a picture goes, before any work: nothing read may be overwritten."""

from __future__ import annotations

import os
from pathlib import Path

from cnncli.errors import CnnError


def check_output(out: Path, suffixes: tuple[str, ...], inputs: list[Path]) -> Path:
    """``out`` must end in one of ``suffixes``, not be a folder, be in a folder that exists,
    and not be any of ``inputs`` (the same file under another name included)."""
    if out.suffix.lower() not in suffixes:
        raise CnnError(f"{out}: --out must end in {' or '.join(suffixes)}")
    if out.is_dir():
        raise CnnError(f"{out}: --out is a folder; give a file name")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise CnnError(f"{out}: folder {folder} does not exist")
    for p in inputs:
        if _same(out, p):
            raise CnnError(f"{out}: --out would overwrite the input {p}")
    return out


def _same(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()
