"""Weight initialisation that trains: He for the ReLU family, Glorot otherwise."""

from __future__ import annotations

from typing import Any

RELU_FAMILY = frozenset({"relu", "relu6", "leaky_relu", "elu"})


def init_weight(
    rng: Any,
    shape: tuple[int, ...],
    fan_in: int,
    fan_out: int,
    nonlinearity: str | None,
    dtype: Any,
) -> Any:
    """He normal, std = sqrt(2/fan_in), before ReLU-like units; Glorot uniform,
    limit = sqrt(6/(fan_in + fan_out)), before tanh, sigmoid, softmax or nothing."""
    import numpy as np

    if nonlinearity in RELU_FAMILY:
        w = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
    else:
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        w = rng.uniform(-limit, limit, size=shape)
    return w.astype(dtype)


def zeros(shape: tuple[int, ...], dtype: Any) -> Any:
    import numpy as np

    return np.zeros(shape, dtype=dtype)


def ones(shape: tuple[int, ...], dtype: Any) -> Any:
    import numpy as np

    return np.ones(shape, dtype=dtype)
