"""The training loop behind ``cnn train``: epochs of SGD-style updates, metrics, checkpoints.

Reproducibility is by construction: every random stream (weights, shuffling, dropout,
augmentation) has its own generator derived from the seed, and their states go into each
checkpoint. A run resumed from the checkpoint of epoch k therefore continues exactly as an
uninterrupted run would. Ctrl-C discards the unfinished epoch (the last checkpoint is the
resumable state) and a non-finite loss stops before the bad update reaches any checkpoint.

A run folder holds one run at a time: it is locked (:class:`cnncli.fileio.FolderLock`) from
before the "already holds a run" check until the run ends, and nothing is written into it
before the first epoch has ended, so a run stopped earlier leaves no run behind (its folder
is removed if the run created it) rather than a folder that is neither new nor resumable.
No output may be, contain or lie inside an input (spec, data, pipeline, config).

Under ``mpiexec -n P`` (P > 1) the run is data-parallel (:mod:`cnncli.train.dist`): each rank
trains on its share of every global batch, the gradients are summed over the ranks and every
rank takes the same step. Rank 0 alone writes the run folder and reports progress. Dropout and
augmentation draw from per-rank streams (rank 0's are the single-process ones), saved for
every rank in the checkpoint with the world size, which a resume must match. Batchnorm uses
per-rank batch statistics in training; the running estimates are averaged over the ranks at
the end of each epoch, before evaluation and the checkpoint.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnncli.errors import CnnError, DataError, ExitCode
from cnncli.fileio import (
    FolderLock,
    atomic_write_text,
    guard_outputs,
    make_folder,
    remove_empty_folders,
    remove_stale_temps,
)
from cnncli.train.config import TrainConfig, merge

#: Files that make a folder a run (any of them): written from the end of the first epoch on.
RUN_FILES = ("config.yaml", "metrics.csv", "metrics.jsonl", "summary.json",
             "checkpoints/last.npz", "checkpoints/best.npz")
# What a run writes (removed before a run replaces another with --overwrite)
_OUTPUTS = ("config.yaml", "spec.yaml", "metrics.csv", "metrics.jsonl", "curves.png",
            "summary.json", "checkpoints/last.npz", "checkpoints/best.npz")
Event = Callable[[str, dict[str, Any]], None]
Inputs = Sequence[tuple[str | Path | None, str]]


class NonFiniteLoss(CnnError):
    exit_code = ExitCode.FAILURE
    all_ranks = True  # over MPI every rank sees the same (reduced) loss and weights


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    best_checkpoint: Path | None
    history: list[dict[str, Any]]
    test: dict[str, Any] | None
    epochs: int
    train_images_per_second: float
    fit_rule: str
    stopped_early: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        return {
            "run_dir": str(self.run_dir),
            "checkpoint": str(self.checkpoint),
            "best_checkpoint": str(self.best_checkpoint) if self.best_checkpoint else None,
            "epochs": self.epochs,
            "test_accuracy": None if self.test is None else self.test["accuracy"],
            "test_loss": None if self.test is None else self.test["loss"],
            "train_accuracy": last.get("train_accuracy"),
            "train_loss": last.get("train_loss"),
            "val_accuracy": last.get("val_accuracy"),
            "val_loss": last.get("val_loss"),
            "train_images_per_second": self.train_images_per_second,
            "stopped_early": self.stopped_early,
            **self.extra,
        }


def loss_and_grad(
    kind: str, out: np.ndarray, y: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """(mean loss, d loss / d out, class scores) for a batch."""
    from cnncli.ops import losses

    if kind == "mse":
        target = np.zeros_like(out)
        target[np.arange(len(y)), y] = 1
        loss, dout = losses.mse(out, target)
        return float(loss), dout, out
    loss, dlogits, probs = losses.softmax_cross_entropy(out, y)
    return float(loss), dlogits, probs


def train_step(model: Any, optimizer: Any, xb: np.ndarray, yb: np.ndarray,
               loss_kind: str = "cross_entropy") -> tuple[float, np.ndarray]:
    """One update: forward in training mode, loss, backward, optimizer step.

    Returns (loss, class scores). A non-finite loss returns before anything is updated.
    """
    out = model.forward(xb, training=True, logits=loss_kind == "cross_entropy")
    loss, dout, scores = loss_and_grad(loss_kind, out, yb)
    if not np.isfinite(loss):
        return loss, scores
    model.backward(dout, input_grad=False)
    optimizer.step(model.trainable_params, model.grads)
    return loss, scores


def evaluate_model(model: Any, dataset: Any, loss_kind: str = "cross_entropy",
                   batch_size: int = 1000) -> dict[str, Any]:
    """Mean loss and scores over a dataset in evaluation mode (no dropout, running BN)."""
    n = len(dataset)
    total = 0.0
    scores = None
    for lo in range(0, n, batch_size):
        xb, yb = dataset.x[lo:lo + batch_size], dataset.y[lo:lo + batch_size]
        out = model.forward(xb, training=False, logits=loss_kind == "cross_entropy")
        loss, _, s = loss_and_grad(loss_kind, out, yb)
        total += loss * len(yb)
        if scores is None:
            scores = np.empty((n, s.shape[1]), dtype=s.dtype)
        scores[lo:lo + len(yb)] = s
    model.release()
    pred = scores.argmax(axis=1)
    return {"loss": total / n, "accuracy": float((pred == dataset.y).mean()), "scores": scores}


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` holds (part of) a run: any file a finished epoch writes."""
    return any((folder / f).exists() for f in RUN_FILES)


def _check_run_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise CnnError(f"{out}: exists and is not a folder")
    if not overwrite and holds_run(out):
        raise CnnError(f"{out}: already holds a run; pass --overwrite to replace it or "
                       f"--resume {out} to continue it")


def run_folder_of(checkpoint: Path) -> Path:
    """The run folder a checkpoint belongs to (``RUN/checkpoints/NAME.npz``), or DataError:
    a resumed run writes its metrics and checkpoints there, so it must be a run."""
    if checkpoint.parent.name != "checkpoints" or checkpoint.name not in ("last.npz", "best.npz"):
        raise DataError(f"{checkpoint}: not a checkpoint inside a run folder "
                        "(RUN/checkpoints/last.npz or best.npz); --resume continues a run in its "
                        "own folder")
    return checkpoint.parent.parent


def _pipeline_file(augment: str | None) -> Path | None:
    """The pipeline file an ``augment`` setting names, if it names one (not a preset/ops)."""
    if not augment:
        return None
    text = str(augment).strip()
    if text.lower().endswith((".yaml", ".yml")) or Path(text).is_file():
        return Path(text)
    return None


def _metrics_files(run_dir: Path, history: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in keys})
    atomic_write_text(run_dir / "metrics.csv", buf.getvalue())
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))


def _dump_yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


@dataclass
class _Streams:
    shuffle: np.random.Generator
    dropout: np.random.Generator
    augment: np.random.Generator

    def states(self) -> dict[str, Any]:
        from cnncli.checkpoint import generator_state

        return {k: generator_state(getattr(self, k)) for k in ("shuffle", "dropout", "augment")}

    @classmethod
    def restore(cls, states: dict[str, Any]) -> _Streams:
        from cnncli.checkpoint import generator_from_state

        return cls(*(generator_from_state(states[k]) for k in ("shuffle", "dropout", "augment")))


def _batch_augmenter(
    spec: str, normalizer: Any, chw: tuple[int, ...]
) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
    """``augment(xb, rng)`` for normalised batches: ``cnncli.augment.batch.augment_batch``
    works on pixel values in [0, 1], so undo the normalisation, augment, normalise again.

    The pipeline must keep the image size (the network's input); that is checked now, on a
    blank image and a throwaway generator, so the run's own augmentation stream is untouched.
    """
    from cnncli.augment.batch import augment_batch
    from cnncli.augment.pipeline import resolve_pipeline

    pipeline = resolve_pipeline(spec)
    mean = normalizer.mean.astype(np.float32)[:, None, None]
    std = normalizer.std.astype(np.float32)[:, None, None]
    probe = augment_batch(np.zeros((1, *chw), np.float32), pipeline, np.random.default_rng(0))
    if probe.shape[1:] != tuple(chw):
        c, h, w = chw
        raise CnnError(f"augmentation '{spec}' turns {h}x{w}x{c} images into "
                       f"{probe.shape[2]}x{probe.shape[3]}x{probe.shape[1]}; use ops that keep "
                       "the network's input size")

    def augment(xb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raw = xb * std + mean
        out = augment_batch(raw, pipeline, rng)
        np.subtract(out, mean, out=out)
        np.divide(out, std, out=out)
        return out

    return augment


def _quiet_float_warnings(func: Callable[..., TrainResult]) -> Callable[..., TrainResult]:
    """Silence NumPy's overflow/invalid warnings: a run checks for non-finite values itself
    and stops with one clear message instead of a screenful of RuntimeWarnings."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> TrainResult:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            return func(*args, **kwargs)

    return wrapper


def _open_resume(resume: str | Path, epochs: int | None) -> tuple[Any, TrainConfig, Path, tuple]:
    """(spec, settings, checkpoint path, (arrays, meta)) of the run to continue.

    The saved settings are the run's; only the number of epochs may grow on resume.
    """
    from cnncli.train.meta import load_training_checkpoint

    ckpt_path = resolve_checkpoint(resume, prefer="last")
    arrays, meta, spec = load_training_checkpoint(ckpt_path, resume=True)
    config = merge(TrainConfig(), meta["config"], f"{ckpt_path} (saved settings)")
    done = meta["epoch"]
    if epochs is not None:
        if epochs < done:
            raise CnnError(f"{ckpt_path}: the run has already done {done} epochs; "
                           f"--epochs {epochs} cannot shorten it")
        config.epochs = epochs
    return spec, config, ckpt_path, (arrays, meta)


class _Trainer:
    """One call of ``train``: the state that setup, the epochs and the final result share.

    The steps run in a fixed order (the random streams are created and restored before any
    batch is drawn), so a resumed run draws exactly what an uninterrupted one would.
    """

    def __init__(self, on_event: Event | None, data: str | Path | None,
                 config: TrainConfig) -> None:
        self.emit: Event = on_event or (lambda kind, data: None)
        self.data = data
        self.config = config
        self.ckpt_state: tuple | None = None
        self.lock: FolderLock | None = None
        self.created: list[Path] = []  # folders this run made (removed if left empty)
        self.good_checkpoint: Path | None = None  # finite weights: loaded or written
        from cnncli.train.dist import world

        self.world = world()
        self.lead = self.world.rank == 0  # the rank that writes and reports
        if not self.lead:
            self.emit = lambda kind, data: None

    def setup(self, spec_source: Any, *, out: str | Path, resume: str | Path | None,
              epochs: int | None, overwrite: bool, inputs: Inputs) -> None:
        """:meth:`_setup`; over MPI, a rank that fails makes every rank fail with it."""
        from cnncli.train.dist import agree

        error = None
        try:
            self._setup(spec_source, out=out, resume=resume, epochs=epochs,
                        overwrite=overwrite, inputs=inputs)
        except Exception as exc:  # noqa: BLE001 - re-raised by agree() on every rank
            error = exc
        agree(self.world, error)

    def _setup(self, spec_source: Any, *, out: str | Path, resume: str | Path | None,
               epochs: int | None, overwrite: bool, inputs: Inputs) -> None:
        """Everything before the first batch; writes nothing but the lock of a resumed run."""
        self._open(spec_source, out, resume, epochs, overwrite, inputs)
        self._build_model()
        self._load_data()
        self._make_optimizer()
        self.augment = None
        if self.config.augment:
            self.augment = _batch_augmenter(self.config.augment, self.splits.normalizer,
                                            self.splits.train.x.shape[1:])
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        self.best_value: float | None = None
        self.since_best = 0  # epochs since the monitored value last improved (early stopping)
        seed = self.config.seed
        rank = [self.world.rank] if self.world.rank else []  # rank 0: the 1-process streams
        self.streams = _Streams(np.random.default_rng([seed, 2]),
                                np.random.default_rng([seed, 3, *rank]),
                                np.random.default_rng([seed, 4, *rank]))
        if self.ckpt_state is not None:
            self._restore()
        elif self.lead:
            self._start_run_folder(overwrite)
        ckpt_dir = self.run_dir / "checkpoints"
        self.last_path, self.best_path = ckpt_dir / "last.npz", ckpt_dir / "best.npz"
        if self.lead:
            remove_stale_temps(ckpt_dir, legacy_names=("last.npz", "best.npz"))
        self.monitor = "val_accuracy" if self.splits.val is not None else "train_loss"
        self.stopped_early = False
        self.first_batch_time: float | None = None  # wall clock, for start-up benchmarks
        self._announce_compiling()
        self._plot_at, self._plot_cost, self._plotted = time.perf_counter(), 0.0, 0  # curves

    # -- setup ----------------------------------------------------------------------------

    def _announce_compiling(self) -> None:
        """Say so (a "compiling" event) when a training step has kernels to compile: a
        throw-away twin with the same plan finds them (cnncli.jit); cached ones load now.
        The twin shares the parameters (no second initialisation: VGG-16 at 224x224 took
        3.6 s and 550 MB more) and copies the buffers, which a training pass updates."""
        from cnncli import jit
        from cnncli.data.dataset import batches
        from cnncli.engine.model import Model

        def step() -> None:
            model = Model(self.model.network, dtype=self.model.dtype,
                          rng=np.random.default_rng(0), options=self.model.options,
                          params_of=self.model)
            if getattr(self.model, "_algos", None) is not None:
                model.replan(algos=self.model._algos)
            xb, _ = next(batches(self.splits.train, 2, shuffle=False))
            out = model.forward(xb, training=True, logits=self.config.loss == "cross_entropy")
            model.backward(np.ones_like(out), input_grad=False)

        missing = jit.not_ready(jit.discover(step))
        if missing:
            self.emit("compiling", {"kernels": len(missing)})


    def _open(self, spec_source: Any, out: str | Path, resume: str | Path | None,
              epochs: int | None, overwrite: bool, inputs: Inputs) -> None:
        """Spec, settings and run folder: a resumed run's own (locked now), or new ones;
        no output may alias an input."""
        from cnncli.checkpoint import read_checkpoint_meta
        from cnncli.spec import load_spec

        ins: list[tuple[str | Path | None, str]] = list(inputs)
        if resume is not None:
            ckpt = resolve_checkpoint(resume, prefer="last")
            self.run_dir = run_folder_of(ckpt)
            meta = read_checkpoint_meta(ckpt)
            size = meta.get("world_size", 1)
            if size != self.world.size:
                from cnncli.train.dist import world_size_mismatch

                raise world_size_mismatch(size if isinstance(size, int) else 1,
                                          self.world.size, str(ckpt))
            saved = meta.get("config") if isinstance(meta.get("config"), dict) else {}
            augment = saved.get("augment")
        else:
            is_spec = hasattr(spec_source, "layers")
            self.spec = spec_source if is_spec else load_spec(spec_source)
            self.run_dir = Path(out)
            if self.spec.file and Path(self.spec.file).exists():
                ins.append((self.spec.file, "the spec"))
            meta, augment = {}, self.config.augment
            if self.config.init_from:  # read only: neither it nor its run may be written
                init = Path(self.config.init_from)
                ckpt = resolve_checkpoint(init, prefer="best")
                ins.append((ckpt, "the --init-from checkpoint"))
                if init.is_dir():
                    ins.append((init, "the --init-from run"))
                elif ckpt.parent.name == "checkpoints" and (ckpt.parent.parent
                                                            / "config.yaml").is_file():
                    # RUN/checkpoints/x.npz: the run it belongs to is read-only as well
                    ins.append((ckpt.parent.parent, "the --init-from run"))
        if self.data is None:
            from cnncli.train.predict import recorded_data

            self.data = recorded_data(meta)
            if self.data is None:
                raise CnnError("no data set: give --data (the checkpoint does not say which)")
        ins += [(self.data, "the data set"),
                (_pipeline_file(augment if isinstance(augment, str) else None),
                 "the augmentation pipeline")]
        guard_outputs([(self.run_dir, "the run folder")], ins)
        if resume is not None:
            if self.lead:
                self._lock()
            self.spec, self.config, self.ckpt_path, self.ckpt_state = _open_resume(ckpt, epochs)
            self.good_checkpoint = self.ckpt_path
        else:
            _check_run_dir(self.run_dir, overwrite)

    def _lock(self) -> None:
        self.lock = FolderLock(self.run_dir, "run folder").acquire()
        remove_stale_temps(self.run_dir, legacy_names=_OUTPUTS)

    def close(self) -> None:
        """Release the run folder; remove the folders this run made if it wrote nothing."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if self.created:  # nothing but empty folders is left when no epoch ended
            remove_empty_folders([*self.created, self.run_dir / "checkpoints"])

    def _build_model(self) -> None:
        """The network, which must end in a vector of class scores."""
        from cnncli.engine.model import build_model
        from cnncli.spec import resolve

        network = resolve(self.spec)
        if len(network.output) != 1:
            raise CnnError(f"{self.spec.file or self.spec.name}: the network's output is a "
                           f"{'x'.join(map(str, network.output))} map; classification needs a "
                           "vector (end with flatten/global_pool and dense)")
        self.n_out = network.output[0]
        self.model = build_model(network, seed=self.config.seed)
        from cnncli.freeze import parse_freeze

        self.model.freeze(parse_freeze(self.config.freeze))
        if not self.model.trainable_params:
            raise CnnError(f"{self.spec.file or self.spec.name}: every parameter is frozen "
                           "(trainable: false / --freeze); nothing would be trained")
        self.init_normalizer = None
        if self.config.init_from and self.ckpt_state is None:
            self._init_from(self.config.init_from)
        if self.config.autotune:
            report = self.model.tune(self.config.batch_size,
                                     log=lambda text: self.emit("note", {"text": text}))
            self.emit("autotune", {"convs": len(report),
                                   "timed": sum(not r["cached"] for r in report),
                                   "paths": {r["name"]: r["path"] for r in report}})

    def _init_from(self, source: str) -> None:
        """Copy the matching weights of another run (fine-tuning); report what was done.
        Its normalisation is kept when the channels agree: the copied layers learned their
        features on inputs normalised that way."""
        from cnncli.data.dataset import Normalizer
        from cnncli.train.finetune import apply_init, open_init

        path, arrays, meta = open_init(source)
        report = apply_init(self.model, arrays, path)
        norm = Normalizer.from_dict(meta["normalizer"], str(path))
        if norm.mean.shape[0] == self.spec.input[2]:
            self.init_normalizer = norm
        self.emit("init_from", report.to_dict() | {
            "normalizer": "the checkpoint's" if self.init_normalizer is not None else
            "fitted to the new data (the channels differ)"})

    def _load_data(self) -> None:
        """The splits; a resumed run keeps the normalisation it was trained with, and a
        fine-tuned one the normalisation of the run it starts from."""
        from cnncli.data.dataset import Normalizer, load_dataset

        state = self.ckpt_state
        normalizer = Normalizer.from_dict(state[1]["normalizer"], str(self.ckpt_path)) \
            if state else self.init_normalizer
        self.splits = load_dataset(self.data, self.spec.input, self.config.val_split,
                                   self.config.seed, normalizer=normalizer,
                                   num_classes=self.n_out)
        splits = self.splits
        self.emit("data", {"fit_rule": splits.fit_rule, "train": len(splits.train),
                           "val": len(splits.val) if splits.val else 0,
                           "test": len(splits.test) if splits.test else 0,
                           "classes": splits.classes, "warnings": splits.warnings})

    def _make_optimizer(self) -> None:
        """Optimizer and learning-rate schedule; the optimizer's defaults go into the config
        so that the saved settings say what was used."""
        from cnncli.optim import make_optimizer, make_schedule

        config = self.config
        self.optimizer = make_optimizer(config.optimizer, **config.optimizer_settings())
        resolved = self.optimizer.config()
        for key in ("momentum", "weight_decay"):
            if getattr(config, key) is None and key in resolved:
                setattr(config, key, resolved[key])
        self.schedule = make_schedule(config.schedule, config.lr, step_size=config.step_size,
                                      gamma=config.gamma, min_lr=config.min_lr,
                                      total=config.epochs, warmup=config.warmup)

    def _restore(self) -> None:
        """Weights, optimizer state, random streams and bookkeeping of the resumed run."""
        arrays, meta = self.ckpt_state
        try:
            self.model.load_state_dict({k[6:]: v for k, v in arrays.items()
                                        if k.startswith("model/")})
            self.optimizer.load_state_dict({k[6:]: v for k, v in arrays.items()
                                            if k.startswith("optim/")})
            self.streams = _Streams.restore(meta["rng"] if self.world.size == 1
                                            else meta["rng_ranks"][self.world.rank])
        except (CnnError, KeyError, TypeError) as exc:
            raise DataError(f"{self.ckpt_path}: checkpoint does not match its spec and "
                            f"settings ({exc})") from None
        self.history = list(meta["history"])
        self.start_epoch = int(meta["epoch"])
        self.best_value = meta.get("best_value")
        self.since_best = int(meta.get("since_best", 0))

    def _start_run_folder(self, overwrite: bool) -> None:
        """Create and lock the run folder, then check again (under the lock) that it holds
        no run; a replaced run's files are removed so they never mix with this one's. The
        settings and spec are written with the first checkpoint (:meth:`_save_epoch`)."""
        run_dir = self.run_dir
        self.created = make_folder(run_dir, "run folder")
        self._lock()
        _check_run_dir(run_dir, overwrite)
        if overwrite:
            for name in _OUTPUTS:
                try:
                    (run_dir / name).unlink(missing_ok=True)
                except OSError as exc:
                    raise CnnError(f"{run_dir / name}: cannot remove the old run's file "
                                   f"({exc.strerror or exc})") from None

    def _write_settings(self) -> None:
        """config.yaml and spec.yaml: with the first checkpoint, so a folder that has them
        has a resumable run."""
        run_dir = self.run_dir
        settings = {"spec": self.spec.file, "data": str(self.data),
                    "training": self.config.to_dict()}
        if self.world.size > 1:
            settings["world_size"] = self.world.size  # mpiexec -n; a resume must match
        atomic_write_text(run_dir / "config.yaml", _dump_yaml(settings))
        if self.spec.text is not None:
            atomic_write_text(run_dir / "spec.yaml", self.spec.text)

    # -- the epochs -----------------------------------------------------------------------

    def run(self, max_epochs_this_call: int | None) -> TrainResult:
        """Train the remaining epochs (at most ``max_epochs_this_call``), then finish."""
        from cnncli.data.dataset import num_batches

        config = self.config
        self.batches_per_epoch = num_batches(len(self.splits.train), config.batch_size)
        self.emit("start", {"epochs": config.epochs, "start_epoch": self.start_epoch,
                            "batches": self.batches_per_epoch, "params": self.model.num_params,
                            "run_dir": str(self.run_dir), "monitor": self.monitor})
        self.train_time = sum(h.get("epoch_train_seconds", 0.0) for h in self.history)
        self.train_images = sum(h.get("train_images", 0) for h in self.history)
        self.model.training_rng = self.streams.dropout
        stop_at = config.epochs if max_epochs_this_call is None else min(
            config.epochs, self.start_epoch + max_epochs_this_call)
        for epoch in range(self.start_epoch, stop_at):
            row = self._run_epoch(epoch)
            self._average_buffers()
            self._check_weights(epoch)
            self._evaluate_epoch(epoch, row)
            self.history.append(row)
            improved = self._track_best(row[self.monitor])
            self._save_epoch(epoch + 1, improved)
            self.emit("epoch", row | {"improved": improved, "best": self.best_value})
            if config.patience and self.since_best >= config.patience:
                self.stopped_early = True
                self.emit("early_stop", {"epoch": epoch + 1, "patience": config.patience})
                break
        return self._finish()

    def _run_epoch(self, epoch: int) -> dict[str, Any]:
        """One pass over the shuffled training split; the epoch's metrics row."""
        from cnncli.data.dataset import batches
        from cnncli.optim import lr_at

        config, optimizer = self.config, self.optimizer
        optimizer.lr = lr_at(self.schedule, epoch)
        t0 = time.perf_counter()
        seen = correct = 0
        loss_sum = 0.0
        train_batches = batches(self.splits.train, config.batch_size, self.streams.shuffle)
        for b, (xb, yb) in enumerate(train_batches):
            if self.world.size > 1:
                loss, right = self._shared_step(xb, yb)
            else:
                if self.augment is not None:
                    xb = self.augment(xb, self.streams.augment)
                loss, scores = train_step(self.model, optimizer, xb, yb, config.loss)
                right = int((scores.argmax(axis=1) == yb).sum()) if np.isfinite(loss) else 0
            if not np.isfinite(loss):
                raise self._non_finite(f"loss became {loss} at epoch {epoch + 1}, batch {b + 1}")
            n = len(yb)
            seen += n
            loss_sum += loss * n
            correct += right
            elapsed = time.perf_counter() - t0
            if self.first_batch_time is None:
                self.first_batch_time = time.time()
            self.emit("batch", {"epoch": epoch + 1, "batch": b + 1,
                                "batches": self.batches_per_epoch,
                                "loss": loss_sum / seen, "accuracy": correct / seen,
                                "images_per_second": seen / elapsed if elapsed > 0 else 0.0})
        epoch_seconds = time.perf_counter() - t0
        self.model.release()
        self.train_time += epoch_seconds
        self.train_images += seen
        return {
            "epoch": epoch + 1, "lr": optimizer.lr, "train_loss": loss_sum / seen,
            "train_accuracy": correct / seen, "train_images": seen,
            "epoch_train_seconds": epoch_seconds, "images_per_second": seen / epoch_seconds,
        }

    def _shared_step(self, xb: np.ndarray, yb: np.ndarray) -> tuple[float, int]:
        """One data-parallel update (see :mod:`cnncli.train.dist`): (the global batch's
        mean loss, its correct count), the same on every rank."""
        from cnncli.train.dist import share

        model, world, n = self.model, self.world, len(yb)
        params = model.trainable_params  # frozen layers have no gradient (as train_step)
        keys = sorted(params)
        sizes = [params[k].size for k in keys]
        # One buffer in the parameters' dtype (4 bytes a parameter for float32): the
        # gradients in sorted name order, then the share's loss sum and correct count.
        buf = np.zeros(sum(sizes) + 2, dtype=model.dtype)
        lo, hi = share(n, world.rank, world.size)
        if hi > lo:
            x, y = xb[lo:hi], yb[lo:hi]
            if self.augment is not None:
                x = self.augment(x, self.streams.augment)
            out = model.forward(x, training=True, logits=self.config.loss == "cross_entropy")
            loss, dout, scores = loss_and_grad(self.config.loss, out, y)
            buf[-2] = loss * (hi - lo)
            buf[-1] = int((scores.argmax(axis=1) == y).sum())
            if np.isfinite(loss):
                dout *= (hi - lo) / n  # d(mean over the global batch) / d(this share's out)
                model.backward(dout, input_grad=False)
                at = 0
                for k, size in zip(keys, sizes):
                    buf[at:at + size] = model.grads[k].ravel()
                    at += size
        world.allreduce(buf)
        loss = float(buf[-2]) / n
        if not np.isfinite(loss):
            return loss, 0
        grads, at = {}, 0
        for k, size in zip(keys, sizes):  # views of the reduced buffer, already the dtype
            grads[k] = buf[at:at + size].reshape(params[k].shape)
            at += size
        self.optimizer.step(params, grads)
        return loss, int(buf[-1])

    def _average_buffers(self) -> None:
        """Over MPI: every rank's running estimates (batchnorm) replaced by their mean, and
        a check that the weights are still the same on every rank."""
        if self.world.size == 1:
            return
        model = self.model
        keys = sorted(model.buffers)
        if keys:
            flat = np.concatenate([model.buffers[k].ravel().astype(np.float64) for k in keys])
            self.world.allreduce(flat)
            flat /= self.world.size
            at = 0
            for k in keys:
                a = model.buffers[k]
                a[...] = flat[at:at + a.size].reshape(a.shape)
                at += a.size
            model.weights_changed()
        import hashlib

        digest = hashlib.sha256()
        for k in sorted(model.params):
            digest.update(np.ascontiguousarray(model.params[k]).tobytes())
        if len(set(self.world.allgather(digest.hexdigest()))) != 1:
            from cnncli.train.dist import on_all_ranks

            raise on_all_ranks(CnnError("the weights differ between the MPI ranks (their MPI "
                                        "reduced differently); training stopped"))

    def _check_weights(self, epoch: int) -> None:
        """Stop if the epoch's last update overflowed, before it reaches a checkpoint."""
        bad = next((k for k, a in self.model.state_dict().items()
                    if not np.isfinite(a).all()), None)
        if bad is not None:
            raise self._non_finite(
                f"weights became non-finite ({bad}) at the end of epoch {epoch + 1}")

    def _evaluate_epoch(self, epoch: int, row: dict[str, Any]) -> None:
        """Add validation and test loss/accuracy to the epoch's row."""
        for name, ds in (("val", self.splits.val), ("test", self.splits.test)):
            if ds is not None:
                ev = self._evaluate(ds)
                row[f"{name}_loss"], row[f"{name}_accuracy"] = ev["loss"], ev["accuracy"]
                if not np.isfinite(ev["loss"]):
                    raise self._non_finite(
                        f"{name} loss became {ev['loss']} after epoch {epoch + 1}")

    def _track_best(self, value: float) -> bool:
        """Whether the monitored value improved; updates the early-stopping count."""
        best = self.best_value
        improved = best is None or (
            value > best if self.monitor.endswith("accuracy") else value < best)
        if improved:
            self.best_value = value
            self.since_best = 0
        else:
            self.since_best += 1
        return improved

    def _evaluate(self, ds: Any) -> dict[str, Any]:
        """Loss and accuracy over ``ds``; over MPI each rank evaluates its share of it."""
        if self.world.size == 1:
            return evaluate_model(self.model, ds, self.config.loss, self.config.eval_batch_size)
        from cnncli.data.dataset import Dataset
        from cnncli.train.dist import share

        lo, hi = share(len(ds), self.world.rank, self.world.size)
        sums = np.zeros(2)
        if hi > lo:
            part = Dataset(ds.x[lo:hi], ds.y[lo:hi], ds.classes)
            ev = evaluate_model(self.model, part, self.config.loss, self.config.eval_batch_size)
            sums[:] = ev["loss"] * (hi - lo), round(ev["accuracy"] * (hi - lo))
        self.world.allreduce(sums)
        return {"loss": float(sums[0] / len(ds)), "accuracy": float(sums[1] / len(ds))}

    def _save_epoch(self, epoch: int, improved: bool) -> None:
        """Checkpoints, metrics files and the learning-curve plot after an epoch (and, after
        the first epoch of a new run, its settings and spec); rank 0's work over MPI, with
        every rank's random streams."""
        self.rank_streams = self.world.gather(self.streams.states())
        if not self.lead:
            return
        first = not self.last_path.exists()
        if first:
            make_folder(self.last_path.parent, "checkpoints folder")
        self._save(self.last_path, epoch)
        self.good_checkpoint = self.last_path
        if improved:
            self._save(self.best_path, epoch)
        if first and self.ckpt_state is None:
            self._write_settings()
        _metrics_files(self.run_dir, self.history)
        self._plot_curves(final=False)

    def _plot_curves(self, final: bool) -> None:
        """curves.png from the history. A drawing takes 0.1-0.2 s (matplotlib), so during
        a run it is redrawn after an epoch only when 10 s, and 20 times the last drawing's
        time, have passed since the run started or was last drawn (at most about 5% of the
        run), and always at the end; ``cnn viz curves`` draws a run at any moment from its
        metrics.jsonl."""
        start = time.perf_counter()
        if self._plotted == len(self.history) or (
                not final and start - self._plot_at < max(10.0, 20 * self._plot_cost)):
            return
        try:
            from cnncli.train.plot import learning_curves

            learning_curves(self.history, self.run_dir / "curves.png",
                            run_name=self.run_dir.resolve().name)
        except Exception:  # a plot must never cost a run  # noqa: BLE001
            pass
        self._plot_at = time.perf_counter()
        self._plot_cost = self._plot_at - start
        self._plotted = len(self.history)

    def _save(self, path: Path, epoch: int) -> None:
        """A checkpoint that holds everything a resume needs to continue bit for bit."""
        from cnncli.checkpoint import save_checkpoint

        spec, splits, config = self.spec, self.splits, self.config
        arrays = {f"model/{k}": v for k, v in self.model.state_dict().items()}
        arrays |= {f"optim/{k}": v for k, v in self.optimizer.state_dict().items()}
        meta = {
            "kind": "cnncli-train", "spec_text": spec.text or _dump_yaml(dict(spec.raw)),
            "spec_file": spec.file, "spec_name": spec.name, "input": list(spec.input),
            "classes": splits.classes, "normalizer": splits.normalizer.to_dict(),
            "fit_rule": splits.fit_rule, "epoch": epoch, "config": config.to_dict(),
            "rng": self.streams.states(), "history": self.history,
            "best_value": self.best_value, "since_best": self.since_best,
            "monitor": self.monitor, "loss": config.loss,
            "data": str(self.data), "data_resolved": str(Path(self.data).resolve()),
            "world_size": self.world.size,
        }
        if self.world.size > 1:
            meta["rng_ranks"] = self.rank_streams
        save_checkpoint(path, arrays, meta)

    def _non_finite(self, what: str) -> NonFiniteLoss:
        """The error for a non-finite value, naming the checkpoint that is still good."""
        kept = self.good_checkpoint or "none (no epoch completed)"
        return NonFiniteLoss(f"{what}: training stopped; the last good checkpoint is {kept} "
                             f"(hint: lower the learning rate, now {self.optimizer.lr:g})")

    # -- the result -----------------------------------------------------------------------

    def _final_test(self) -> dict[str, Any] | None:
        """Test loss/accuracy: the last epoch's evaluation, or a fresh one if none ran."""
        if self.splits.test is None:
            return None
        last = self.history[-1] if self.history else {}
        if "test_loss" in last:
            return {"loss": last["test_loss"], "accuracy": last["test_accuracy"]}
        ev = self._evaluate(self.splits.test)
        return {"loss": ev["loss"], "accuracy": ev["accuracy"]}

    def _finish(self) -> TrainResult:
        """The result, also written to summary.json and sent as the "end" event."""
        test = self._final_test()
        if self.lead:
            self._plot_curves(final=True)
        ips = self.train_images / self.train_time if self.train_time > 0 else 0.0
        best = self.best_path if self.best_path.exists() else None
        result = TrainResult(self.run_dir, self.last_path, best, self.history, test,
                             len(self.history), ips, self.splits.fit_rule, self.stopped_early,
                             extra={"first_batch_time": self.first_batch_time})
        if self.lead:
            atomic_write_text(self.run_dir / "summary.json",
                              json.dumps(result.summary(), indent=2) + "\n")
        self.emit("end", result.summary())
        return result


@_quiet_float_warnings
def train(
    spec_source: Any,
    *,
    data: str | Path | None,
    out: str | Path,
    config: TrainConfig,
    resume: str | Path | None = None,
    epochs: int | None = None,
    overwrite: bool = False,
    on_event: Event | None = None,
    max_epochs_this_call: int | None = None,
    inputs: Inputs = (),
) -> TrainResult:
    """Train a spec on a dataset, writing a run folder; return the final result.

    With ``resume`` (a run folder or checkpoint in one) the saved spec, data normalisation
    and settings are used, ``epochs`` may extend the run and ``data`` may be None (the data
    the run was trained on).

    ``inputs``: more files the caller read (``(path, label)``, e.g. a config file), which the
    run folder must not alias either. ``max_epochs_this_call`` stops after that many epochs
    (tests use it to simulate an interrupted run that is later resumed).
    """
    trainer = _Trainer(on_event, data, config)
    try:
        trainer.setup(spec_source, out=out, resume=resume, epochs=epochs, overwrite=overwrite,
                      inputs=inputs)
        return trainer.run(max_epochs_this_call)
    finally:
        trainer.close()


def resolve_checkpoint(path: str | Path, prefer: str = "best") -> Path:
    """A checkpoint file from a run folder (``checkpoints/best.npz`` or ``last.npz``) or a file."""
    p = Path(path)
    if p.is_dir():
        for name in ((prefer, "last", "best") if prefer else ("best", "last")):
            cand = p / "checkpoints" / f"{name}.npz"
            if cand.exists():
                return cand
        raise DataError(f"{p}: no checkpoints/{prefer}.npz in this run folder (a run stopped "
                        "before its first epoch ended leaves nothing to resume; start it again)")
    if not p.exists():
        raise DataError(f"{p}: no such run folder or checkpoint")
    return p
