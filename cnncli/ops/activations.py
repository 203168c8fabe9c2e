"""Activation functions, forward and backward, looked up by name.

Subgradients at the kinks follow PyTorch: relu and relu6 pass 0 at x == 0 (and relu6 at
x == 6), leaky_relu passes the slope at x == 0. Every function keeps the input dtype.

``forward(name, x, out=None, **hp)`` may write into a caller-supplied ``out`` buffer, which
may be ``x`` itself (in-place): the cache then keeps what it needs (usually ``y``) rather
than ``x``. Caches hold references, so the caller must not modify ``y`` (or ``x`` where it
is kept) before the backward pass. ``identity`` returns ``x`` itself and its backward
returns ``dy`` itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from cnncli.errors import ShapeMismatchError


def _fused(kernel: str, dy: np.ndarray, y: np.ndarray, out: np.ndarray | None):
    """Run the one-pass Numba derivative ``kernel`` when the arrays allow it, else None."""
    if (
        dy.dtype != y.dtype
        or dy.shape != y.shape
        or not (dy.flags.c_contiguous and y.flags.c_contiguous)
        or (out is not None and not out.flags.c_contiguous)
    ):
        return None
    from cnncli.ops import _kernels as kern

    if out is None:
        out = np.empty_like(dy)
    getattr(kern, kernel)(dy.reshape(-1), y.reshape(-1), out.reshape(-1))  # 1-D: one compile
    return out


class ActivationCache(NamedTuple):
    """``x`` or ``y`` (whichever the derivative needs; the other is None) and the
    hyperparameter (leaky_relu slope, elu alpha; 0.0 for the others)."""

    x: np.ndarray | None
    y: np.ndarray | None
    param: float


def _relu(x, out, **_):
    y = np.maximum(x, 0, out=out)
    return y, ActivationCache(None, y, 0.0)


def _relu_back(dy, c, out):
    fused = _fused("relu_backward", dy, c.y, out)
    return fused if fused is not None else np.multiply(dy, c.y > 0, out=out)


def _relu6(x, out, **_):
    y = np.clip(x, 0, 6, out=out)
    return y, ActivationCache(None, y, 0.0)


def _relu6_back(dy, c, out):
    # x in (0, 6) exactly when y in (0, 6): zero gradient at both kinks, as in PyTorch
    return np.multiply(dy, (c.y > 0) & (c.y < 6), out=out)


def _leaky_relu(x, out, slope: float = 0.01, **_):
    slope = float(slope)
    keep_x = None if slope >= 0 else x.copy()
    pos = x > 0
    if out is None:
        y = np.where(pos, x, x * slope)
    else:
        if out is not x:
            np.copyto(out, x, where=pos)
        y = np.multiply(x, slope, out=out, where=~pos)
    # with slope >= 0, x > 0 exactly when y > 0, so y decides the branch in backward
    return y, ActivationCache(keep_x, None if keep_x is not None else y, slope)


def _leaky_relu_back(dy, c, out):
    pos = (c.x > 0) if c.x is not None else (c.y > 0)
    if out is None:
        return np.where(pos, dy, dy * c.param)
    if out is not dy:
        np.copyto(out, dy, where=pos)
    return np.multiply(dy, c.param, out=out, where=~pos)


def _sigmoid(x, out, **_):
    # exp(-|x|) is in (0, 1], so neither branch can overflow
    pos = x >= 0
    e = np.exp(-np.abs(x))
    r = 1 / (1 + e)
    y = np.multiply(e, r, out=out)  # e/(1+e) = sigmoid(x) for x < 0
    np.copyto(y, r, where=pos)
    return y, ActivationCache(None, y, 0.0)


def _sigmoid_back(dy, c, out):
    fused = _fused("sigmoid_backward", dy, c.y, out)
    return fused if fused is not None else np.multiply(dy, c.y * (1 - c.y), out=out)


def _tanh(x, out, **_):
    y = np.tanh(x, out=out)
    return y, ActivationCache(None, y, 0.0)


def _tanh_back(dy, c, out):
    fused = _fused("tanh_backward", dy, c.y, out)
    return fused if fused is not None else np.multiply(dy, 1 - c.y * c.y, out=out)


def _elu(x, out, alpha: float = 1.0, **_):
    alpha = float(alpha)
    keep_x = None if alpha > 0 else x.copy()
    pos = x > 0
    neg = np.expm1(np.minimum(x, 0))
    neg *= alpha
    if out is None:
        y = np.where(pos, x, neg)
    else:
        if out is not x:
            np.copyto(out, x, where=pos)
        np.copyto(out, neg, where=~pos)
        y = out
    # with alpha > 0, x > 0 exactly when y > 0, and exp(x) = y/alpha + 1 for x <= 0
    return y, ActivationCache(keep_x, y if keep_x is None else None, alpha)


def _elu_back(dy, c, out):
    alpha = c.param
    if c.x is not None:
        slope = np.where(c.x > 0, 1, alpha * np.exp(np.minimum(c.x, 0)))
    else:
        slope = np.where(c.y > 0, 1, c.y + alpha)
    return np.multiply(dy, slope, out=out)


def _softmax(x, out, **_):
    if x.ndim < 2:
        raise ShapeMismatchError(f"softmax needs x with a class axis 1; got shape {x.shape}")
    z = np.subtract(x, x.max(axis=1, keepdims=True), out=out)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z, ActivationCache(None, z, 0.0)


def _softmax_back(dy, c, out):
    y = c.y
    s = np.sum(dy * y, axis=1, keepdims=True)
    return np.multiply(y, dy - s, out=out)


def _identity(x, out, **_):
    if out is None or out is x:
        return x, ActivationCache(None, None, 0.0)
    np.copyto(out, x)
    return out, ActivationCache(None, None, 0.0)


def _identity_back(dy, c, out):
    if out is None or out is dy:
        return dy
    np.copyto(out, dy)
    return out


_Forward = Callable[..., tuple[np.ndarray, ActivationCache]]
_Backward = Callable[[np.ndarray, ActivationCache, "np.ndarray | None"], np.ndarray]

_TABLE: dict[str, tuple[_Forward, _Backward]] = {
    "relu": (_relu, _relu_back),
    "relu6": (_relu6, _relu6_back),
    "leaky_relu": (_leaky_relu, _leaky_relu_back),
    "sigmoid": (_sigmoid, _sigmoid_back),
    "tanh": (_tanh, _tanh_back),
    "elu": (_elu, _elu_back),
    "softmax": (_softmax, _softmax_back),
    "identity": (_identity, _identity_back),
    "linear": (_identity, _identity_back),
}

#: Every activation name that ``forward``/``backward`` accept.
ACTIVATIONS: tuple[str, ...] = tuple(_TABLE)

#: The hyperparameters each activation takes, with their defaults.
HYPERPARAMETERS: dict[str, dict[str, float]] = {
    "leaky_relu": {"slope": 0.01},
    "elu": {"alpha": 1.0},
}


def _lookup(name: str) -> tuple[_Forward, _Backward]:
    try:
        return _TABLE[name]
    except KeyError:
        raise ShapeMismatchError(
            f"unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}"
        ) from None


def forward(
    name: str, x: np.ndarray, out: np.ndarray | None = None, **hp: float
) -> tuple[np.ndarray, ActivationCache]:
    """(y, cache) for activation ``name`` (see ACTIVATIONS); softmax is over axis 1.

    Hyperparameters: ``slope`` for leaky_relu (default 0.01; ``negative_slope`` is
    accepted too), ``alpha`` for elu (default 1.0).
    """
    fwd, _ = _lookup(name)
    if not isinstance(x, np.ndarray) or x.dtype not in (np.float32, np.float64):
        raise ShapeMismatchError(f"{name} expects a float32/float64 array; got {type(x)}")
    if out is not None and (out.shape != x.shape or out.dtype != x.dtype):
        raise ShapeMismatchError(
            f"{name}: out must be {x.dtype} {x.shape}; got {out.dtype} {out.shape}"
        )
    allowed = HYPERPARAMETERS.get(name, {})
    if "negative_slope" in hp and name == "leaky_relu":
        hp["slope"] = hp.pop("negative_slope")
    unknown = set(hp) - set(allowed)
    if unknown:
        raise ShapeMismatchError(
            f"{name} takes {sorted(allowed) or 'no hyperparameters'}; got {sorted(unknown)}"
        )
    return fwd(x, out, **hp)


def backward(
    name: str, dy: np.ndarray, cache: ActivationCache, out: np.ndarray | None = None
) -> np.ndarray:
    """dx = dy * f'(x) (softmax: the full Jacobian-vector product over axis 1)."""
    _, bwd = _lookup(name)
    ref = cache.y if cache.y is not None else cache.x
    if ref is not None and (not isinstance(dy, np.ndarray) or dy.shape != ref.shape):
        raise ShapeMismatchError(
            f"{name} backward: dy must have shape {ref.shape}; got {np.shape(dy)}"
        )
    return bwd(dy, cache, out)
