"""``cnn train``, ``cnn evaluate`` and ``cnn predict``."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from cnncli.cli.app import app
from cnncli.cli.common import (
    OutputFormat,
    TableOrJson,
    handle_errors,
    info,
    stderr,
    stdout,
    warn,
    write_stdout,
)
from cnncli.errors import CnnError, ExitCode, interrupt_exit_code

DEFAULT_DATA = Path("sample_data/mnist")


_PLURALS = {"epoch": "epochs", "batch": "batches"}


def _count(n: int, noun: str) -> str:
    """``1 epoch``, ``20 epochs``, ``1 batch``, ``63 batches``."""
    return f"{n} {noun if n == 1 else _PLURALS[noun]}"


class _Progress:
    """Renders training events on stderr: a live bar on a terminal, plain lines otherwise."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: Any = None
        self.task: Any = None
        self.live = stderr.is_terminal and not quiet
        self.last_print = 0.0

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        if self.quiet:
            return
        getattr(self, f"on_{kind}", lambda d: None)(data)

    def on_note(self, d: dict[str, Any]) -> None:
        info(d["text"])

    def on_compiling(self, d: dict[str, Any]) -> None:
        from cnncli.jit import COMPILING_NOTE

        info(COMPILING_NOTE)

    def on_autotune(self, d: dict[str, Any]) -> None:
        info(f"autotune: {d['convs']} convolutions planned from timings "
             f"({d['timed']} timed now, {d['convs'] - d['timed']} from the cache)")

    def on_init_from(self, d: dict[str, Any]) -> None:
        from rich.table import Table

        t = Table(title=f"--init-from {d['source']}: {d['copied']} arrays copied, "
                        f"{d['fresh']} left fresh, {d['skipped']} skipped (shape differs)"
                        + (f", {d['unused']} of the checkpoint unused" if d["unused"] else ""),
                  title_justify="left")
        for col in ("layer", "status", "detail"):
            t.add_column(col)
        for layer, status, detail in d["rows"]:
            t.add_row(layer, status, detail)
        stderr.print(t)
        info(f"normalisation: {d['normalizer']}")

    def on_data(self, d: dict[str, Any]) -> None:
        for w in d.get("warnings", ()):
            warn(w)
        info(f"data: {d['train']} train, {d['val']} val, {d['test']} test images, "
             f"{len(d['classes'])} classes")
        info(f"input rule: {d['fit_rule']}")

    def on_start(self, d: dict[str, Any]) -> None:
        info(f"training {d['params']:,} parameters for {_count(d['epochs'], 'epoch')} "
             f"({_count(d['batches'], 'batch')} each) -> {d['run_dir']}"
             + (f", resuming after epoch {d['start_epoch']}" if d["start_epoch"] else ""))
        if self.live:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            # one bar for the whole run, so that the time left is the run's, not the epoch's
            self.first_epoch, self.epochs = d["start_epoch"], d["epochs"]
            self.bar = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(),
                                MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
                                TimeRemainingColumn(), console=stderr.console, transient=True)
            self.bar.start()
            total = d["batches"] * max(1, d["epochs"] - d["start_epoch"])
            self.task = self.bar.add_task("train", total=total, epoch="-", stats="")

    def on_batch(self, d: dict[str, Any]) -> None:
        if self.bar is not None:
            done = (d["epoch"] - 1 - self.first_epoch) * d["batches"] + d["batch"]
            self.bar.update(self.task, completed=done, epoch=f"{d['epoch']}/{self.epochs}",
                            stats=f"loss {d['loss']:.4f} acc {d['accuracy']:.2%} "
                                  f"{d['images_per_second']:,.0f} img/s")

    def on_epoch(self, d: dict[str, Any]) -> None:
        parts = [f"epoch {d['epoch']:>3}", f"lr {d['lr']:.4g}",
                 f"loss {d['train_loss']:.4f}", f"acc {d['train_accuracy']:.2%}"]
        for split in ("val", "test"):
            if f"{split}_accuracy" in d:
                parts.append(f"{split} loss {d[f'{split}_loss']:.4f} "
                             f"acc {d[f'{split}_accuracy']:.2%}")
        parts.append(f"{d['images_per_second']:,.0f} img/s")
        if self.bar is not None:
            self.bar.console.print(" | ".join(parts) + (" *" if d["improved"] else ""),
                                   highlight=False)
        else:
            info(" | ".join(parts) + (" *" if d["improved"] else ""))

    def on_early_stop(self, d: dict[str, Any]) -> None:
        info(f"early stopping after epoch {d['epoch']}: no improvement for "
             f"{_count(d['patience'], 'epoch')}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


@app.command()
@handle_errors
def train(
    arch: Annotated[Path | None, typer.Option("--arch", "-a", metavar="SPEC", help="Architecture YAML file.")] = None,
    data: Annotated[Path | None, typer.Option(help="MNIST IDX folder, image folder or .npz "
                                              "(default: sample_data/mnist).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs (default: 20).")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Batch size (default: 64).")] = None,
    optimizer: Annotated[str | None, typer.Option(help="sgd, adam, adamw or rmsprop (default: sgd).")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (default: 0.05).")] = None,
    momentum: Annotated[float | None, typer.Option(help="Momentum (sgd 0.9, rmsprop 0).")] = None,
    nesterov: Annotated[bool | None, typer.Option("--nesterov/--no-nesterov", help="Nesterov momentum (sgd).")] = None,
    weight_decay: Annotated[float | None, typer.Option("--weight-decay", help="L2 / decoupled weight decay.")] = None,
    schedule: Annotated[str | None, typer.Option(help="constant, step, cosine or exponential.")] = None,
    warmup: Annotated[int | None, typer.Option(help="Epochs of linear learning-rate warm-up.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for weights, shuffling, dropout, augmentation.")] = None,
    val_split: Annotated[float | None, typer.Option("--val-split", help="Fraction of training data held out.")] = None,
    patience: Annotated[int | None, typer.Option(help="Early stopping patience in epochs (0: off).")] = None,
    augment: Annotated[str | None, typer.Option(help="On-the-fly augmentation: pipeline YAML, preset or ops.")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML file of training settings.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder (default: runs/<spec>-<time>).")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue the run in this folder (or checkpoint).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a run already in --out.")] = False,
    format: Annotated[TableOrJson, typer.Option("--format", "-f", help="table or json (one object on stdout).")] = TableOrJson.table,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    autotune: Annotated[bool | None, typer.Option("--autotune", help="Time each conv's candidate kernel paths once and train with the fastest (cached on disk).")] = None,
    init_from: Annotated[Path | None, typer.Option("--init-from", help="Start from the weights of this run (folder: its best checkpoint) or checkpoint whose names and shapes match; optimizer, epochs and random streams start fresh.")] = None,
    freeze: Annotated[str | None, typer.Option("--freeze", help="Keep these layers fixed: comma-separated dotted paths or prefixes, e.g. layer1,layer2.")] = None,
) -> None:
    """Train a spec on a dataset and write a run folder (checkpoints, metrics, curves).

    Under mpiexec -n P: data-parallel over P processes (rank 0 writes and reports).
    """
    import json

    comm = _mpi_world()

    from cnncli.spec import load_spec
    from cnncli.train.config import TrainConfig, resolve_config
    from cnncli.train.loop import train as run_train

    flags = {"epochs": epochs, "batch_size": batch_size, "optimizer": optimizer, "lr": lr,
             "momentum": momentum, "nesterov": nesterov, "weight_decay": weight_decay,
             "schedule": schedule, "warmup": warmup, "seed": seed, "val_split": val_split,
             "patience": patience, "augment": augment, "autotune": autotune,
             "init_from": None if init_from is None else str(init_from), "freeze": freeze}
    if resume is None:
        if arch is None:
            raise CnnError("give --arch SPEC.yaml (or --resume RUN)")
        spec = load_spec(arch)
        cfg = resolve_config(spec.training, config, flags)
        data_path = data or DEFAULT_DATA
        if data is None and not DEFAULT_DATA.exists():
            raise CnnError(f"no --data given, and the default, {DEFAULT_DATA} (the MNIST subset "
                           "shipped in the repository), is not here: run from the repository "
                           "folder or pass --data FOLDER_OR_NPZ")
        out_dir = out or Path("runs") / f"{arch.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        if comm is not None:
            out_dir = comm.bcast(out_dir)  # rank 0's clock names the run for every rank
    else:
        given = [f"--{k.replace('_', '-')}" for k, v in flags.items()
                 if v is not None and k != "epochs"]
        given += [name for name, v in (("--arch", arch), ("--config", config), ("--out", out))
                  if v is not None]
        if given:
            raise CnnError("--resume continues a run in its own folder with its saved settings; "
                           f"only --epochs and --data may be given (got {', '.join(given)})")
        spec, cfg = None, TrainConfig()
        data_path = data
        from cnncli.train.loop import resolve_checkpoint, run_folder_of

        out_dir = run_folder_of(resolve_checkpoint(resume, "last"))
    progress = _Progress(quiet or format is TableOrJson.json and not stderr.is_terminal)
    try:
        result = run_train(spec, data=data_path, out=out_dir, config=cfg, resume=resume,
                           epochs=epochs if resume is not None else None,
                           overwrite=overwrite, on_event=progress,
                           inputs=[(config, "the training config")])
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (errors.Terminated)
        progress.close()
        what = "terminated (SIGTERM)" if interrupt_exit_code(exc) != ExitCode.INTERRUPTED \
            else "interrupted"
        if (out_dir / "checkpoints" / "last.npz").exists():
            warn(f"{what}: the last completed epoch's checkpoint is kept; continue with "
                 f"cnn train --resume {out_dir}")
        else:
            warn(f"{what} before the first epoch ended: nothing was saved (start again with "
                 "the same command)")
        if comm is not None:
            comm.abort(int(interrupt_exit_code(exc)))  # a rank may wait in a collective
        raise typer.Exit(int(interrupt_exit_code(exc))) from None
    except Exception as exc:
        if comm is not None and not getattr(exc, "all_ranks", False):
            _fail_all(comm, exc)  # some ranks failed alone: the others must not wait for ever
        raise
    finally:
        progress.close()
    summary = result.summary()
    if format is TableOrJson.json:
        write_stdout(json.dumps(summary))
        return
    test = summary["test_accuracy"]
    stdout.print(
        f"done: {_count(summary['epochs'], 'epoch')}"
        + (" (stopped early: no improvement)" if summary["stopped_early"] else "") + ", "
        + (f"test accuracy {test:.2%} (loss {summary['test_loss']:.4f}), " if test is not None
           else "")
        + f"{summary['train_images_per_second']:,.0f} training images/s\n"
        f"checkpoint: {summary['checkpoint']}\nrun folder: {summary['run_dir']}",
        highlight=False)


def _fail_all(comm: Any, exc: Exception) -> None:
    """Report an error that only this rank raised (every rank prints its own), then end the
    whole MPI job with its exit code."""
    if isinstance(exc, CnnError):
        stderr.quiet = False
        from cnncli.cli.common import error

        error(f"MPI rank {comm.rank}: {exc}")
        comm.abort(int(exc.exit_code))
    import traceback

    traceback.print_exc()
    comm.abort(1)


def _mpi_world() -> Any:
    """The MPI world under ``mpiexec -n P`` (P > 1; only rank 0 then prints), else None.
    Read from the launcher's environment first: a plain run never imports mpi4py."""
    from cnncli.train.dist import launched_size

    if launched_size() == 1:
        return None
    from cnncli.train.dist import world

    comm = world()
    if comm.rank != 0:
        stdout.quiet = stderr.quiet = True
    return comm


@app.command()
@handle_errors
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(metavar="RUN", help="Run folder (uses its best checkpoint) or .npz.")],
    data: Annotated[Path | None, typer.Option(help="Dataset (default: the one trained on).")] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="k for top-k accuracy.")] = 5,
    confusion_csv: Annotated[Path | None, typer.Option(help="Write the confusion matrix as CSV.")] = None,
    confusion_png: Annotated[Path | None, typer.Option(help="Write the confusion matrix as PNG.")] = None,
    format: Annotated[OutputFormat, typer.Option("--format", "-f")] = OutputFormat.table,
) -> None:
    """Loss, accuracy, top-k, per-class precision/recall/F1 and the confusion matrix."""
    import json

    from cnncli.fileio import guard_outputs, remove_stale_temps
    from cnncli.train.predict import evaluate_checkpoint, evaluation_inputs

    outputs = [(confusion_csv, "--confusion-csv"), (confusion_png, "--confusion-png")]
    if confusion_csv or confusion_png:  # before anything is computed or written
        guard_outputs(outputs, evaluation_inputs(checkpoint, data))
    rep = evaluate_checkpoint(checkpoint, data, top_k=top_k)
    classes = [r["class"] for r in rep["per_class"]]
    for path, _ in outputs:
        if path is not None:
            remove_stale_temps(path.parent if str(path.parent) else Path("."))
    if confusion_csv:
        from cnncli.fileio import atomic_write_text

        rows = ["true\\pred," + ",".join(classes)]
        rows += [f"{c}," + ",".join(map(str, row))
                 for c, row in zip(classes, rep["confusion_matrix"])]
        atomic_write_text(confusion_csv, "\n".join(rows) + "\n", "confusion matrix")
    if confusion_png:
        from cnncli.train.plot import confusion_png as draw

        draw(rep["confusion_matrix"], classes, confusion_png)
    if format is OutputFormat.json:
        write_stdout(json.dumps(rep))
        return
    if format is OutputFormat.csv:
        lines = ["class,precision,recall,f1,support"]
        lines += [f"{r['class']},{r['precision']:.6f},{r['recall']:.6f},{r['f1']:.6f},"
                  f"{r['support']}" for r in rep["per_class"]]
        write_stdout("\n".join(lines))
        return
    if format is OutputFormat.markdown:
        write_stdout(_evaluation_markdown(rep, classes))
        return
    from rich.table import Table

    k = rep["top_k"]
    stdout.print(f"{rep['checkpoint']} on {rep['data']} ({rep['split']}, {rep['images']} images)"
                 f"\nloss {rep['loss']:.4f}  accuracy {rep['accuracy']:.2%}  "
                 f"top-{k} {rep[f'top{k}_accuracy']:.2%}  macro F1 {rep['macro_f1']:.4f}",
                 highlight=False)
    t = Table(title="per class", title_justify="left")
    for col in ("class", "precision", "recall", "F1", "support"):
        t.add_column(col, justify="left" if col == "class" else "right")
    for r in rep["per_class"]:
        t.add_row(r["class"], f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}",
                  str(r["support"]))
    stdout.print(t)
    # The title goes on its own line: as a table title it would wrap to a narrow table's width.
    stdout.print("confusion matrix (rows: true class, columns: predicted)", highlight=False)
    cm = Table()
    cm.add_column("")
    for c in classes:
        cm.add_column(c, justify="right")
    for c, row in zip(classes, rep["confusion_matrix"]):
        cm.add_row(c, *map(str, row))
    stdout.print(cm)


def _evaluation_markdown(rep: dict[str, Any], classes: list[str]) -> str:
    """The evaluation report as Markdown: a summary line and two pipe tables."""
    k = rep["top_k"]
    lines = [f"`{rep['checkpoint']}` on `{rep['data']}` ({rep['split']}, {rep['images']} "
             f"images): loss {rep['loss']:.4f}, accuracy {rep['accuracy']:.2%}, "
             f"top-{k} {rep[f'top{k}_accuracy']:.2%}, macro F1 {rep['macro_f1']:.4f}", "",
             "| class | precision | recall | F1 | support |", "|:--|--:|--:|--:|--:|"]
    lines += [f"| {r['class']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | "
              f"{r['support']} |" for r in rep["per_class"]]
    lines += ["", "Confusion matrix (rows: true class, columns: predicted)", "",
              "| | " + " | ".join(classes) + " |", "|:--|" + "--:|" * len(classes)]
    lines += [f"| {c} | " + " | ".join(map(str, row)) + " |"
              for c, row in zip(classes, rep["confusion_matrix"])]
    return "\n".join(lines)


@app.command()
@handle_errors
def predict(
    checkpoint: Annotated[Path, typer.Argument(metavar="RUN", help="Run folder or checkpoint .npz.")],
    images: Annotated[list[str] | None, typer.Argument(metavar="IMAGES", help="Image files or folders; - reads paths from stdin.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Labels per image.")] = 3,
    format: Annotated[TableOrJson, typer.Option("--format", "-f", help="table or json (JSON lines).")] = TableOrJson.table,
) -> None:
    """Top-k labels with probabilities for image files."""
    import json

    from cnncli.fileio import read_stream
    from cnncli.train.predict import expand_paths_skipping, predict_images

    items = list(images or [])
    if not items and sys.stdin.isatty():
        raise CnnError("no images given (pass files or folders, or - to read paths from stdin)")
    if not items or items == ["-"]:
        text = read_stream(sys.stdin, "<stdin>", limit=64 << 20, what="list of image paths")
        items = [line.strip() for line in text.splitlines() if line.strip()]
    if not items:
        raise CnnError("no images given (pass files or folders, or paths on stdin)")
    paths, skipped = expand_paths_skipping(items)
    for p, why in skipped:
        warn(f"skipped {p}: {why}")
    results = predict_images(checkpoint, paths, top_k=top_k)
    failed = [r for r in results if "error" in r]
    for r in failed:
        warn(r["error"])
    if format is TableOrJson.json:
        lines = "".join(json.dumps(r) + "\n" for r in results if "error" not in r)
        if lines:
            write_stdout(lines)
    else:
        from rich.table import Table

        t = Table()
        t.add_column("image")
        for i in range(top_k):
            t.add_column(f"#{i + 1}")
        for r in results:
            if "error" in r:
                continue
            t.add_row(r["path"], *[f"{p['label']} ({p['probability']:.1%})" for p in r["top"]])
        stdout.print(t)
    if failed:
        raise typer.Exit(int(ExitCode.FAILURE))
