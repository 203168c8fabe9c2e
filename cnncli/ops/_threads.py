"""Batch-parallel execution of the op cores on a small pool of Python threads.

The cores of conv and pooling process a batch image by image (or chunk by chunk), and
every image is independent. They therefore split the batch into ``workers()`` contiguous
parts and run one part per thread. Inside such a region OpenBLAS is switched to one thread:
each worker's GEMMs then run on its own core, next to its own (serial, ``nogil``) Numba
kernels, instead of every small GEMM being split over both cores and the Numba kernels
leaving a core idle (and fighting OpenBLAS's spinning worker threads).

* The split depends only on the batch size and the worker count, never on timing, so
  results are deterministic run to run. Reductions over the batch (weight gradients) are
  computed per part and summed in part order.
* The worker count is ``CNNCLI_NUM_THREADS``, else ``OPENBLAS_NUM_THREADS`` /
  ``OMP_NUM_THREADS``, else the CPUs this process may use. With one worker everything runs
  in the calling thread, OpenBLAS included.
* When OpenBLAS's thread control cannot be found (another BLAS), the regions still run in
  parallel with the BLAS's own setting; that is correct, only possibly slower.
"""

from __future__ import annotations

import contextvars
import ctypes
import glob
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np

_MAX_WORKERS = 8
_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_workers: int | None = None
_blas: tuple[Any, Any] | None | bool = False  # False: not looked up yet
_depth = threading.local()


def _env_threads() -> int | None:
    for var in ("CNNCLI_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        v = os.environ.get(var, "").strip()
        if v:
            try:
                return max(1, int(v))
            except ValueError:
                continue
    return None


def usable_cpus() -> int:
    """Cores this process may run on (the affinity mask in containers), else the CPU count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def workers() -> int:
    """How many parts a batch is split into (1: run serially in the caller)."""
    global _workers
    if _workers is None:
        n = _env_threads()
        _workers = max(1, min(_MAX_WORKERS, n if n is not None else usable_cpus()))
    return _workers


def set_workers(n: int | None) -> None:
    """Override the worker count (None: back to the environment's); for tests/benchmarks."""
    global _workers, _pool
    with _lock:
        _workers = None if n is None else max(1, min(_MAX_WORKERS, int(n)))
        if _pool is not None:
            _pool.shutdown(wait=True)
            _pool = None


def _blas_control():
    """(get, set) for the OpenBLAS bundled with NumPy, or None."""
    global _blas
    if _blas is False:
        found = None
        try:
            libdir = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
            for path in sorted(glob.glob(os.path.join(libdir, "*openblas*"))):
                lib = ctypes.CDLL(path)
                for prefix in ("scipy_openblas", "openblas"):
                    for suffix in ("64_", ""):
                        try:
                            get = getattr(lib, f"{prefix}_get_num_threads{suffix}")
                            put = getattr(lib, f"{prefix}_set_num_threads{suffix}")
                        except AttributeError:
                            continue
                        get.restype = ctypes.c_int
                        put.argtypes = [ctypes.c_int]
                        found = (get, put)
                        break
                    if found:
                        break
                if found:
                    break
        except OSError:
            found = None
        _blas = found
    return _blas


_blas_holders = 0
_blas_saved = 1


@contextmanager
def single_threaded_blas():
    """OpenBLAS on one thread for the duration (restored afterwards). The setting is
    process-wide, so it is counted: with passes running from several threads at once, the
    first to enter saves the old value and the last to leave restores it."""
    global _blas_holders, _blas_saved
    ctl = _blas_control()
    if not ctl:
        yield
        return
    get, put = ctl
    with _lock:
        if _blas_holders == 0:
            _blas_saved = get()
            if _blas_saved != 1:
                put(1)
        _blas_holders += 1
    try:
        yield
    finally:
        with _lock:
            _blas_holders -= 1
            if _blas_holders == 0 and _blas_saved != 1:
                put(_blas_saved)


def engine_region():
    """Context for a whole forward or backward pass: OpenBLAS stays on one thread
    throughout. With several workers, so that no OpenBLAS worker thread is left spinning
    (after a GEMM outside a parallel region) on the core that one of our workers needs;
    with one (``CNNCLI_NUM_THREADS=1``), because one thread is what was asked for: OpenBLAS
    would otherwise still start its own threads, and on a busy machine their spinning
    made a CIFAR CNN step several times slower than on one thread."""
    return single_threaded_blas()


def _get_pool(n: int) -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=n - 1, thread_name_prefix="cnncli-op")
        return _pool


def split(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ranges covering [0, n) with sizes differing by at most one
    (fewer when n < parts)."""
    parts = max(1, min(parts, n))
    q, r = divmod(n, parts)
    out, lo = [], 0
    for i in range(parts):
        hi = lo + q + (1 if i < r else 0)
        out.append((lo, hi))
        lo = hi
    return out


#: Regions with less work than this (multiply-adds or element visits, roughly) run
#: serially: handing a part to another thread costs tens of microseconds. (LeNet-5's
#: layers are all below it; the CIFAR CNN's convolutions are well above.)
MIN_PARALLEL_WORK = 2.5e7


def over_batch(fn: Callable[[int, int, int], Any], n: int, min_items: int = 1,
               work: float | None = None) -> list[Any]:
    """Run ``fn(lo, hi, part)`` for contiguous parts of range(n), in parallel; return the
    results in part order. Parts have at least ``min_items`` items, and a region whose
    ``work`` estimate is below MIN_PARALLEL_WORK runs serially (in the caller, as part 0).
    Nested calls (from inside a part) run serially, with the enclosing part's index (so
    that per-part workspaces are never shared between threads)."""
    if getattr(_depth, "inside", False):
        return [fn(0, n, _depth.part)]
    w = workers()
    if work is not None and work < MIN_PARALLEL_WORK:
        w = 1
    return run_parts(fn, split(n, min(w, max(1, n // max(1, min_items)))))


def run_parts(fn: Callable[[int, int, int], Any], parts: list[tuple[int, int]],
              on_error: Callable[[], None] | None = None) -> list[Any]:
    """``fn(lo, hi, i)`` for each given range, part 0 in the caller and the others on the
    pool, all at once; results in part order. When a part raises, ``on_error()`` runs in
    its thread (to release parts waiting for it) and, after every part has ended, the
    first exception in part order that is not a broken barrier is raised."""
    if len(parts) == 1:
        lo, hi = parts[0]
        return [fn(lo, hi, 0)]
    owner = _owner()
    pool = _get_pool(workers())

    def call(lo: int, hi: int, i: int) -> Any:
        _depth.inside, _depth.part, _depth.owner = True, i, owner
        try:
            return fn(lo, hi, i)
        except BaseException:
            if on_error is not None:
                on_error()
            raise
        finally:
            _depth.inside, _depth.part, _depth.owner = False, 0, None

    with single_threaded_blas():
        # each part runs in a copy of the caller's context (NumPy's errstate lives there)
        futures = [pool.submit(contextvars.copy_context().run, call, lo, hi, i)
                   for i, (lo, hi) in enumerate(parts[1:], 1)]
        outcomes: list[tuple[bool, Any]] = []
        try:
            outcomes.append((True, call(*parts[0], 0)))
        except BaseException as e:  # noqa: BLE001 (re-raised below, after the others)
            outcomes.append((False, e))
        for f in futures:
            try:
                outcomes.append((True, f.result()))
            except BaseException as e:  # noqa: BLE001
                outcomes.append((False, e))
    errors = [v for ok, v in outcomes if not ok]
    if errors:
        real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
        raise (real or errors)[0]
    return [v for _, v in outcomes]


class Rendezvous:
    """Where the parts of one batch meet in the middle of a pass: ``gather(key, part,
    value)`` returns every part's value for ``key``, in part order, once all have given
    theirs (a barrier). Batchnorm uses it for whole-batch statistics and dropout for one
    mask. ``abort()`` releases waiting parts when one fails (they get a broken barrier)."""

    def __init__(self, parts: int) -> None:
        self.parts = parts
        self._barrier = threading.Barrier(parts)
        self._slots: dict[tuple, Any] = {}

    def gather(self, key, part: int, value: Any) -> list[Any]:
        self._slots[(key, part)] = value
        self._barrier.wait()
        return [self._slots[(key, i)] for i in range(self.parts)]

    def abort(self) -> None:
        self._barrier.abort()


# ---------------------------------------------------------------------------------------
# workspaces: scratch buffers reused across calls, one set per part
# ---------------------------------------------------------------------------------------

#: Scratch buffers of op calls made outside a model's pass (tests, benchmarks).
_workspaces: dict[tuple, np.ndarray] = {}
#: The store of the model whose pass is running (Model.forward/backward set it; the parts'
#: threads inherit it with the caller's context), so scratch memory belongs to the model
#: and goes with it.
_store: contextvars.ContextVar[dict | None] = contextvars.ContextVar("cnncli_workspaces",
                                                                    default=None)


@contextmanager
def workspaces_of(store: dict):
    """Make ``store`` (a model's dict) hold the scratch buffers of the ops run inside."""
    token = _store.set(store)
    try:
        yield
    finally:
        _store.reset(token)


def _owner() -> int:
    """The thread that started the current pass (a part's thread inherits its caller's), so
    that passes run concurrently from several user threads never share scratch buffers."""
    return getattr(_depth, "owner", None) or threading.get_ident()


def workspace(tag: str, part: int, size: int, dtype: Any) -> np.ndarray:
    """A 1-D scratch array of at least ``size`` elements, reused across calls with the
    same (tag, part, dtype) within the passes of one calling thread (in the running
    model's store, else the module's). Its contents are undefined; callers overwrite what
    they use. Never hand a workspace (or a view of one) out of the op: the next call
    reuses it."""
    store = _store.get()
    if store is None:
        store = _workspaces
    key = (tag, part, np.dtype(dtype).str, _owner())
    buf = store.get(key)
    if buf is None or buf.size < size:
        buf = np.empty(max(size, 1), dtype=dtype)
        store[key] = buf
    return buf[:size]
