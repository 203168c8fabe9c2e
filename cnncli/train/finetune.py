"""Fine-tuning: start a new run from the weights of an old one (``cnn train --init-from``).

Every parameter and buffer (batchnorm's running statistics) of the new model whose dotted
name and shape match an array of the old checkpoint is copied; the others keep their
fresh initialisation (a new head) or are reported as skipped when the name matches but the
shape does not (a head with another number of classes). Unlike ``--resume`` only the weights
come over: the optimizer state, the epoch count and the random streams start fresh.

The old checkpoint is only read (``load_checkpoint`` opens it read-only), and the training
loop lists it, and its run folder, among the inputs no output may alias.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnncli.errors import DataError

__all__ = ["InitReport", "apply_init", "open_init"]


@dataclass
class InitReport:
    """What ``apply_init`` did, one row per layer with arrays: ``(layer, status, detail)``
    where status is copied, fresh or skipped (a shape differs); and the old checkpoint's
    arrays that the new model has no use for."""

    source: Path
    rows: list[tuple[str, str, str]] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"source": str(self.source), "rows": [list(r) for r in self.rows],
                "copied": len(self.copied), "fresh": len(self.fresh),
                "skipped": len(self.skipped), "unused": len(self.unused)}


def open_init(source: str | Path) -> tuple[Path, dict[str, np.ndarray], dict[str, Any]]:
    """(checkpoint path, its model arrays by name, its meta): a run folder's best
    checkpoint (else its last) or a checkpoint file, fully checked, read-only."""
    from cnncli.train.loop import resolve_checkpoint
    from cnncli.train.meta import load_training_checkpoint

    path = resolve_checkpoint(source, prefer="best")
    arrays, meta, _spec = load_training_checkpoint(path, resume=False)
    model = {k[6:]: v for k, v in arrays.items() if k.startswith("model/")}
    return path, model, meta


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "scalar"


def apply_init(model: Any, arrays: dict[str, np.ndarray], source: Path) -> InitReport:
    """Copy the matching arrays into ``model`` (in place); DataError if none matches."""
    report = InitReport(source)
    by_layer: dict[str, list[str]] = {}
    for name in model.state_dict():
        by_layer.setdefault(name.rsplit(".", 1)[0], []).append(name)
    for layer, names in by_layer.items():
        got, bad = [], []
        for name in names:
            target = model.get(name)
            old = arrays.get(name)
            if old is None:
                report.fresh.append(name)
            elif old.shape != target.shape:
                report.skipped.append(name)
                bad.append(f"{name.rsplit('.', 1)[1]} {_dims(old.shape)} -> "
                           f"{_dims(target.shape)}")
            else:
                got.append(name)
        if bad:
            report.rows.append((layer, "skipped", "shape differs: " + ", ".join(bad)))
        elif got and len(got) == len(names):
            report.rows.append((layer, "copied", ", ".join(n.rsplit(".", 1)[1] for n in got)))
        elif got:
            missing = [n.rsplit(".", 1)[1] for n in names if n not in got]
            report.rows.append((layer, "copied", f"partly: no {', '.join(missing)} in the "
                                "checkpoint (left fresh)"))
        else:
            report.rows.append((layer, "fresh", "not in the checkpoint"))
        report.copied += got
    known = set(model.state_dict())
    report.unused = [k for k in arrays if k not in known]
    if not report.copied:
        sample = ", ".join(list(arrays)[:3]) + (" ..." if len(arrays) > 3 else "")
        raise DataError(f"{source}: --init-from: no parameter of the new network matches one "
                        f"of the checkpoint's by name and shape (it holds {sample}); layer "
                        "names must be the same in both specs")
    for name in report.copied:
        model.set(name, arrays[name].astype(model.get(name).dtype, copy=False))
    return report
