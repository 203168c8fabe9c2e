"""Augment a folder of images into a new folder with the same layout, reproducibly.

:func:`run` walks the input (sorted, hidden entries ignored, symlinked folders followed once:
a link back to an ancestor is skipped and reported), plans deterministic output names
(``<stem>_<i><ext>`` next to where the source sits), and processes one source per task, in
this process (``workers=1``), in a pool of processes, or on a Dask cluster
(``executor="dask"``: :mod:`cnncli.augment.dask_run`). The outputs of source ``rel`` draw,
in index order, from one generator::

    numpy.random.default_rng(SeedSequence(seed, spawn_key=sha256(rel)[:16] as 4 uint32))

so output ``i`` depends only on (seed, relative path, index, pipeline, image size): the same
seed gives byte-identical files whatever the number of workers or the order they finish in,
and ``-n 10`` repeats the five outputs of ``-n 5``. (One generator per source rather than per
output: building one costs about as much as sampling all the parameters of an output.)

The output folder receives ``manifest.csv`` and ``manifest.jsonl`` (one row per output: its
source and the exact sampled parameters of every op) and ``pipeline.yaml`` (the pipeline and
seed; PCA folder eigenvectors filled in): enough to reproduce any output. Sources are only ever
opened for reading; outputs are written atomically. After Ctrl-C the pool is terminated,
temporary files are removed and the manifests list the sources that finished.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import math
import multiprocessing as mp
import os
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cnncli.augment.io import encode_image, output_format
from cnncli.augment.pipeline import Pipeline
from cnncli.augment.transforms import Pca
from cnncli.errors import CnnError, DataError
from cnncli.fileio import (
    LOCK_NAME,
    FolderLock,
    WriteError,
    atomic_write_bytes,
    guard_outputs,
    is_temp_name,
    make_folder,
    not_regular_reason,
    remove_empty_folders,
    remove_stale_temps,
    sync_filesystem,
)
from cnncli.imageio import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    WRITE_FORMATS,
    ImageReadError,
    read_image,
)

MANIFEST_CSV = "manifest.csv"
MANIFEST_JSONL = "manifest.jsonl"
PIPELINE_FILE = "pipeline.yaml"
FORMATS = ("keep", "png", "jpg")
EXECUTORS = ("local", "dask")

Progress = Callable[[int, int, str], None]  # (sources finished, sources in total, last source)


@dataclass(frozen=True)
class RunSettings:
    """Everything about a run except the pipeline and the folders."""

    n: int = 1  # outputs per input
    seed: int = 0
    workers: int | None = None  # processes; None: every core this process may use
    out_format: str = "keep"  # keep | png | jpg
    quality: int = 95  # JPEG / WebP quality
    png_level: int = 1  # zlib level 0..9: 1 is about 3x faster than Pillow's 6, ~10% larger
    overwrite: bool = False
    dry_run: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    executor: str = "local"  # local (this machine's processes) | dask (a Dask cluster)
    address: str | None = None  # dask: the scheduler (tcp://HOST:8786); None: see dask_run
    scheduler_file: str | None = None  # dask: a scheduler file instead of an address
    transfer: bool = False  # dask: workers return encoded bytes, this process writes them

    def __post_init__(self) -> None:
        checks = [
            (self.n >= 1, f"-n must be at least 1, got {self.n}"),
            (self.seed >= 0, f"--seed must be non-negative, got {self.seed}"),
            (
                self.workers is None or self.workers >= 1,
                f"--workers must be >= 1, got {self.workers}",
            ),
            (self.out_format in FORMATS, f"--format must be one of {', '.join(FORMATS)}"),
            (1 <= self.quality <= 100, f"--quality must be in 1..100, got {self.quality}"),
            (0 <= self.png_level <= 9, f"--png-level must be in 0..9, got {self.png_level}"),
            (self.max_pixels >= 1, f"--max-pixels must be positive, got {self.max_pixels}"),
            (self.executor in EXECUTORS, f"--executor must be one of {', '.join(EXECUTORS)}, "
                                         f"got {self.executor!r}"),
            (self.executor == "dask" or not (self.address or self.scheduler_file
                                              or self.transfer),
             "--address, --scheduler-file and --transfer need --executor dask"),
            (not (self.address and self.scheduler_file),
             "give only one of --address and --scheduler-file"),
        ]
        for ok, message in checks:
            if not ok:
                raise CnnError(message)


@dataclass
class Source:
    path: Path  # where to read it
    rel: str  # path relative to the input root, '/'-separated (names outputs, seeds the RNG)
    outputs: list[str] = field(default_factory=list)  # output paths relative to the out root


@dataclass
class OutputRecord:
    output: str
    source: str
    index: int
    width: int
    height: int
    ops: list[dict[str, Any]]


@dataclass
class Problem:
    path: str
    reason: str


@dataclass
class SourceResult:
    source: str
    records: list[OutputRecord] = field(default_factory=list)
    failure: str | None = None
    warnings: list[str] = field(default_factory=list)
    files: list[tuple[str, bytes]] = field(default_factory=list)  # (output, bytes) to write


@dataclass
class Summary:
    """What a run did; ``exit_code`` is 1 when any input failed, else 0."""

    input: str
    output: str
    pipeline: str
    seed: int
    n: int
    workers: int
    dry_run: bool
    sources: int = 0  # image files found
    done: int = 0  # outputs written (planned, for a dry run)
    failed: list[Problem] = field(default_factory=list)  # bad image files
    skipped: list[Problem] = field(default_factory=list)  # symlink loops, unreadable folders
    ignored: int = 0  # files without an image extension
    warnings: list[Problem] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["exit_code"] = self.exit_code
        data["images_per_second"] = round(self.done / self.seconds, 1) if self.seconds else None
        return data


# --------------------------------------------------------------------------- planning


#: Outputs per worker process below which another worker costs more (starting it, loading
#: the kernels) than it saves: on the 37-image sample (74 outputs) 2 workers ran at 143
#: images/s against 269 for 1.
OUTPUTS_PER_WORKER = 200
#: Runs with this many outputs compile the packed 8-bit RGB kernels when the Numba cache
#: lacks them (about 3 s, repaid at ~0.14 ms per 224x224 output); smaller runs use them only
#: when cached and otherwise take the byte kernels (the same bytes).
PACKED_MIN_OUTPUTS = 20000


def choose_kernels(outputs: int) -> tuple[bool, bool]:
    """(packed, must_compile) for a run of ``outputs`` images: whether it takes the packed
    kernels, and whether its warp kernels are missing from Numba's cache (2-3 s each)."""
    from cnncli.augment import _kernels

    packed = outputs >= PACKED_MIN_OUTPUTS or _kernels.warps_ready(packed=True)
    return packed, not _kernels.warps_ready(packed=packed)


def default_workers() -> int:
    """Cores this process may run on (the affinity mask in containers), else the CPU count."""
    from cnncli.ops._threads import usable_cpus

    return usable_cpus()


def path_key(rel: str) -> tuple[int, ...]:
    """Four uint32 words from sha256 of a relative path: its part of the seed's spawn key."""
    return struct.unpack("<4I", hashlib.sha256(rel.encode("utf-8")).digest()[:16])


def source_rng(seed: int, rel: str) -> np.random.Generator:
    """The generator the outputs of source ``rel`` draw from (see the module docstring)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=path_key(rel)))


def check_paths(
    src: Path,
    out: Path,
    *,
    overwrite: bool,
    inputs: Sequence[tuple[Path | None, str]] = (),
    outputs: Sequence[tuple[Path | None, str]] = (),
) -> None:
    """Refuse (exit 2) a missing input, an output that is, contains or lies inside an input
    (``inputs`` and ``outputs`` name more of them: a pipeline file, ``--save-pipeline``),
    and an existing output folder that is not empty."""
    if not src.exists():
        raise DataError(f"input not found: {src}")
    if not (src.is_dir() or src.is_file()):
        raise DataError(f"input is neither a folder nor a regular file: {src}")
    what = "the input folder" if src.is_dir() else "the input image"
    guard_outputs([(out, "the output folder"), *outputs], [(src, what), *inputs])
    if out.exists() and not out.is_dir():
        raise CnnError(f"output path exists and is not a folder: {out}")
    if not overwrite and _has_entries(out):
        raise CnnError(
            f"output folder {out} already exists and is not empty; pass --overwrite to write "
            "into it (files with the same names are replaced, nothing is deleted)"
        )


def _has_entries(folder: Path) -> bool:
    """Whether ``folder`` holds anything but a lock file and stale temporary files."""
    try:
        with os.scandir(folder) as it:
            return any(e.name != LOCK_NAME and not is_temp_name(e.name) for e in it)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        raise CnnError(f"cannot read the output folder {folder}: {_os_reason(exc)}") from None


def discover(src: Path, summary: Summary) -> list[Source]:
    """Image files under ``src`` in sorted order; loops and unreadable folders go to ``skipped``."""
    if not src.is_dir():
        if src.suffix.lower() not in IMAGE_EXTENSIONS:
            raise DataError(
                f"not an image file name ({', '.join(sorted(IMAGE_EXTENSIONS))}): {src}"
            )
        return [Source(src, src.name)]
    found: list[Source] = []
    visited: set[tuple[int, int]] = set()

    def walk(folder: Path, rel: str) -> None:
        try:
            st = os.stat(folder)
        except OSError as exc:
            summary.skipped.append(Problem(rel or ".", _os_reason(exc)))
            return
        key = (st.st_dev, st.st_ino)
        if key in visited:
            summary.skipped.append(Problem(rel, "symlink loop: folder already visited"))
            return
        visited.add(key)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            summary.skipped.append(Problem(rel or ".", _os_reason(exc)))
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            child = f"{rel}/{entry.name}" if rel else entry.name
            try:
                is_dir = entry.is_dir()
                if entry.is_symlink():
                    os.stat(entry.path)  # raises for loops (ELOOP) and dangling links
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    summary.skipped.append(Problem(child, "symlink loop"))
                    continue
                # A dangling link: treated as a file, so it fails if it looks like an image.
                is_dir = False
            if is_dir:
                walk(Path(entry.path), child)
            elif Path(entry.name).suffix.lower() not in IMAGE_EXTENSIONS:
                summary.ignored += 1
            elif _not_regular(entry):
                # A FIFO would block the run and a device never end: never opened.
                summary.skipped.append(Problem(child, _not_regular(entry)))
            else:
                found.append(Source(Path(entry.path), child))

    walk(src, "")
    return found


def _not_regular(entry: os.DirEntry) -> str:
    """'' for a regular file (or a dangling link, which then fails as a file), else why not."""
    try:
        if entry.is_file():  # follows links; from the folder listing, no extra system call
            return ""
        return not_regular_reason(entry.stat().st_mode)
    except OSError:
        return ""


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    return exc.strerror or str(exc)


def name_outputs(sources: list[Source], n: int, out_format: str) -> None:
    """Fill ``source.outputs``: ``dir/stem_i.ext``, with the source extension added to the stem
    (``stem_jpg_i``) when two sources in one folder would otherwise collide."""
    width = len(str(n - 1))

    def ext_of(s: Source) -> str:
        return Path(s.rel).suffix if out_format == "keep" else f".{out_format}"

    groups: dict[tuple[str, str], list[Source]] = {}
    for s in sources:
        rel = Path(s.rel)
        groups.setdefault((str(rel.parent), rel.stem + ext_of(s).lower()), []).append(s)
    for s in sources:
        rel = Path(s.rel)
        stem = rel.stem
        if len(groups[(str(rel.parent), stem + ext_of(s).lower())]) > 1:
            stem = f"{stem}_{rel.suffix.lstrip('.').lower()}"
        parent = "" if str(rel.parent) == "." else f"{rel.parent.as_posix()}/"
        s.outputs = [f"{parent}{stem}_{i:0{width}d}{ext_of(s)}" for i in range(n)]


# --------------------------------------------------------------------------- processing


@dataclass
class _Context:
    pipeline: Pipeline
    settings: RunSettings
    out_root: Path
    packed: bool = True  # functional.PACKED for the run (see choose_kernels)


_CTX: _Context | None = None


def _init_worker(ctx: _Context) -> None:
    import signal

    global _CTX
    _CTX = ctx
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's handler raises; a worker dies


def _work(source: Source) -> SourceResult:
    assert _CTX is not None
    return process_source(source, _CTX)


def process_source(source: Source, ctx: _Context, *, data: bytes | None = None,
                   collect: bool = False) -> SourceResult:
    """Read one source, write its ``n`` outputs; failures are returned, never raised.

    ``data``: the source file's bytes, read by the caller; ``collect``: keep the encoded
    outputs in ``result.files`` instead of writing them (``--transfer``: the driver writes).
    """
    from cnncli.augment import functional

    token = functional.PACKED.set(ctx.packed)  # in worker processes too
    try:
        return _process_source(source, ctx, data, collect)
    finally:
        functional.PACKED.reset(token)


def _process_source(source: Source, ctx: _Context, data: bytes | None,
                    collect: bool) -> SourceResult:
    result = SourceResult(source.rel)
    st = ctx.settings
    try:
        pixels, meta = read_image(source.path, max_pixels=st.max_pixels, rgbx=ctx.packed,
                                  data=data)
    except ImageReadError as exc:
        result.failure = exc.reason
        return result
    result.warnings.extend(meta.warnings)
    shape = tuple(pixels.shape)
    ext = Path(source.rel).suffix.lower()
    fmt = output_format(WRITE_FORMATS.get(ext, meta.format), st.out_format)
    try:
        if source.outputs and not collect:
            (ctx.out_root / source.outputs[0]).parent.mkdir(parents=True, exist_ok=True)
        rng = source_rng(st.seed, source.rel)
        sampled = [ctx.pipeline.sample(rng, shape) for _ in source.outputs]  # type: ignore[arg-type]
        # Stage by stage over a group of outputs (all sampling, then every augmentation, every
        # encoding, every write) rather than output by output: each stage's code and tables
        # stay in the CPU caches that the others would flush (about 10% faster for small
        # outputs). A group holds at most GROUP_BYTES of output pixels.
        start = 0
        for stop in _groups(ctx.pipeline, sampled, shape, pixels.itemsize):  # type: ignore[arg-type]
            imgs = [ctx.pipeline.apply(pixels, records) for records in sampled[start:stop]]
            blobs = [
                encode_image(img, meta, fmt, quality=st.quality, png_level=st.png_level)
                for img in imgs
            ]
            for index, img, blob in zip(range(start, stop), imgs, blobs, strict=True):
                out_rel = source.outputs[index]
                if collect:
                    result.files.append((out_rel, blob))
                else:
                    # Made durable once per run (sync_filesystem), not per file: see run().
                    atomic_write_bytes(ctx.out_root / out_rel, blob, "output", fsync=False)
                h, w = int(img.shape[0]), int(img.shape[1])
                result.records.append(
                    OutputRecord(out_rel, source.rel, index, w, h, sampled[index])
                )
            start = stop
    except WriteError as exc:
        result.failure = f"cannot write output: {exc.reason}"
    except OSError as exc:
        result.failure = f"cannot write output: {exc.strerror or exc}"
    except Exception as exc:  # an image the ops cannot handle must not stop the run
        result.failure = f"augmentation failed: {type(exc).__name__}: {exc}"
    return result


GROUP_BYTES = 8 << 20  # output pixels processed stage by stage at once (see process_source)


def _groups(
    pipeline: Pipeline, sampled: list[list[dict[str, Any]]], shape: tuple[int, ...], itemsize: int
) -> list[int]:
    """End indices of consecutive groups of outputs, each within GROUP_BYTES of pixels (an
    output larger than that is a group of its own)."""
    ends, total = [], 0
    for i, records in enumerate(sampled):
        size = math.prod(pipeline.output_shape(records, shape)) * itemsize  # type: ignore[arg-type]
        if total and total + size > GROUP_BYTES:
            ends.append(i)
            total = 0
        total += size
    if sampled:
        ends.append(len(sampled))
    return ends


def _dry_check(source: Source, max_pixels: int) -> str | None:
    """Header-only check for a dry run: None if the file looks like a usable image."""
    from PIL import Image

    from cnncli.fileio import open_regular

    try:
        with open_regular(source.path) as fh, Image.open(fh) as im:
            w, h = im.size
    except Exception as exc:  # noqa: BLE001 - any failure to identify the file
        try:
            read_image(source.path, max_pixels=max_pixels)
        except ImageReadError as err:
            return err.reason
        return f"{type(exc).__name__}: {exc}"
    if w * h > max_pixels:
        return f"too many pixels: {w}x{h} = {w * h:,} > limit {max_pixels:,}"
    return None


def folder_eigen(
    sources: list[Source], max_pixels: int, per_image: int = 65536
) -> tuple[list[float], list[list[float]]]:
    """Eigenvalues/vectors of the RGB covariance over every readable colour image.

    Each image contributes at most about ``per_image`` pixels (a regular subsample), in
    0..255 units; the covariance is accumulated in float64 so memory stays constant.
    """
    count = 0
    total = np.zeros(3)
    outer = np.zeros((3, 3))
    for s in sources:
        try:
            pixels, _ = read_image(s.path, max_pixels=max_pixels)
        except ImageReadError:
            continue
        if pixels.shape[2] < 3:
            continue
        step = max(1, int(np.sqrt(pixels.shape[0] * pixels.shape[1] / per_image)))
        rgb = pixels[::step, ::step, :3].reshape(-1, 3).astype(np.float64)
        if pixels.dtype == np.uint16:
            rgb /= 257.0
        count += rgb.shape[0]
        total += rgb.sum(axis=0)
        outer += rgb.T @ rgb
    if count < 2:
        raise DataError("pca eigen=folder: no colour images to compute the covariance from")
    mean = total / count
    cov = (outer - count * np.outer(mean, mean)) / (count - 1)
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1]
    vals, vecs = np.clip(vals[order], 0, None), vecs[:, order]
    signs = np.sign(vecs[np.argmax(np.abs(vecs), axis=0), np.arange(3)])
    vecs = vecs * np.where(signs == 0, 1.0, signs)
    return [float(v) for v in vals], [[float(v) for v in row] for row in vecs]


def with_folder_eigen(pipeline: Pipeline, sources: list[Source], max_pixels: int) -> Pipeline:
    """The pipeline with eigvals/eigvecs filled in for every ``pca`` op with ``eigen: folder``."""
    needs = [
        op
        for op in pipeline.ops
        if isinstance(op, Pca) and op["eigen"] == "folder" and not op["eigvals"]
    ]
    if not needs:
        return pipeline
    vals, vecs = folder_eigen(sources, max_pixels)
    ops = []
    for op in pipeline.ops:
        if op in needs:
            cfg = {**op.config, "eigvals": vals, "eigvecs": vecs}
            op = type(op)(p=op.p, **cfg)
        ops.append(op)
    return replace(pipeline, ops=ops)


def run(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    pipeline: Pipeline,
    settings: RunSettings,
    progress: Progress | None = None,
    *,
    inputs: Sequence[tuple[Path | None, str]] = (),
    outputs: Sequence[tuple[Path | None, str]] = (),
    on_note: Callable[[str], None] | None = None,
) -> Summary:
    """Augment ``src`` (a folder or one image) into ``out``; returns the :class:`Summary`.

    Raises :class:`~cnncli.errors.CnnError` (exit 2) for bad paths before anything is written:
    ``inputs`` and ``outputs`` are more paths for :func:`check_paths` (the pipeline file the
    caller read, a file it will write). Bad images never raise: they are listed in
    ``summary.failed``. The output folder is locked for the whole run (a second run into it
    is refused); a dry run writes nothing at all, not even the folder. ``on_note`` gets one
    line when the run has kernels to compile first.
    """
    t0 = time.perf_counter()
    src_path, out_path = Path(src), Path(out)
    check_paths(src_path, out_path, overwrite=settings.overwrite, inputs=inputs,
                outputs=outputs)
    workers = settings.workers or default_workers()
    summary = Summary(
        input=str(src_path),
        output=str(out_path),
        pipeline=pipeline.short(),
        seed=settings.seed,
        n=settings.n,
        workers=workers,
        dry_run=settings.dry_run,
    )
    sources = discover(src_path, summary)
    if not sources:
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise DataError(f"no image files ({exts}) under {src_path}")
    name_outputs(sources, settings.n, settings.out_format)
    summary.sources = len(sources)
    if progress:
        progress(0, len(sources), "")

    if settings.dry_run:
        for i, s in enumerate(sources, 1):
            reason = _dry_check(s, settings.max_pixels)
            if reason:
                summary.failed.append(Problem(s.rel, reason))
            else:
                summary.done += len(s.outputs)
            if progress:
                progress(i, len(sources), s.rel)
        summary.seconds = time.perf_counter() - t0
        return summary

    pipeline = with_folder_eigen(pipeline, sources, settings.max_pixels)
    pipeline = replace(pipeline, seed=settings.seed)
    created = make_folder(out_path)
    lock = FolderLock(out_path, "output folder")
    try:
        lock.acquire()
        # Again under the lock: another run may have filled the folder since the check.
        if not settings.overwrite and _has_entries(out_path):
            raise CnnError(f"output folder {out_path} is no longer empty (another run wrote "
                           "into it); pass --overwrite to write into it")
        remove_stale_temps(out_path, recursive=True)
        _run_locked(summary, sources, out_path, pipeline, settings, workers, progress, on_note)
    except BaseException:
        lock.release()
        remove_empty_folders(created)
        raise
    lock.release()
    summary.seconds = time.perf_counter() - t0
    return summary


def _run_locked(summary: Summary, sources: list[Source], out_path: Path, pipeline: Pipeline,
                settings: RunSettings, workers: int, progress: Progress | None,
                on_note: Callable[[str], None] | None = None) -> None:
    """Process every source into the (locked) output folder, then write the manifests."""
    outputs = sum(len(s.outputs) for s in sources)
    packed, compiling = choose_kernels(outputs)
    if compiling and on_note is not None:
        from cnncli.jit import COMPILING_NOTE

        on_note(COMPILING_NOTE)
    ctx = _Context(pipeline, settings, out_path, packed)
    workers = max(1, min(workers, len(sources)))
    if not settings.workers:  # not asked for: as many as the amount of work pays for
        workers = max(1, min(workers, outputs // OUTPUTS_PER_WORKER))
    summary.workers = workers
    results: list[SourceResult] = []
    try:
        if settings.executor == "dask":
            from cnncli.augment.dask_run import run_on_dask

            summary.workers = run_on_dask(sources, ctx, results, progress, workers)
        elif workers == 1:
            for i, s in enumerate(sources, 1):
                results.append(process_source(s, ctx))
                if progress:
                    progress(i, len(sources), s.rel)
        else:
            from cnncli.augment import _kernels

            _kernels.warm_up(packed)  # compile/load once here; forked workers inherit the code
            methods = mp.get_all_start_methods()
            mpctx = mp.get_context("fork" if "fork" in methods else "spawn")
            with mpctx.Pool(workers, initializer=_init_worker, initargs=(ctx,)) as pool:
                for i, res in enumerate(pool.imap_unordered(_work, sources, chunksize=1), 1):
                    results.append(res)
                    if progress:
                        progress(i, len(sources), res.source)
    except KeyboardInterrupt:  # Ctrl-C, and SIGTERM in the CLI (errors.Terminated)
        # Workers are gone (the pool terminates them); keep what finished, drop half-writes.
        _remove_temp_files(out_path)
        _remove_unlisted_outputs(out_path, sources, results)
        _finish(summary, results, out_path, pipeline)
        raise
    _finish(summary, results, out_path, pipeline)


def _finish(summary: Summary, results: list[SourceResult], out: Path, pipeline: Pipeline) -> None:
    """Fill the summary and write the manifests and pipeline file for the finished sources."""
    results.sort(key=lambda r: r.source)
    records: list[OutputRecord] = []
    for res in results:
        records.extend(res.records)
        if res.failure:
            summary.failed.append(Problem(res.source, res.failure))
        summary.warnings.extend(Problem(res.source, w) for w in res.warnings)
    summary.done = len(records)
    sync_filesystem(out)  # the outputs are on disk before the manifests that list them
    write_manifests(out, records)
    pipeline.save(out / PIPELINE_FILE)


# What ``json.dumps(x, separators=(",", ":"))`` uses, made once instead of per call.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))


def write_manifests(out: Path, records: list[OutputRecord]) -> None:
    """``manifest.csv`` (ops as a JSON column) and ``manifest.jsonl``, one row per output."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["output", "source", "index", "width", "height", "ops"])
    lines = []
    for r in records:
        ops = _COMPACT_JSON.encode(r.ops)
        writer.writerow([r.output, r.source, r.index, r.width, r.height, ops])
        head = _COMPACT_JSON.encode(
            {
                "output": r.output,
                "source": r.source,
                "index": r.index,
                "width": r.width,
                "height": r.height,
            }
        )
        lines.append(f'{head[:-1]},"ops":{ops}}}')
    atomic_write_bytes(out / MANIFEST_CSV, buf.getvalue().encode("utf-8"), "manifest")
    atomic_write_bytes(
        out / MANIFEST_JSONL, ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8"),
        "manifest")


def _remove_unlisted_outputs(out: Path, sources: list[Source],
                             results: list[SourceResult]) -> None:
    """After an interrupt, remove the outputs that no manifest row will list: those of a
    source cut off half-way, and those a worker finished whose result never reached us. What
    is left on disk is then exactly what the manifests list."""
    listed = {r.output for res in results for r in res.records}
    for s in sources:
        for rel in s.outputs:
            if rel not in listed:
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    os.unlink(out / rel)


def _remove_temp_files(out: Path) -> None:
    """Remove every temporary file under ``out`` (ours, and stale ones of killed runs): called
    with the lock held and the workers gone, so none of them is still being written."""
    for root, _dirs, files in os.walk(out):
        for name in files:
            if is_temp_name(name):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(root, name))


def read_manifest(out: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of ``manifest.jsonl`` in ``out`` (for replaying or checking a run)."""
    path = Path(out) / MANIFEST_JSONL
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    return [json.loads(line) for line in text.splitlines() if line.strip()]
