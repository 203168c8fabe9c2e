"""Inverted dropout: ``y = x * mask / (1 - p)`` in training, the identity at eval."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from cnncli.errors import ShapeMismatchError


class DropoutCache(NamedTuple):
    """``scaled_mask`` = mask / (1 - p) in x's dtype (0 where dropped), or None when the
    layer was the identity (eval mode or p == 0)."""

    scaled_mask: np.ndarray | None


def dropout_forward(
    x: np.ndarray,
    p: float,
    rng: np.random.Generator | None,
    training: bool,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, DropoutCache]:
    """Drop each element with probability ``p`` (keep with 1 - p) and scale the kept ones
    by 1/(1-p), so the expected output equals x and eval needs no rescaling.

    ``mask`` (0/1 or bool, shape of x; 1 = keep) overrides sampling, which otherwise draws
    from ``rng`` (required then). At eval time, or with p == 0, ``x`` itself is returned.
    """
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ShapeMismatchError(f"dropout p must be in [0, 1]; got {p}")
    if not isinstance(x, np.ndarray) or x.dtype not in (np.float32, np.float64):
        raise ShapeMismatchError(f"dropout expects a float32/float64 array; got {type(x)}")
    if not training or (p == 0.0 and mask is None):
        return x, DropoutCache(None)
    if mask is None:
        if rng is None:
            raise ShapeMismatchError("dropout in training needs a numpy Generator (rng)")
        keep = rng.random(x.shape, dtype=x.dtype) >= p  # P(keep) = 1 - p
    else:
        if np.shape(mask) != x.shape:
            raise ShapeMismatchError(
                f"dropout mask must have the shape of x {x.shape}; got {np.shape(mask)}"
            )
        keep = np.asarray(mask) != 0
    scale = 0.0 if p == 1.0 else 1.0 / (1.0 - p)
    scaled_mask = keep.astype(x.dtype)
    scaled_mask *= scale
    return x * scaled_mask, DropoutCache(scaled_mask)


def dropout_backward(dy: np.ndarray, cache: DropoutCache) -> np.ndarray:
    """``dx = dy * mask / (1 - p)``; ``dy`` itself when the forward pass was the identity."""
    if cache.scaled_mask is None:
        return dy
    if not isinstance(dy, np.ndarray) or dy.shape != cache.scaled_mask.shape:
        raise ShapeMismatchError(
            f"dropout_backward: dy must have shape {cache.scaled_mask.shape}; got {np.shape(dy)}"
        )
    return dy * cache.scaled_mask
