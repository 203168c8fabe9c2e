"""Data-parallel training over MPI: ``mpiexec -n P cnn train ...``.

Every rank holds the whole model and data set and draws the same shuffled order (one shared
seed); each global batch of ``batch_size`` images is split into P contiguous shares
(:func:`share`), one per rank. A rank's gradient is that of its share's loss scaled by
``n_rank / n_batch``, so the sum over ranks (one ``Allreduce`` of a single flat buffer in the
parameters' dtype, in sorted name order, plus the share's loss sum and correct count) is the
gradient of the mean loss over the global batch: the same step as one process with that
batch size, up to float rounding. Every rank then takes the same optimizer step.

Whether this is an MPI run is read from the launcher's environment variables first
(:func:`launched_size`), so a single-process run never imports mpi4py.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from cnncli.errors import CnnError

#: World size variables set by the common launchers (MPICH/Hydra and Intel MPI, Open MPI,
#: MVAPICH, Slurm's PMI) before the program starts.
SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE",
             "MPI_LOCALNRANKS")


def launched_size() -> int:
    """The world size the launcher announced (1 when not started by mpiexec)."""
    for var in SIZE_VARS:
        try:
            n = int(os.environ.get(var, "") or 0)
        except ValueError:
            continue
        if n > 1:
            return n
    return 1


class Single:
    """One process: every collective is the identity."""

    rank, size, local_size = 0, 1, 1

    def allreduce(self, buf: np.ndarray) -> np.ndarray:
        return buf

    def gather(self, obj: Any) -> list[Any]:
        return [obj]

    def allgather(self, obj: Any) -> list[Any]:
        return [obj]

    def bcast(self, obj: Any) -> Any:
        return obj


class Mpi:
    """MPI.COMM_WORLD, with the few collectives training needs."""

    def __init__(self) -> None:
        try:
            from mpi4py import MPI
        except ImportError:
            raise CnnError("started by mpiexec with several processes, but mpi4py is not "
                           "installed: pip install 'cnncli[mpi]'") from None
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_size = node.Get_size()  # ranks on this machine
        node.Free()

    def allreduce(self, buf: np.ndarray) -> np.ndarray:
        """Sum of ``buf`` over ranks, in place (identical bits on every rank: each element
        is reduced once, in MPI's fixed order for this size, and sent to all)."""
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return buf

    def gather(self, obj: Any) -> list[Any] | None:
        return self.comm.gather(obj, root=0)

    def allgather(self, obj: Any) -> list[Any]:
        return self.comm.allgather(obj)

    def bcast(self, obj: Any) -> Any:
        return self.comm.bcast(obj, root=0)

    def abort(self, code: int) -> None:
        """End every rank (mpiexec exits with ``code``): for a failure on some ranks only,
        which would otherwise leave the others waiting in a collective for ever."""
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(int(code))
        os._exit(int(code))  # MPICH's Abort may return before the launcher ends the job


_WORLD: Single | Mpi | None = None


def world() -> Single | Mpi:
    """This process's world: :class:`Mpi` under ``mpiexec -n P`` with P > 1, else Single."""
    global _WORLD
    if _WORLD is None:
        _WORLD = Mpi() if launched_size() > 1 else Single()
        if _WORLD.size > 1:
            _share_cores(_WORLD.local_size)
    return _WORLD


def _share_cores(local_size: int) -> None:
    """Each of the ranks on one machine computes on cores/ranks threads (unless
    CNNCLI_NUM_THREADS, OPENBLAS_NUM_THREADS or OMP_NUM_THREADS say otherwise)."""
    from cnncli.ops import _threads

    if _threads._env_threads() is not None:
        return
    cores = _threads.usable_cpus()
    total = os.cpu_count() or cores
    # A launcher that binds each rank to its own cores has already divided them.
    n = cores if cores < total else cores // max(1, local_size)
    _threads.set_workers(max(1, n))
    ctl = _threads._blas_control()
    if ctl:
        ctl[1](max(1, n))


def share(n: int, rank: int, size: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous part [lo, hi) of a batch of ``n`` (sizes differ by at most
    one; a rank may get none of a last batch smaller than the world)."""
    q, r = divmod(n, size)
    lo = rank * q + min(rank, r)
    return lo, lo + q + (1 if rank < r else 0)


def agree(comm: Single | Mpi, error: BaseException | None) -> None:
    """Raise on every rank when any rank failed (the lowest rank's error), so that no rank
    is left waiting in a collective for one that gave up."""
    if comm.size == 1:
        if error is not None:
            raise error
        return
    flags = comm.allgather(None if error is None else (type(error).__name__, str(error),
                                                       getattr(error, "exit_code", None)))
    if error is not None:
        raise on_all_ranks(error)
    first = next((f for f in flags if f is not None), None)
    if first is not None:
        exc = CnnError(first[1])
        if first[2] is not None:
            exc.exit_code = first[2]
        raise on_all_ranks(exc)


def on_all_ranks(exc: BaseException) -> BaseException:
    """Mark an error that every rank raises at the same point (they can all just exit); any
    other error under MPI ends the whole job (:meth:`Mpi.abort`)."""
    exc.all_ranks = True  # type: ignore[attr-defined]
    return exc


def world_size_mismatch(saved: int, size: int, where: str) -> CnnError:
    how = "without mpiexec" if saved == 1 else f"with mpiexec -n {saved}"
    now = "one process" if size == 1 else f"{size} MPI processes"
    return CnnError(f"{where}: the run was trained on {saved} process"
                    f"{'es' if saved != 1 else ''} (world size {saved}), this is {now}; "
                    f"resume it {how} (the data shares and random streams depend on it)")
