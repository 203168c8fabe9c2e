"""Image augmentation: pure transforms, sampled parameters, pipelines, folder runs, batches.

* :mod:`~cnncli.augment.functional`: deterministic transforms with explicit parameters.
* :mod:`~cnncli.augment.transforms`: the op registry (``OPS``), parameter sampling.
* :mod:`~cnncli.augment.pipeline`: ``--ops`` text, YAML files, presets, fused execution.
* :mod:`~cnncli.augment.io`: robust image reading, atomic writing.
* :mod:`~cnncli.augment.runner`: ``cnn augment``'s folder-to-folder run.
* :mod:`~cnncli.augment.batch`: on-the-fly augmentation of (N, C, H, W) float batches.

Importing this package is cheap; Numba kernels load on first use.
"""

from __future__ import annotations

from cnncli.augment.pipeline import PRESETS, Pipeline, parse_ops, preset
from cnncli.augment.transforms import OPS, PipelineError, describe_ops, make_op

__all__ = [
    "OPS",
    "PRESETS",
    "Pipeline",
    "PipelineError",
    "describe_ops",
    "make_op",
    "parse_ops",
    "preset",
]
