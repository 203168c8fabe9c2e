"""Loss functions: each returns the scalar loss and its gradient in one pass."""

from __future__ import annotations

import numpy as np

from cnncli.errors import ShapeMismatchError


def softmax_cross_entropy(
    logits: np.ndarray, labels: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """(loss, dlogits, probs) for logits [N, K] and integer class labels [N].

    ``loss = mean_n(logsumexp(logits_n) - logits_n[label_n])``, computed from
    ``logits - max`` so it cannot overflow; ``dlogits = (probs - onehot(labels)) / N``.
    """
    if not isinstance(logits, np.ndarray) or logits.ndim != 2:
        raise ShapeMismatchError(
            f"softmax_cross_entropy expects logits [N, K]; got shape {np.shape(logits)}"
        )
    if logits.dtype not in (np.float32, np.float64):
        raise ShapeMismatchError(f"softmax_cross_entropy expects float logits; got {logits.dtype}")
    n, k = logits.shape
    labels = np.asarray(labels)
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise ShapeMismatchError(
            f"softmax_cross_entropy expects integer labels of shape ({n},); got "
            f"{labels.dtype} {labels.shape}"
        )
    if n and (labels.min() < 0 or labels.max() >= k):
        raise ShapeMismatchError(
            f"softmax_cross_entropy labels must be in [0, {k}); got {labels.min()}..{labels.max()}"
        )
    rows = np.arange(n)
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z)
    total = probs.sum(axis=1, keepdims=True)
    probs /= total
    loss = float(np.mean(np.log(total[:, 0]) - z[rows, labels])) if n else 0.0
    dlogits = probs.copy()
    dlogits[rows, labels] -= 1
    dlogits /= max(n, 1)
    return loss, dlogits, probs


def mse(pred: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    """(loss, dpred): ``loss = mean over ALL elements of (pred - target)**2`` (no 1/2),
    ``dpred = 2 * (pred - target) / pred.size``."""
    if not isinstance(pred, np.ndarray) or pred.dtype not in (np.float32, np.float64):
        raise ShapeMismatchError(f"mse expects a float pred array; got {type(pred)}")
    if np.shape(target) != pred.shape:
        raise ShapeMismatchError(
            f"mse: target must have the shape of pred {pred.shape}; got {np.shape(target)}"
        )
    diff = pred - np.asarray(target, dtype=pred.dtype)
    loss = float(np.mean(np.square(diff))) if diff.size else 0.0
    diff *= 2 / max(diff.size, 1)
    return loss, diff
