"""Which Numba kernels a run still has to compile, found before it compiles them.

Numba compiles a kernel the first time it is called with new argument types and caches the
machine code on disk (``cache=True``); the next process loads it in milliseconds. On an empty
cache (a fresh install, CI, a new ``NUMBA_CACHE_DIR``) that first call costs 0.1-3 s per kernel,
and a command looks frozen meanwhile. :func:`discover` runs a callable (one small pass) with
every kernel call replaced by a stub that only records the kernel and its argument types;
:func:`not_ready` loads from the disk cache what it has and returns the rest, so that a
command can say, once, that it is compiling (``COMPILING_NOTE``).

A helper process compiling the missing kernels from the other end was tried (Numba holds a
global lock, so one process compiles one kernel at a time): on this 2-core machine shared with
other work it made the first LeNet-5 batch slower (5.5-9 s against 4.1-4.8 s), so the cure
is compiling less (fewer specialisations, kernels shared between layers), not in parallel.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable
from typing import Any

#: The one line a command prints (on stderr) when a run has kernels to compile.
COMPILING_NOTE = "compiling kernels for first use; cached for next time"

#: One kernel specialisation: (dispatcher, tuple of Numba argument types).
Call = tuple[Any, tuple]


#: Set while :func:`discover` runs; a pass's worker threads inherit it (they run in a copy
#: of the caller's context), other threads do not, so their kernel calls run as usual.
_recording: contextvars.ContextVar[bool] = contextvars.ContextVar("cnncli_jit_recording",
                                                                 default=False)


@contextlib.contextmanager
def _stubbed(calls: list[Call]):
    """Kernel calls in this context record (dispatcher, argument types) and return None."""
    from numba._dispatcher import Dispatcher as _Base
    from numba.core.registry import CPUDispatcher

    seen: set = set()
    lock = threading.Lock()
    run_kernel = _Base.__call__

    def stub(self, *args, **kwargs):
        if not _recording.get() or kwargs or not self.py_func.__module__.startswith("cnncli."):
            return run_kernel(self, *args, **kwargs)
        sig = tuple(self.typeof_pyval(a) for a in args)
        with lock:
            if (id(self), sig) not in seen:
                seen.add((id(self), sig))
                calls.append((self, sig))
        return None

    token = _recording.set(True)
    CPUDispatcher.__call__ = stub
    try:
        yield
    finally:
        del CPUDispatcher.__call__
        _recording.reset(token)


def discover(run: Callable[[], Any]) -> list[Call]:
    """The kernel specialisations ``run()`` calls, in first-call order, without running any
    kernel. ``run`` sees uninitialised kernel outputs, so it must work on throw-away data;
    it may raise part way (garbage indices): what was recorded until then is returned."""
    import warnings

    import numpy as np

    calls: list[Call] = []
    with _stubbed(calls), warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        with contextlib.suppress(Exception):  # best effort: the kernels seen until then
            run()
    return calls


def not_ready(calls: list[Call]) -> list[Call]:
    """The calls whose kernel is neither compiled in this process nor in the disk cache;
    the cached ones are loaded now (the run would load them on first call anyway)."""
    out = []
    for disp, sig in calls:
        if sig in disp.overloads:
            continue
        try:
            cres = disp._cache.load_overload(sig, disp.targetctx)
            if cres is not None:
                disp.add_overload(cres)
                continue
        except Exception:  # noqa: BLE001 (Numba internals moved: treat as not cached)
            pass
        out.append((disp, sig))
    return out
