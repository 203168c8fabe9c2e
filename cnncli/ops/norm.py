"""Batch normalisation and local response normalisation (across channels)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from cnncli.errors import ShapeMismatchError


class BatchNormCache(NamedTuple):
    """What batchnorm_backward needs: the input ``x`` (a reference, not a copy: the
    normalised values and the fused activation's mask are recomputed from it, which keeps
    one array per layer less alive than storing them), the per-channel ``mean`` and
    ``inv_std`` = 1/sqrt(var + eps) (batch statistics in training, running ones in eval),
    ``scale`` = gamma * inv_std and ``shift`` = beta - mean * scale (y = act(x * scale +
    shift)), the mode, the activation and ``count``, the values per channel of the whole
    batch."""

    x: np.ndarray
    mean: np.ndarray
    inv_std: np.ndarray
    scale: np.ndarray
    shift: np.ndarray
    training: bool
    act: str | None
    count: int

    @property
    def xhat(self) -> np.ndarray:
        """The normalised input (x - mean) * inv_std, recomputed."""
        shape = (1, -1, 1, 1) if self.x.ndim == 4 else (1, -1)
        return (self.x - self.mean.reshape(shape)) * self.inv_std.reshape(shape)


#: Activations that batchnorm can apply in its output pass (``act=``).
BN_ACTIVATIONS = {"relu": 1, "relu6": 2}


def _bn_view(x: np.ndarray) -> np.ndarray:
    """x as [N, C, P] (P = H*W, or 1 for [N, D] vectors)."""
    if x.ndim == 2:
        return x.reshape(x.shape[0], x.shape[1], 1)
    if x.ndim == 4:
        return x.reshape(x.shape[0], x.shape[1], -1)
    raise ShapeMismatchError(f"batchnorm expects x [N, D] or [N, C, H, W]; got shape {np.shape(x)}")


def _alone(tag: str, value):
    """The gather of a batch that is not split: its only part's value."""
    return [value]


def _combine_stats(parts: list[tuple[int, np.ndarray]]) -> tuple[int, np.ndarray, np.ndarray]:
    """(count, mean, M2) over all parts from each part's (count, [C, 3] shifted sums), by
    Chan et al.'s pairwise update in part order (deterministic, well conditioned)."""
    total = 0
    mean = m2 = None
    for m, st in parts:
        if m == 0:
            continue
        pm = st[:, 0] + st[:, 1] / m
        pm2 = np.maximum(st[:, 2] - st[:, 1] ** 2 / m, 0.0)
        if mean is None:
            total, mean, m2 = m, pm, pm2
            continue
        both = total + m
        delta = pm - mean
        mean = mean + delta * (m / both)
        m2 = m2 + pm2 + delta ** 2 * (total * m / both)
        total = both
    return total, mean, m2


def batchnorm_forward(
    x: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    training: bool,
    momentum: float,
    eps: float,
    *,
    act: str | None = None,
    gather=None,
) -> tuple[np.ndarray, BatchNormCache, np.ndarray, np.ndarray]:
    """Per-channel (per-feature for 2-D x) normalisation: ``y = act(gamma * xhat + beta)``.

    Training normalises with the batch mean and the *biased* variance (divide by m, the
    number of values per channel) and returns running stats updated PyTorch-style:
    ``new = (1 - momentum) * old + momentum * batch_stat`` with the *unbiased* variance
    (``var * m / (m - 1)``). Eval normalises with the running stats and returns them
    unchanged (the same objects). The inputs are never modified. ``act`` (relu, relu6)
    is applied in the same pass.

    ``gather(tag, value) -> [value of each part]``: when the engine runs a batch in
    parts, one call per part, each seeing its own images, and the statistics are those of
    the whole batch (each part's shifted sums, combined in part order).
    """
    from cnncli.ops import _norm_kernels as kern

    if not isinstance(x, np.ndarray) or x.dtype not in (np.float32, np.float64):
        raise ShapeMismatchError(f"batchnorm expects a float32/float64 array x; got {type(x)}")
    if act is not None and act not in BN_ACTIVATIONS:
        raise ShapeMismatchError(f"batchnorm: act must be one of {tuple(BN_ACTIVATIONS)} or "
                                 f"None; got {act!r}")
    x3 = _bn_view(np.ascontiguousarray(x))
    c = x3.shape[1]
    momentum, eps = float(momentum), float(eps)  # Python floats never upcast float32
    params = {"gamma": gamma, "beta": beta, "running_mean": running_mean,
              "running_var": running_var}
    for name, arr in params.items():
        if np.shape(arr) != (c,):
            raise ShapeMismatchError(
                f"batchnorm: {name} must have shape ({c},) for x {x.shape}; got {np.shape(arr)}"
            )
    gather = gather or _alone
    g64, b64 = gamma.astype(np.float64), beta.astype(np.float64)
    if training:
        st = np.empty((c, 3), dtype=np.float64)
        kern.bn_partial_stats(x3, st)
        m, mean, m2 = _combine_stats(gather("stats", (x3.shape[0] * x3.shape[2], st)))
        if m < 2:
            raise ShapeMismatchError(
                f"batchnorm in training needs more than one value per channel; got x {x.shape}"
            )
        var = m2 / m
        inv = 1.0 / np.sqrt(var + eps)
        new_mean = ((1 - momentum) * running_mean + momentum * mean).astype(
            running_mean.dtype, copy=False)
        new_var = ((1 - momentum) * running_var + momentum * var * (m / (m - 1))).astype(
            running_var.dtype, copy=False)
    else:
        m = 0
        mean = running_mean.astype(np.float64)
        inv = 1.0 / np.sqrt(running_var.astype(np.float64) + eps)
        new_mean, new_var = running_mean, running_var
    scale = g64 * inv
    scale_x, shift_x = scale.astype(x.dtype), (b64 - mean * scale).astype(x.dtype)
    y = np.empty_like(x3)
    kern.bn_apply(x3, scale_x, shift_x, BN_ACTIVATIONS.get(act, 0), y)
    cache = BatchNormCache(x3.reshape(x.shape), mean.astype(x.dtype), inv.astype(x.dtype),
                           scale_x, shift_x, bool(training), act, m)
    return y.reshape(x.shape), cache, new_mean, new_var


def batchnorm_backward(
    dy: np.ndarray, cache: BatchNormCache, *, gather=None, need_grads: bool = True
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(dx, dgamma, dbeta). Training: ``dx = gamma*inv_std * (dz - mean(dz) -
    xhat*mean(dz*xhat))`` (the statistics depend on x); eval: ``dx = dz*gamma*inv_std``,
    dz being dy through the fused activation. With ``gather`` (a batch run in parts) the
    means are over the whole batch, and dgamma, dbeta are this part's share of the sums
    (the engine adds the parts' gradients). ``need_grads=False`` in eval mode (a frozen
    batchnorm) skips the sums: dgamma = dbeta = None."""
    from cnncli.ops import _norm_kernels as kern

    x, mean, inv, scale, shift, training, act, count = cache
    if not isinstance(dy, np.ndarray) or dy.shape != x.shape:
        raise ShapeMismatchError(
            f"batchnorm_backward: dy must have shape {x.shape}; got {np.shape(dy)}"
        )
    if dy.dtype != x.dtype:
        dy = dy.astype(x.dtype)
    gather = gather or _alone
    x3 = _bn_view(x)
    d3 = _bn_view(np.ascontiguousarray(dy))
    c = x3.shape[1]
    code = BN_ACTIVATIONS.get(act, 0)
    if not need_grads and not training:
        zero = np.zeros(c, dtype=x.dtype)
        dx = np.empty_like(x3)
        kern.bn_backward_apply(d3, x3, mean, inv, scale, shift, zero, zero, code, dx)
        return dx.reshape(x.shape), None, None
    sums = np.zeros((c, 2), dtype=np.float64)
    kern.bn_backward_sums(d3, x3, mean, inv, scale, shift, code, sums)
    dbeta, dgamma = sums[:, 0].astype(x.dtype), sums[:, 1].astype(x.dtype)
    if training:
        total = gather("grad", sums)
        whole = total[0].copy()
        for s in total[1:]:
            whole += s
        b, c2 = (whole[:, 0] / count).astype(x.dtype), (whole[:, 1] / count).astype(x.dtype)
    else:
        b = c2 = np.zeros(c, dtype=x.dtype)
    dx = np.empty_like(x3)
    kern.bn_backward_apply(d3, x3, mean, inv, scale, shift, b, c2, code, dx)
    return dx.reshape(x.shape), dgamma, dbeta


class LRNCache(NamedTuple):
    """``x`` (reference), ``denom`` = k + alpha_eff * window sum of x**2, ``scale`` =
    denom**-beta, and the hyperparameters the backward pass needs."""

    x: np.ndarray
    denom: np.ndarray
    scale: np.ndarray
    size: int
    alpha_eff: float
    beta: float


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
