"""Convolution arithmetic: the pure integer rules every layer's shape comes from.

These functions never allocate arrays. The shape calculator (``cnn shapes``) and the NumPy
engine both call them, so the two cannot disagree. Notation follows the lecture notes:
W2 = floor((W1 + 2P - F) / S) + 1, with a dilated kernel's extent F' = D*(F - 1) + 1.
"""

from __future__ import annotations

import math


def effective_kernel(kernel: int, dilation: int = 1) -> int:
    """Extent of a dilated kernel: D*(F-1) + 1 (``F`` itself when D = 1)."""
    return dilation * (kernel - 1) + 1


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    """floor((W + 2P - F') / S) + 1; non-positive when the kernel does not fit."""
    return (size + 2 * padding - effective_kernel(kernel, dilation)) // stride + 1


def conv_dropped(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    """Rows/columns that floor() leaves unread at the end: (W + 2P - F') mod S."""
    return (size + 2 * padding - effective_kernel(kernel, dilation)) % stride


def deconv_output_size(
    size: int, kernel: int, stride: int, padding: int, output_padding: int = 0, dilation: int = 1
) -> int:
    """Transposed convolution: (W - 1)*S - 2P + D*(F - 1) + output_padding + 1."""
    return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def pool_output_size(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool) -> int:
    """Pooling output size, PyTorch's rule.

    floor (or ceil) of (W + 2P - F)/S, plus one; in ceil mode the last window must start
    inside the input or the left padding, otherwise it is dropped.
    """
    span = size + 2 * padding - kernel
    if not ceil_mode:
        return span // stride + 1
    out = math.ceil(span / stride) + 1 if span >= 0 else span // stride + 1
    if (out - 1) * stride >= size + padding:
        out -= 1
    return out


def same_padding(kernel: int, dilation: int = 1) -> int:
    """Half ("same") padding (F' - 1)/2, which keeps W2 = W1 at stride 1 for odd F'."""
    return (effective_kernel(kernel, dilation) - 1) // 2


def full_padding(kernel: int, dilation: int = 1) -> int:
    """Full padding F' - 1: every partial overlap is computed, W2 = W1 + F' - 1."""
    return effective_kernel(kernel, dilation) - 1
