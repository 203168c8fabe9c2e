"""Files in and out, safely: every command reads and writes through this module.

* **Atomic writes**: a hidden temporary file in the destination's folder, (fsync), then a
  rename over the destination. A reader, or a crash, sees the old file or the complete new
  one, never half; the temporary file is removed on every exit path that Python sees
  (errors, Ctrl-C, SIGTERM), and :func:`remove_stale_temps` removes those of killed processes
  (``kill -9``, power loss) when the folder is next used. Temporary names are
  ``.<name>.cnn-<pid>-<n>.tmp``: the pid tells a live writer's file from a stale one.
* **Bounded reads**: :func:`read_file` / :func:`read_text` read only regular files (never a
  FIFO, a device such as ``/dev/zero`` or a folder, which could block or never end) and at
  most a stated number of bytes; :func:`open_regular` opens a file for a decoder on the
  same terms.
* **Outputs never alias inputs**: :func:`guard_outputs` refuses an output that is, contains
  or lies inside an input (after resolving links).
* **One run per folder**: :class:`FolderLock` is an exclusive ``flock`` on a lock file in a
  folder, held for the whole run; a second process is refused with the holder's pid.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import re
import stat
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from cnncli.errors import CnnError, DataError

__all__ = [
    "LOCK_NAME",
    "FileReadError",
    "FolderLock",
    "WriteError",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "guard_outputs",
    "is_temp_name",
    "make_folder",
    "not_regular_reason",
    "open_regular",
    "read_file",
    "read_stream",
    "read_text",
    "remove_empty_folders",
    "remove_stale_temps",
    "sync_filesystem",
]

#: Most bytes read from a spec, a training config or a pipeline file (real ones are a few KB).
TEXT_LIMIT = 8 << 20
LOCK_NAME = ".cnn.lock"
_TEMP_RE = re.compile(r"^\..+\.cnn-(\d+)-\d+\.tmp$")
_LEGACY_AUGMENT_RE = re.compile(r"^\.cnnaug-(\d+)-\d+-.+\.tmp$")  # before one atomic write
_COUNTER = itertools.count()


class WriteError(CnnError):
    """An output could not be written; ``reason`` is the system's words (disk full, ...)."""

    def __init__(self, path: str, what: str, reason: str) -> None:
        self.path, self.what, self.reason = path, what, reason
        super().__init__(f"{path}: cannot write {what} ({reason})")


class FileReadError(DataError):
    """An input file could not be read; ``reason`` says why, without the path."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path, self.reason = os.fspath(path), reason
        super().__init__(f"{self.path}: {reason}")


# --------------------------------------------------------------------------- atomic writes


def _temp_path(folder: str, name: str) -> tuple[int, str]:
    """Create a new hidden temporary file next to the destination: (fd, path)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    pid = os.getpid()
    while True:
        tmp = os.path.join(folder, f".{name}.cnn-{pid}-{next(_COUNTER)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp  # 0o666 & ~umask, like any new file
        except FileExistsError:  # left by a killed process that had our pid
            continue


def atomic_write(
    path: str | os.PathLike[str],
    write: Callable[[IO[bytes]], Any],
    what: str = "file",
    *,
    fsync: bool = True,
) -> Path:
    """Call ``write(f)`` on a temporary binary file, then move it over ``path``.

    An OSError (disk full, no permission, a folder in the way) becomes a :class:`WriteError`
    naming ``path`` and ``what``; the old file, if any, is left as it was and no temporary
    file remains. ``fsync=False`` skips the flushes to disk (the caller makes the data
    durable later, as ``cnn augment`` does once per run).
    """
    target = os.fspath(path)
    folder, name = os.path.split(target)
    tmp = None
    try:
        fd, tmp = _temp_path(folder, name)
        with os.fdopen(fd, "wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, target)
        tmp = None
        if fsync:
            _fsync_dir(folder or ".")
    except OSError as exc:
        raise WriteError(target, what, _reason(exc)) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return Path(target)


def atomic_write_bytes(
    path: str | os.PathLike[str], data: bytes, what: str = "file", *, fsync: bool = True
) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`).

    The lean path for many small files (``cnn augment`` writes one per output): plain
    strings and ``os`` calls, no ``pathlib``.
    """
    target = os.fspath(path)
    folder, name = os.path.split(target)
    tmp = None
    try:
        fd, tmp = _temp_path(folder, name)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, target)
        tmp = None
        if fsync:
            _fsync_dir(folder or ".")
    except OSError as exc:
        raise WriteError(target, what, _reason(exc)) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike[str], text: str, what: str = "file") -> Path:
    atomic_write_bytes(path, text.encode("utf-8"), what)
    return Path(path)


def _reason(exc: OSError) -> str:
    if isinstance(exc, IsADirectoryError) or exc.errno == errno.EISDIR:
        return "it is a folder"
    if exc.errno == errno.EROFS:
        return "read-only file system"
    return exc.strerror or str(exc)


def _fsync_dir(folder: str) -> None:
    """Make the rename itself durable (POSIX); harmless where folders can't be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sync_filesystem(folder: str | os.PathLike[str]) -> None:
    """Flush every file written under ``folder`` to disk in one call (``syncfs`` on Linux,
    else ``sync``): how many files written with ``fsync=False`` become durable at once."""
    try:
        fd = os.open(os.fspath(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        if libc.syncfs(fd) == 0:
            return
    except (OSError, AttributeError):
        pass
    finally:
        os.close(fd)
    if hasattr(os, "sync"):
        os.sync()


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is one of this module's temporary files (of any process)."""
    return name.startswith(".") and name.endswith(".tmp") and (
        _TEMP_RE.match(name) is not None or _LEGACY_AUGMENT_RE.match(name) is not None)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


def remove_stale_temps(
    folder: str | os.PathLike[str], *, recursive: bool = False, legacy_names: Iterable[str] = ()
) -> list[str]:
    """Remove temporary files left in ``folder`` by processes that no longer run.

    ``legacy_names``: file names whose temporaries of older versions
    (``.<name>.<8 random characters>.tmp``, no pid) are removed too; only for folders the
    caller holds a :class:`FolderLock` on, where no one else can be writing.
    Returns the paths removed.
    """
    legacy = [re.compile(rf"^\.{re.escape(n)}\.[a-z0-9_]{{8}}\.tmp$") for n in legacy_names]
    removed: list[str] = []
    walker = os.walk(folder) if recursive else [(os.fspath(folder), None, None)]
    for root, _dirs, files in walker:
        if files is None:
            try:
                files = os.listdir(root)
            except OSError:
                return removed
        for name in files:
            if not name.endswith(".tmp") or not name.startswith("."):
                continue
            m = _TEMP_RE.match(name) or _LEGACY_AUGMENT_RE.match(name)
            stale = (m is not None and not _pid_alive(int(m.group(1)))) or any(
                r.match(name) for r in legacy)
            if stale:
                path = os.path.join(root, name)
                with contextlib.suppress(OSError):
                    os.unlink(path)
                    removed.append(path)
    return removed


# --------------------------------------------------------------------------- bounded reads


def not_regular_reason(mode: int) -> str:
    """Why a file of this ``st_mode`` is not read (it is not a regular file)."""
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if stat.S_ISFIFO(mode):
        return "is a FIFO (named pipe), not a regular file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, not a regular file"
    if stat.S_ISSOCK(mode):
        return "is a socket, not a regular file"
    return "is not a regular file"


def open_regular(path: str | os.PathLike[str], what: str = "file") -> IO[bytes]:
    """Open ``path`` for reading if it is a regular file; :class:`FileReadError` otherwise.

    Opened non-blocking and checked with ``fstat`` on the open file, so a FIFO never blocks
    and a file swapped for something else after a check is still caught.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise FileReadError(path, f"{what} not found") from None
    except IsADirectoryError:
        raise FileReadError(path, "is a folder, not a file") from None
    except PermissionError:
        raise FileReadError(path, "permission denied") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FileReadError(path, "symbolic link loop") from None
        raise FileReadError(path, f"cannot read {what} ({_reason(exc)})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise FileReadError(path, not_regular_reason(mode))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_file(
    path: str | os.PathLike[str], *, limit: int = TEXT_LIMIT, what: str = "file"
) -> bytes:
    """The bytes of the regular file ``path``, refusing one larger than ``limit``."""
    with open_regular(path, what) as fh:
        try:
            size = os.fstat(fh.fileno()).st_size
            if size > limit:
                raise FileReadError(path, f"{what} is too large ({_size(size)}; "
                                          f"the limit is {_size(limit)})")
            data = fh.read(limit + 1)
        except OSError as exc:
            raise FileReadError(path, f"cannot read {what} ({_reason(exc)})") from None
    if len(data) > limit:  # it grew while being read
        raise FileReadError(path, f"{what} is too large (the limit is {_size(limit)})")
    return data


def read_text(path: str | os.PathLike[str], *, limit: int = TEXT_LIMIT, what: str = "file") -> str:
    """:func:`read_file` decoded as UTF-8 (a BOM is dropped); errors name the file."""
    return decode_text(read_file(path, limit=limit, what=what), path, what)


def read_stream(stream: IO[Any], source: str, *, limit: int = TEXT_LIMIT,
                what: str = "input") -> str:
    """At most ``limit`` bytes of ``stream`` (stdin; its binary buffer when it has one)
    decoded as UTF-8; more is an error, so ``< /dev/zero`` ends at once instead of filling
    memory."""
    stream = getattr(stream, "buffer", stream)
    try:
        data = stream.read(limit + 1)
    except OSError as exc:
        raise FileReadError(source, f"cannot read {what} ({_reason(exc)})") from None
    except UnicodeDecodeError as exc:  # a text stream without a buffer
        raise FileReadError(source, f"{what} is not UTF-8 text ({exc.reason})") from None
    if len(data) > limit:
        raise FileReadError(source, f"{what} is too large (more than {_size(limit)})")
    return data if isinstance(data, str) else decode_text(data, source, what)


def decode_text(data: bytes, source: str | os.PathLike[str], what: str = "file") -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise FileReadError(source, f"{what} is not UTF-8 text (byte {exc.start + 1}, "
                                    f"line {line})") from None
    return text[1:] if text.startswith("\ufeff") else text


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


# --------------------------------------------------------------------------- aliasing


def _resolved(path: str | os.PathLike[str]) -> str:
    return os.path.realpath(os.path.abspath(os.fspath(path)))


def _inside(child: str, parent: str) -> bool:
    return child != parent and child.startswith(parent.rstrip(os.sep) + os.sep)


def _same(a: str, b: str) -> bool:
    if a == b:
        return True
    try:  # hard links, bind mounts, case-insensitive file systems
        return os.path.samefile(a, b)
    except OSError:
        return False


def guard_outputs(
    outputs: Sequence[tuple[str | os.PathLike[str] | None, str]],
    inputs: Sequence[tuple[str | os.PathLike[str] | None, str]],
) -> None:
    """Refuse (exit 2) an output that is, contains or lies inside an input, or that is
    another output.

    Both lists hold ``(path, label)`` pairs (``None`` paths are skipped); labels name the
    role in the message, e.g. ``("runs/x", "--out")`` and ``("data.npz", "the data set")``.
    Paths are resolved (links followed) first, so ``./a/../b`` and a symlink to ``b`` are
    ``b``. Call it before writing anything.
    """
    ins = [(_resolved(p), os.fspath(p), label) for p, label in inputs if p is not None]
    outs = [(_resolved(p), os.fspath(p), label) for p, label in outputs if p is not None]
    for i, (ro, po, lo) in enumerate(outs):
        for ri, pi, li in ins:
            if _same(ro, ri):
                why = f"is {li} {pi}"
            elif _inside(ro, ri):
                why = f"lies inside {li} {pi}"
            elif _inside(ri, ro):
                why = f"contains {li} {pi}"
            else:
                continue
            raise CnnError(f"{po}: {lo} {why}; an output must never overwrite or mix with an "
                           "input (choose another path)")
        for ro2, po2, lo2 in outs[i + 1:]:
            if _same(ro, ro2):
                raise CnnError(f"{po}: {lo} and {lo2} ({po2}) are the same file; give them "
                               "different paths")


# --------------------------------------------------------------------------- folders


def make_folder(path: str | os.PathLike[str], what: str = "output folder") -> list[Path]:
    """``mkdir -p`` with one clear error; returns the folders it created, outermost first."""
    path = Path(path)
    missing: list[Path] = []
    p = path
    while not p.exists() and not p.is_symlink() and p != p.parent:
        missing.append(p)
        p = p.parent
    if p.exists() and not p.is_dir():
        raise CnnError(f"{path}: cannot create the {what}: {p} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise CnnError(f"{path}: cannot create the {what}: it exists and is not a folder") \
            from None
    except OSError as exc:
        raise CnnError(f"{path}: cannot create the {what} ({_reason(exc)})") from None
    return missing[::-1]


def remove_empty_folders(folders: Iterable[Path]) -> None:
    """Remove ``folders`` (innermost first) if they are empty; others are left alone."""
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()


class FolderLock:
    """An exclusive lock on ``folder`` (``flock`` on ``folder/.cnn.lock``, naming our pid).

    :meth:`acquire` raises :class:`CnnError` (exit 2) naming the folder and the pid holding
    it. The lock file is removed on :meth:`release`; one left by a killed process holds no
    lock (the system drops it with the process) and is simply taken over.
    """

    def __init__(self, folder: str | os.PathLike[str], what: str = "folder") -> None:
        self.folder = Path(folder)
        self.what = what
        self.path = self.folder / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> FolderLock:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): no lock
            return self
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0),
                             0o666)
            except OSError as exc:
                raise CnnError(f"{self.folder}: cannot lock the {self.what} ({_reason(exc)})") \
                    from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_pid(fd)
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise CnnError(f"{self.folder}: cannot lock the {self.what} "
                                   f"({_reason(exc)})") from None
                raise CnnError(
                    f"{self.folder}: the {self.what} is in use by another cnn process "
                    f"({'pid ' + holder if holder else 'pid unknown'}); wait for it to end or "
                    "choose another folder") from None
            # The holder before us may have removed the file after we opened it: then our
            # lock is on a file no one else will open; start again with the current one.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except OSError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self.fd = fd
            return self

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""
