"""``cnn augment --executor dask``: the local run's per-source work, on a Dask cluster.

Nothing about the outputs changes: each source's outputs come from its own generator
(:func:`cnncli.augment.runner.source_rng`, keyed by seed and relative path), so which worker
takes a source, and when, cannot change a byte. The driver (this process) plans the run as
locally, sends groups of sources as tasks, collects each task's manifest rows as its future
completes (progress on stderr from there) and writes the manifests in the local, sorted order
(:func:`cnncli.augment.runner._finish`).

* Workers read the sources and write the outputs atomically on a file system they share with
  the driver (absolute paths are sent). With ``transfer`` they share none: the driver reads
  each source's bytes and sends them, the workers send the encoded outputs back and the
  driver writes them.
* Which cluster: ``--address tcp://HOST:8786``, ``--scheduler-file F``, else the
  ``DASK_SCHEDULER_ADDRESS`` environment variable, else a ``LocalCluster`` of ``--workers``
  processes (one thread each) on this machine.
* A worker lost mid-task: the scheduler runs its tasks again elsewhere (Dask's own
  ``allowed-failures``); a task that still fails lists its sources as failed. Ctrl-C cancels
  the futures; the run then ends as a local one does (temporary files removed, the manifests
  list what finished, exit 130).

Dask is imported here only, and this module only for ``--executor dask``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from cnncli.errors import CnnError

ADDRESS_ENV = "DASK_SCHEDULER_ADDRESS"
GROUP_MAX = 16  # sources per task at most (fewer when that would leave workers idle)
IN_FLIGHT_PER_THREAD = 4  # queued tasks per worker thread: bounds the driver's memory
SOURCE_LIMIT = 4 << 30  # largest source file --transfer sends
CONNECT_TIMEOUT_S = 30
WORKER_WAIT_S = 120  # how long a remote scheduler may take to have a worker


def group_sizes(count: int, threads: int) -> int:
    """Sources per task: one per task for small runs, up to GROUP_MAX when there are many
    (a task costs the scheduler about a millisecond), keeping ~8 tasks per worker thread."""
    return max(1, min(GROUP_MAX, count // (8 * max(1, threads))))


def _task(group: list[tuple[Any, bytes | None]], ctx: Any, collect: bool) -> list[Any]:
    """Run on a worker: process each (source, bytes or None) of a group."""
    from cnncli.augment.runner import process_source

    return [process_source(source, ctx, data=data, collect=collect) for source, data in group]


def connect(address: str | None, scheduler_file: str | None, workers: int) -> tuple[Any, Any]:
    """(client, cluster or None): the scheduler named, else a LocalCluster of ``workers``."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise CnnError("--executor dask needs dask.distributed: pip install 'cnncli[dask]' "
                       "(or pip install 'dask[distributed]')") from None
    address = address or (None if scheduler_file else os.environ.get(ADDRESS_ENV) or None)
    cluster = None
    try:
        if scheduler_file:
            if not Path(scheduler_file).is_file():
                raise CnnError(f"{scheduler_file}: no such scheduler file (--scheduler-file)")
            where = f"the scheduler of {scheduler_file}"
            client = Client(scheduler_file=scheduler_file, timeout=CONNECT_TIMEOUT_S)
        elif address:
            where = f"the Dask scheduler at {address}"
            client = Client(address, timeout=CONNECT_TIMEOUT_S)
        else:
            where = "a local Dask cluster"
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None, silence_logs=logging.ERROR)
            client = Client(cluster)
    except CnnError:
        raise
    except (OSError, TimeoutError, ValueError) as exc:
        if cluster is not None:
            cluster.close()
        raise CnnError(f"cannot connect to {where}: {exc}") from None
    if cluster is None:
        try:
            client.wait_for_workers(1, timeout=WORKER_WAIT_S)
        except (OSError, TimeoutError) as exc:
            client.close()
            raise CnnError(f"{where} has no workers ({exc}); start some with "
                           f"dask worker {address or '--scheduler-file ' + str(scheduler_file)}"
                           ) from None
    return client, cluster


def run_on_dask(sources: list[Any], ctx: Any, results: list[Any], progress: Any,
                workers: int) -> int:
    """Process every source on a Dask cluster, appending each :class:`SourceResult` to
    ``results`` as it comes back (so that after Ctrl-C the finished ones are kept); returns
    the cluster's worker threads."""
    st = ctx.settings
    client, cluster = connect(st.address, st.scheduler_file, workers)
    try:
        return _run(client, sources, ctx, results, progress)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _run(client: Any, sources: list[Any], ctx: Any, results: list[Any],
         progress: Any) -> int:
    from dask.distributed import as_completed

    collect = bool(ctx.settings.transfer)
    out_root = Path(os.path.abspath(ctx.out_root))
    ctx = replace(ctx, out_root=out_root)
    threads = max(1, sum(client.nthreads().values()))
    size = group_sizes(len(sources), threads)
    groups: Iterator[list[Any]] = (
        [replace(s, path=Path(os.path.abspath(s.path))) for s in sources[i:i + size]]
        for i in range(0, len(sources), size))
    ctx_future = client.scatter(ctx, broadcast=True, hash=False)
    pending: dict[Any, list[Any]] = {}
    queue = as_completed()
    done = 0

    def finished(batch: list[Any]) -> None:
        nonlocal done
        for res in batch:
            results.append(res)
            done += 1
            if progress:
                progress(done, len(sources), res.source)

    def submit_next() -> bool:
        """Submit the next group (True), or say that none is left (False)."""
        for group in groups:
            items, local = _payload(group, ctx, collect)
            finished(local)
            if items:
                fut = client.submit(_task, items, ctx_future, collect, pure=False, retries=1)
                pending[fut] = [s for s, _ in items]
                queue.add(fut)
                return True
        return False

    try:
        for _ in range(IN_FLIGHT_PER_THREAD * threads):
            if not submit_next():
                break
        for fut in queue:
            group = pending.pop(fut)
            if fut.status == "finished":
                batch = fut.result()
                if collect:
                    for res in batch:
                        _write_collected(res, out_root)
            else:
                reason = f"dask task failed: {_task_error(fut)}"
                batch = [_failed(s.rel, reason) for s in group]
            fut.release()
            finished(batch)
            submit_next()
    except KeyboardInterrupt:
        client.cancel(list(pending))
        raise
    return threads


def _payload(group: list[Any], ctx: Any, collect: bool) -> tuple[list[tuple[Any, Any]], list]:
    """(the (source, bytes) to send, results already known). With ``collect`` the driver
    reads each source; one it cannot read is processed here, which fails with the reason
    a local run gives."""
    if not collect:
        return [(s, None) for s in group], []
    from cnncli.augment.runner import process_source
    from cnncli.fileio import FileReadError, read_file

    items, local = [], []
    for s in group:
        try:
            items.append((s, read_file(s.path, limit=SOURCE_LIMIT, what="image")))
        except FileReadError:
            local.append(process_source(s, ctx, collect=True))
    return items, local


def _write_collected(res: Any, out_root: Path) -> None:
    """Write the encoded outputs a worker sent back (``--transfer``), as a local run would:
    on a failure the source keeps the rows of the outputs already written."""
    from cnncli.fileio import WriteError, atomic_write_bytes

    files, res.files = res.files, []
    for k, (rel, blob) in enumerate(files):
        try:
            if k == 0:
                (out_root / rel).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(out_root / rel, blob, "output", fsync=False)
        except (WriteError, OSError) as exc:
            why = exc.reason if isinstance(exc, WriteError) else (exc.strerror or str(exc))
            res.failure = f"cannot write output: {why}"
            res.records = res.records[:k]
            return


def _failed(rel: str, reason: str) -> Any:
    from cnncli.augment.runner import SourceResult

    return SourceResult(rel, failure=reason)


def _task_error(fut: Any) -> str:
    try:
        exc = fut.exception()
    except Exception as err:  # noqa: BLE001 - a cancelled future raises here
        exc = err
    return f"{type(exc).__name__}: {exc}"
