"""Batch normalisation and local response normalisation (across channels)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from cnncli.errors import ShapeMismatchError


class BatchNormCache(NamedTuple):
    """``xhat`` (normalised input), ``inv_std`` = 1/sqrt(var + eps) per channel (batch var
    in training, running var in eval), ``gamma``, and the reduction axes."""

    xhat: np.ndarray
    inv_std: np.ndarray
    gamma: np.ndarray
    training: bool
    axes: tuple[int, ...]


class LRNCache(NamedTuple):
    """``x`` (reference), ``denom`` = k + alpha_eff * window sum of x**2, ``scale`` =
    denom**-beta, and the hyperparameters the backward pass needs."""

    x: np.ndarray
    denom: np.ndarray
    scale: np.ndarray
    size: int
    alpha_eff: float
    beta: float


def _bn_axes(x: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if x.ndim == 2:
        return (0,), (1, x.shape[1])
    if x.ndim == 4:
        return (0, 2, 3), (1, x.shape[1], 1, 1)
    raise ShapeMismatchError(f"batchnorm expects x [N, D] or [N, C, H, W]; got shape {np.shape(x)}")


def batchnorm_forward(
    x: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    training: bool,
    momentum: float,
    eps: float,
) -> tuple[np.ndarray, BatchNormCache, np.ndarray, np.ndarray]:
    """Per-channel (per-feature for 2-D x) normalisation: ``y = gamma * xhat + beta``.

    Training normalises with the batch mean and the *biased* variance (divide by m, the
    number of values per channel) and returns running stats updated PyTorch-style:
    ``new = (1 - momentum) * old + momentum * batch_stat`` with the *unbiased* variance
    (``var * m / (m - 1)``). Eval normalises with the running stats and returns them
    unchanged (the same objects). The inputs are never modified.
    """
    if not isinstance(x, np.ndarray) or x.dtype not in (np.float32, np.float64):
        raise ShapeMismatchError(f"batchnorm expects a float32/float64 array x; got {type(x)}")
    axes, bshape = _bn_axes(x)
    c = x.shape[1]
    momentum, eps = float(momentum), float(eps)  # Python floats never upcast float32
    params = {
        "gamma": gamma,
        "beta": beta,
        "running_mean": running_mean,
        "running_var": running_var,
    }
    for name, arr in params.items():
        if np.shape(arr) != (c,):
            raise ShapeMismatchError(
                f"batchnorm: {name} must have shape ({c},) for x {x.shape}; got {np.shape(arr)}"
            )
    g = gamma.astype(x.dtype, copy=False).reshape(bshape)
    b = beta.astype(x.dtype, copy=False).reshape(bshape)
    if training:
        m = x.size // c
        if m < 2:
            raise ShapeMismatchError(
                f"batchnorm in training needs more than one value per channel; got x {x.shape}"
            )
        mean = x.mean(axis=axes, keepdims=True)
        xc = x - mean
        var = np.mean(np.square(xc), axis=axes, keepdims=True)
        inv_std = 1.0 / np.sqrt(var + eps)
        xhat = np.multiply(xc, inv_std, out=xc)
        new_mean = (1 - momentum) * running_mean + momentum * mean.reshape(c)
        new_var = (1 - momentum) * running_var + momentum * var.reshape(c) * (m / (m - 1))
        new_mean = new_mean.astype(running_mean.dtype, copy=False)
        new_var = new_var.astype(running_var.dtype, copy=False)
    else:
        rm = running_mean.astype(x.dtype, copy=False).reshape(bshape)
        inv_std = 1.0 / np.sqrt(running_var.astype(x.dtype, copy=False).reshape(bshape) + eps)
        xhat = (x - rm) * inv_std
        new_mean, new_var = running_mean, running_var
    y = xhat * g + b
    return y, BatchNormCache(xhat, inv_std, g, bool(training), axes), new_mean, new_var


def batchnorm_backward(
    dy: np.ndarray, cache: BatchNormCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dx, dgamma, dbeta). Training: ``dx = gamma*inv_std * (dy - mean(dy) -
    xhat*mean(dy*xhat))`` (the statistics depend on x); eval: ``dx = dy*gamma*inv_std``."""
    xhat, inv_std, g, training, axes = cache
    if not isinstance(dy, np.ndarray) or dy.shape != xhat.shape:
        raise ShapeMismatchError(
            f"batchnorm_backward: dy must have shape {xhat.shape}; got {np.shape(dy)}"
        )
    c = xhat.shape[1]
    dbeta = dy.sum(axis=axes, keepdims=True)
    dgamma = np.sum(dy * xhat, axis=axes, keepdims=True)
    if training:
        m = xhat.size // c
        dx = dy - dbeta / m
        dx -= xhat * (dgamma / m)
        dx *= g * inv_std
    else:
        dx = dy * (g * inv_std)
    return dx, dgamma.reshape(c), dbeta.reshape(c)


# ---------------------------------------------------------------------------------------
# local response normalisation
# ---------------------------------------------------------------------------------------


def _channel_window_sum(a: np.ndarray, before: int, after: int) -> np.ndarray:
    """out[:, c] = sum of a[:, c'] for c' in [c - before, c + after] ∩ [0, C)."""
    c = a.shape[1]
    out = a.copy()
    for d in range(1, before + 1):
        if d < c:
            out[:, d:] += a[:, : c - d]
    for d in range(1, after + 1):
        if d < c:
            out[:, : c - d] += a[:, d:]
    return out


def lrn_forward(
    x: np.ndarray, size: int, alpha: float, beta: float, k: float, alpha_over_size: bool
) -> tuple[np.ndarray, LRNCache]:
    """Local response normalisation across channels (axis 1):

        y_c = x_c / (k + alpha_eff * sum_{c' in window(c)} x_c'**2) ** beta

    with ``window(c) = [c - size//2, c + (size-1)//2]`` clipped to the channels, and
    ``alpha_eff = alpha/size`` (``alpha_over_size=True``, PyTorch) or ``alpha`` (the
    AlexNet paper and most textbooks).
    """
    if not isinstance(x, np.ndarray) or x.ndim < 2 or x.dtype not in (np.float32, np.float64):
        raise ShapeMismatchError(
            f"lrn expects a float array with channels on axis 1; got shape {np.shape(x)}"
        )
    size = int(size)
    if size < 1:
        raise ShapeMismatchError(f"lrn size must be >= 1; got {size}")
    alpha, beta, k = float(alpha), float(beta), float(k)  # Python floats never upcast float32
    alpha_eff = alpha / size if alpha_over_size else alpha
    denom = _channel_window_sum(np.square(x), size // 2, (size - 1) // 2)
    denom *= alpha_eff
    denom += k
    scale = denom ** (-beta)
    return x * scale, LRNCache(x, denom, scale, size, alpha_eff, beta)


def lrn_backward(dy: np.ndarray, cache: LRNCache) -> np.ndarray:
    """``dx_j = dy_j*s_j**-beta - 2*alpha_eff*beta*x_j * sum_{i: j in window(i)}
    dy_i*x_i*s_i**(-beta-1)`` with s the denominator base; the transposed window of j is
    ``[j - (size-1)//2, j + size//2]``."""
    x, denom, scale, size, alpha_eff, beta = cache
    if not isinstance(dy, np.ndarray) or dy.shape != x.shape:
        raise ShapeMismatchError(f"lrn_backward: dy must have shape {x.shape}; got {np.shape(dy)}")
    t = dy * x * scale / denom
    back = _channel_window_sum(t, (size - 1) // 2, size // 2)
    back *= x
    back *= -2 * alpha_eff * beta
    back += dy * scale
    return back
