"""``cnn augment``: augment a folder of images into a new folder, reproducibly.

Thin layer: parse options, build the pipeline and settings, call
:func:`cnncli.augment.runner.run`, render the summary. NumPy, Pillow and Numba are imported
inside the command so that ``cnn --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from cnncli.cli.app import app
from cnncli.cli.common import handle_errors, info, stderr, stdout, warn, write_stdout
from cnncli.errors import CnnError, ExitCode

# "\b" keeps click from rewrapping the paragraph: one example per line
_EPILOG = """\b
Examples:
  cnn augment ./images --out ./augmented -n 5 --seed 0
  cnn augment digits/ --out aug/ --preset digits -n 10
  cnn augment photos/ --out aug/ --ops "flip,rotate=15,crop=0.8,brightness=0.2" --format jpg
  cnn augment --list-ops
  cnn augment photos/ --out aug/ --executor dask --address tcp://HOST:8786
"""


@app.command("augment", epilog=_EPILOG)
@handle_errors
def augment(
    input: Annotated[
        Optional[Path],  # noqa: UP045 - typer reads the annotation at runtime
        typer.Argument(
            metavar="INPUT", help="Folder of images (class subfolders are kept) or a single image."
        ),
    ] = None,
    out: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--out", "-o", help="Output folder (must not be inside INPUT)."),
    ] = None,
    n: Annotated[int, typer.Option("-n", help="Augmented outputs per input image.")] = 1,
    seed: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="Random seed (default: the pipeline file's seed, else 0)."),
    ] = None,
    workers: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--workers", "-j", help="Worker processes (default: all cores)."),
    ] = None,
    ops: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help='Ops, e.g. "flip,rotate=15,crop=0.8,brightness=0.2" (see --list-ops).'),
    ] = None,
    pipeline: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--pipeline", help="Pipeline YAML file (as written by --save-pipeline)."),
    ] = None,
    preset: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Named pipeline: digits (no flips), photos, default."),
    ] = None,
    format: Annotated[
        str, typer.Option("--format", help="Output format: keep (the source's), png or jpg.")
    ] = "keep",
    quality: Annotated[int, typer.Option(help="JPEG/WebP quality, 1..100.")] = 95,
    png_level: Annotated[
        int, typer.Option("--png-level", help="PNG zlib level 0..9 (1 is ~3x faster than 6).")
    ] = 1,
    max_pixels: Annotated[
        int, typer.Option("--max-pixels", help="Refuse images with more pixels (bomb guard).")
    ] = 89_478_485,
    executor: Annotated[
        str, typer.Option("--executor", help="local (this machine's processes) or dask (a Dask cluster: --address, --scheduler-file, DASK_SCHEDULER_ADDRESS, else a local one of --workers processes).")
    ] = "local",
    address: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--address", help="Dask scheduler, e.g. tcp://HOST:8786 (--executor dask)."),
    ] = None,
    scheduler_file: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--scheduler-file", help="Dask scheduler file (dask scheduler --scheduler-file F)."),
    ] = None,
    transfer: Annotated[
        bool, typer.Option("--transfer", help="Dask workers share no file system: send the sources and write the outputs here.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check inputs and plan outputs; write nothing.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Write into an existing, non-empty output folder.")
    ] = False,
    save_pipeline: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--save-pipeline", help="Also save the pipeline (with its seed) as YAML."),
    ] = None,
    list_ops: Annotated[
        bool, typer.Option("--list-ops", help="List every op, its parameters and defaults.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary (or --list-ops) as JSON on stdout.")
    ] = False,
) -> None:
    """Augment images into a new folder with the same layout, recording every sampled op.

    The manifest (CSV and JSON lines) gives each output's source and exact op parameters.

    The same seed gives byte-identical outputs whatever the number of workers.

    Bad files are skipped and listed. Exit code: 0 ok, 1 some inputs failed, 2 bad usage.
    """
    from cnncli.augment.pipeline import Pipeline, parse_ops
    from cnncli.augment.pipeline import preset as load_preset

    if list_ops:
        _render_ops(as_json)
        return

    given = [
        name for name, v in (("--ops", ops), ("--pipeline", pipeline), ("--preset", preset)) if v
    ]
    if len(given) > 1:
        raise CnnError(
            f"give only one of --ops, --pipeline and --preset (got {' and '.join(given)})"
        )
    if ops is not None:
        pipe = parse_ops(ops)
    elif pipeline is not None:
        pipe = Pipeline.load(pipeline)
    elif preset is not None:
        pipe = load_preset(preset)
    else:
        pipe = load_preset("default")
        if input is not None:
            info(f"no --ops/--pipeline/--preset: using preset 'default' ({pipe.short()})")
    run_seed = seed if seed is not None else (pipe.seed if pipe.seed is not None else 0)
    from dataclasses import replace

    from cnncli.fileio import guard_outputs

    saved = replace(pipe, seed=run_seed)
    if save_pipeline is not None and input is None and out is None:
        guard_outputs([(save_pipeline, "--save-pipeline")], [(pipeline, "the pipeline file")])
        if dry_run:
            info(f"dry run: would save the pipeline to {save_pipeline}")
        else:
            saved.save(save_pipeline)
            info(f"pipeline saved to {save_pipeline}")
        return
    if input is None:
        raise CnnError("missing INPUT folder (or use --list-ops)")
    if out is None:
        raise CnnError("missing --out DIR: where to write the augmented images")
    if save_pipeline is not None and save_pipeline.is_dir():
        raise CnnError(f"{save_pipeline}: --save-pipeline is a folder; give a file name")

    from cnncli.augment.runner import RunSettings, run

    settings = RunSettings(
        n=n,
        seed=run_seed,
        workers=workers,
        out_format=format.lower(),
        quality=quality,
        png_level=png_level,
        overwrite=overwrite,
        dry_run=dry_run,
        max_pixels=max_pixels,
        executor=executor.lower(),
        address=address,
        scheduler_file=scheduler_file,
        transfer=transfer,
    )
    from cnncli.augment.runner import MANIFEST_CSV, MANIFEST_JSONL, PIPELINE_FILE

    paths = {"inputs": [(pipeline, "the pipeline file")],
             "outputs": [(save_pipeline, "--save-pipeline"),
                         *((out / name, f"the run's {name}")
                           for name in (MANIFEST_CSV, MANIFEST_JSONL, PIPELINE_FILE))]}
    summary = _run_with_progress(run, input, out, pipe, settings, paths)
    if save_pipeline is not None:  # after the run's checks: a refused run writes nothing
        if dry_run:
            info(f"dry run: would save the pipeline to {save_pipeline}")
        else:
            saved.save(save_pipeline)
            info(f"pipeline saved to {save_pipeline}")
    _render_summary(summary)
    if as_json:
        write_stdout(json.dumps(summary.to_dict(), indent=2))
    raise typer.Exit(int(ExitCode.FAILURE if summary.exit_code else ExitCode.OK))


def _run_with_progress(
    run: Any, input: Path, out: Path, pipe: Any, settings: Any, paths: dict[str, Any]
) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr.console,
        transient=True,
        disable=not stderr.is_terminal,
    ) as bar:
        task = bar.add_task("checking" if settings.dry_run else "augmenting", total=None)

        def progress(done: int, total: int, _last: str) -> None:
            bar.update(task, completed=done, total=total)

        def note(text: str) -> None:
            bar.console.print(text, highlight=False, markup=False)

        return run(input, out, pipe, settings, progress=progress, on_note=note, **paths)


def _render_summary(s: Any) -> None:
    rate = f", {s.done / s.seconds:.0f} images/s" if s.seconds > 0 and s.done else ""
    verb = "would write" if s.dry_run else "wrote"
    ok = len(s.failed) == 0
    colour = "green" if ok else "yellow"
    stderr.print(
        f"[{colour}]{verb} {s.done} images[/] from {s.sources - len(s.failed)} of {s.sources} "
        f"sources into {s.output} ({s.workers} worker{'s' if s.workers != 1 else ''}, "
        f"{s.seconds:.1f} s{rate}); seed {s.seed}, n {s.n}",
        highlight=False,
    )
    info(f"pipeline: {s.pipeline}")
    if not s.dry_run and s.done:
        info(f"manifest: {Path(s.output) / 'manifest.csv'} (and manifest.jsonl, pipeline.yaml)")
    if s.ignored:
        info(f"ignored {s.ignored} file(s) without an image extension")
    for p in s.skipped:
        warn(f"skipped {p.path}: {p.reason}")
    for p in s.warnings:
        warn(f"{p.path}: {p.reason}")
    if s.failed:
        stderr.print(f"[bold red]failed ({len(s.failed)}):[/]", highlight=False)
        for p in s.failed:
            info(f"  {p.path}: {p.reason}")


def _render_ops(as_json: bool) -> None:
    from cnncli.augment.transforms import describe_ops

    rows = describe_ops()
    if as_json:
        write_stdout(json.dumps(rows, indent=2))
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="cnn augment ops", show_lines=True, expand=False)
    table.add_column("op", style="bold")
    table.add_column("what it does")
    table.add_column("parameters (default; allowed)")
    for row in rows:
        params = "\n".join(
            escape(f"{p['name']}={_fmt(p['default'])}  ({p['allowed']}) {p['help']}")
            for p in row["params"]
        )
        table.add_row(
            f"{row['op']}\n[dim]{row['kind']}[/]",
            f"{escape(row['summary'])}\n[dim]{escape(row['shorthand'])}[/]",
            params,
        )
    stdout.print(table)
    stdout.print(
        'Syntax: --ops "name,name=value,name(key=value, ...)", e.g. '
        '"flip,rotate(limit=10, border=reflect),random_resized_crop(size=224, area=[0.8, 1])"',
        highlight=False,
        markup=False,
    )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value) if isinstance(value, list) else str(value)
