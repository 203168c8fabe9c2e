"""Training settings: defaults < the spec's ``training:`` section < a config file < flags.

The resolved configuration is saved in the run folder and in every checkpoint, so a run
can be reproduced or resumed from it alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from cnncli.errors import CnnError
from cnncli.layers.base import suggest


@dataclass
class TrainConfig:
    """Every setting of a run. Defaults train LeNet-5 on MNIST as LeCun-style SGD does."""

    epochs: int = 20
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float | None = None  # sgd: 0.9 by default; rmsprop: 0
    nesterov: bool = False
    weight_decay: float | None = None  # the optimizer's own default (adamw 0.01, else 0)
    schedule: str = "constant"  # constant | step | cosine | exponential (per epoch)
    step_size: int = 10
    gamma: float | None = None
    min_lr: float = 0.0
    warmup: int = 0  # epochs of linear warm-up
    seed: int = 0
    val_split: float = 0.0
    patience: int = 0  # early stopping: epochs without improvement (0: off)
    loss: str = "cross_entropy"  # cross_entropy | mse
    augment: str | None = None  # a pipeline file, preset name or ops string
    eval_batch_size: int = 1000
    autotune: bool = False  # time each conv's kernel paths first (cached on disk)
    init_from: str | None = None  # a run folder or checkpoint whose matching weights start us
    freeze: str | None = None  # comma-separated layer paths (dotted prefixes) kept fixed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def optimizer_settings(self) -> dict[str, Any]:
        """Keyword arguments for :func:`cnncli.optim.make_optimizer`."""
        opt = self.optimizer.lower()
        kw: dict[str, Any] = {"lr": self.lr, "weight_decay": self.weight_decay}  # None: default
        if opt == "sgd":
            kw["momentum"] = 0.9 if self.momentum is None else self.momentum
            kw["nesterov"] = self.nesterov
        elif opt == "rmsprop":
            kw["momentum"] = self.momentum
        elif self.momentum is not None:
            raise CnnError(f"--momentum does not apply to {opt} (it uses betas)")
        if self.nesterov and opt != "sgd":
            raise CnnError("--nesterov applies to sgd only")
        return kw


_FIELDS = {f.name: f for f in fields(TrainConfig)}
_ALIASES = {"batch-size": "batch_size", "weight-decay": "weight_decay", "val-split": "val_split",
            "init-from": "init_from",
            "learning_rate": "lr", "optim": "optimizer"}


def _coerce(name: str, value: Any, where: str) -> Any:
    default = _FIELDS[name].default
    typ = _FIELDS[name].type
    if value is None:
        if "None" in str(typ):
            return None
        raise CnnError(f"{where}: training setting '{name}' cannot be empty")
    if name == "freeze" and isinstance(value, list):  # freeze: [layer1, layer2] in YAML
        value = ",".join(str(v) for v in value)
    try:
        if "bool" in str(typ):
            if not isinstance(value, bool):
                raise ValueError
            return value
        if "int" in str(typ) and "float" not in str(typ):
            if isinstance(value, bool) or int(value) != value:
                raise ValueError
            return int(value)
        if "float" in str(typ):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        kind = type(default).__name__ if default is not None else "value"
        raise CnnError(f"{where}: training setting '{name}' must be a {kind}, got {value!r}") \
            from None


def merge(config: TrainConfig, settings: dict[str, Any], where: str) -> TrainConfig:
    """Apply ``settings`` (from a YAML section, a file or flags) on top of ``config``."""
    values = config.to_dict()
    for key, value in settings.items():
        name = _ALIASES.get(str(key), str(key).replace("-", "_"))
        if name not in _FIELDS:
            raise CnnError(f"{where}: unknown training setting '{key}'{suggest(name, _FIELDS)}")
        values[name] = _coerce(name, value, where)
    cfg = TrainConfig(**values)
    validate(cfg, where)
    return cfg


def validate(cfg: TrainConfig, where: str = "training") -> None:
    checks = [
        (cfg.epochs >= 1, "epochs must be >= 1"),
        (cfg.batch_size >= 1, "batch size must be >= 1"),
        (cfg.lr > 0, "learning rate must be > 0"),
        (cfg.weight_decay is None or cfg.weight_decay >= 0, "weight decay must be >= 0"),
        (0 <= cfg.val_split < 1, "validation split must be in [0, 1)"),
        (cfg.patience >= 0, "patience must be >= 0"),
        (cfg.loss in ("cross_entropy", "mse"), "loss must be cross_entropy or mse"),
        (cfg.eval_batch_size >= 1, "eval batch size must be >= 1"),
        (cfg.seed >= 0, f"seed must be a non-negative integer, got {cfg.seed}"),
    ]
    for ok, message in checks:
        if not ok:
            raise CnnError(f"{where}: {message}")


def resolve_config(spec_training: dict[str, Any] | None, config_file: str | Path | None,
                   flags: dict[str, Any]) -> TrainConfig:
    """Defaults, then the spec's ``training:`` section, then ``config_file``, then flags."""
    cfg = TrainConfig()
    if spec_training:
        cfg = merge(cfg, spec_training, "spec 'training' section")
    if config_file is not None:
        from cnncli.fileio import FileReadError, read_text
        from cnncli.yamlsrc import load_yaml

        path = Path(config_file)
        try:
            text = read_text(path, what="training config")
        except FileReadError as exc:
            raise CnnError(f"{path}: cannot read training config ({exc.reason})") from None
        data = load_yaml(text, str(path))
        if isinstance(data, dict) and "training" in data and len(data) == 1:
            data = data["training"]
        if not isinstance(data, dict):
            raise CnnError(f"{path}: a training config must be a mapping of settings")
        cfg = merge(cfg, data, str(path))
    given = {k: v for k, v in flags.items() if v is not None}
    if given:
        cfg = merge(cfg, given, "command line")
    return finalize(cfg)


def finalize(cfg: TrainConfig) -> TrainConfig:
    """Check the optimizer and schedule settings now (before any data is read) and write the
    optimizer's default momentum into the config, so that the saved config is the one used."""
    from cnncli.optim import make_optimizer, make_schedule

    settings = cfg.optimizer_settings()
    make_optimizer(cfg.optimizer, **settings)
    make_schedule(cfg.schedule, cfg.lr, step_size=cfg.step_size, gamma=cfg.gamma,
                  min_lr=cfg.min_lr, total=cfg.epochs, warmup=cfg.warmup)
    if cfg.momentum is None and "momentum" in settings:  # sgd 0.9, rmsprop 0
        cfg.momentum = 0.0 if settings["momentum"] is None else settings["momentum"]
    return cfg
