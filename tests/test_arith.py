"""Property tests for the pure convolution arithmetic in :mod:`cnncli.arith`.

Every rule is checked against an independent brute-force count of window positions, so the
closed-form formulas (W2 = floor((W1 + 2P - F')/S) + 1 and friends) are not tested against
themselves.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cnncli import arith

sizes = st.integers(min_value=1, max_value=96)
kernels = st.integers(min_value=1, max_value=11)
strides = st.integers(min_value=1, max_value=6)
paddings = st.integers(min_value=0, max_value=8)
dilations = st.integers(min_value=1, max_value=4)

#: Local settings (no global profile: other test modules keep theirs).
prop = settings(max_examples=150, deadline=None)


def brute_conv_positions(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Count the window starts 0, S, 2S, ... whose dilated taps all land in the padded input."""
    padded = size + 2 * padding
    count = 0
    start = 0
    while True:
        taps = [start + dilation * t for t in range(kernel)]
        if max(taps) >= padded:
            return count
        count += 1
        start += stride


def brute_pool_ceil(size: int, kernel: int, stride: int, padding: int) -> int:
    """Ceil-mode windows: keep sliding while part of the padded input is still unread,
    but never start a window in the right padding (PyTorch's rule)."""
    padded = size + 2 * padding
    count, start, covered_to = 0, 0, 0
    while start < size + padding and (count == 0 or covered_to < padded):
        count += 1
        covered_to = start + kernel
        start += stride
    return count


# -- effective kernel --------------------------------------------------------------------------


@prop
@given(kernels, dilations)
def test_effective_kernel_is_span_of_dilated_taps(kernel, dilation):
    taps = [dilation * t for t in range(kernel)]
    assert arith.effective_kernel(kernel, dilation) == taps[-1] - taps[0] + 1


@pytest.mark.parametrize(("f", "d", "expected"), [(3, 1, 3), (3, 2, 5), (5, 3, 13), (1, 7, 1)])
def test_effective_kernel_examples(f, d, expected):
    assert arith.effective_kernel(f, d) == expected


# -- convolution -------------------------------------------------------------------------------


@prop
@given(sizes, kernels, strides, paddings, dilations)
def test_conv_output_counts_valid_window_positions(size, kernel, stride, padding, dilation):
    assume(size + 2 * padding >= arith.effective_kernel(kernel, dilation))
    expected = brute_conv_positions(size, kernel, stride, padding, dilation)
    assert arith.conv_output_size(size, kernel, stride, padding, dilation) == expected


@prop
@given(sizes, kernels, strides, paddings, dilations)
def test_conv_output_matches_floor_formula(size, kernel, stride, padding, dilation):
    keff = dilation * (kernel - 1) + 1
    assume(size + 2 * padding >= keff)
    assert arith.conv_output_size(size, kernel, stride, padding, dilation) == (
        math.floor((size + 2 * padding - keff) / stride) + 1
    )


@prop
@given(st.data(), kernels, strides, dilations)
def test_conv_output_not_positive_when_kernel_does_not_fit(data, kernel, stride, dilation):
    keff = arith.effective_kernel(kernel, dilation)
    assume(keff >= 2)
    padding = data.draw(st.integers(0, (keff - 2) // 2))
    size = data.draw(st.integers(1, keff - 1 - 2 * padding))
    assert arith.conv_output_size(size, kernel, stride, padding, dilation) <= 0


@prop
@given(sizes, kernels, strides, paddings, dilations)
def test_conv_dropped_is_the_unread_tail(size, kernel, stride, padding, dilation):
    keff = arith.effective_kernel(kernel, dilation)
    assume(size + 2 * padding >= keff)
    out = brute_conv_positions(size, kernel, stride, padding, dilation)
    last_end = (out - 1) * stride + keff  # one past the last tap read
    dropped = arith.conv_dropped(size, kernel, stride, padding, dilation)
    assert dropped == size + 2 * padding - last_end
    assert 0 <= dropped < stride
    if stride == 1:
        assert dropped == 0


@prop
@given(sizes, st.integers(min_value=0, max_value=5), dilations)
def test_same_padding_keeps_size_at_stride_1_for_odd_kernels(size, half, dilation):
    kernel = 2 * half + 1
    p = arith.same_padding(kernel, dilation)
    assert p == (arith.effective_kernel(kernel, dilation) - 1) // 2
    assume(size + 2 * p >= arith.effective_kernel(kernel, dilation))
    assert arith.conv_output_size(size, kernel, 1, p, dilation) == size


@prop
@given(sizes, kernels, dilations)
def test_full_padding_gives_w_plus_f_minus_1(size, kernel, dilation):
    keff = arith.effective_kernel(kernel, dilation)
    p = arith.full_padding(kernel, dilation)
    assert p == keff - 1
    assert arith.conv_output_size(size, kernel, 1, p, dilation) == size + keff - 1


@prop
@given(sizes, kernels, strides, paddings)
def test_conv_output_never_grows_with_stride(size, kernel, stride, padding):
    assume(size + 2 * padding >= kernel)
    assert arith.conv_output_size(size, kernel, stride + 1, padding) <= arith.conv_output_size(
        size, kernel, stride, padding
    )


# -- transposed convolution --------------------------------------------------------------------


@prop
@given(sizes, kernels, strides, paddings, dilations)
def test_deconv_inverts_conv_size(size, kernel, stride, padding, dilation):
    """A transposed conv with the conv's F, S, P, D (and output_padding = the rows floor
    dropped) maps the conv's output size back to its input size."""
    keff = arith.effective_kernel(kernel, dilation)
    assume(size + 2 * padding >= keff)
    out = arith.conv_output_size(size, kernel, stride, padding, dilation)
    dropped = arith.conv_dropped(size, kernel, stride, padding, dilation)
    back = arith.deconv_output_size(out, kernel, stride, padding, dropped, dilation)
    assert back == size


@prop
@given(sizes, kernels, strides, paddings, dilations)
def test_conv_inverts_deconv_size(size, kernel, stride, padding, dilation):
    out = arith.deconv_output_size(size, kernel, stride, padding, 0, dilation)
    assume(out >= 1)
    assert arith.conv_output_size(out, kernel, stride, padding, dilation) == size


@prop
@given(sizes, kernels)
def test_deconv_stride1_no_padding_is_i_plus_k_minus_1(size, kernel):
    """The notes: o' = i' + (k - 1) for the transpose of a unit-stride, unpadded conv."""
    assert arith.deconv_output_size(size, kernel, 1, 0) == size + kernel - 1


@pytest.mark.parametrize(
    ("i", "f", "s", "p", "op", "expected"),
    [(14, 5, 2, 0, 1, 32), (16, 3, 2, 1, 1, 32), (4, 4, 2, 1, 0, 8), (7, 3, 1, 0, 0, 9)],
)
def test_deconv_examples(i, f, s, p, op, expected):
    assert arith.deconv_output_size(i, f, s, p, op) == expected


# -- pooling -----------------------------------------------------------------------------------


@prop
@given(sizes, kernels, strides, paddings)
def test_pool_floor_mode_is_conv_rule(size, kernel, stride, padding):
    assume(2 * padding <= kernel and size + 2 * padding >= kernel)
    assert arith.pool_output_size(size, kernel, stride, padding, False) == brute_conv_positions(
        size, kernel, stride, padding, 1
    )


@prop
@given(sizes, kernels, strides, paddings)
def test_pool_ceil_mode_counts_windows_starting_inside_input_or_left_padding(
    size, kernel, stride, padding
):
    assume(2 * padding <= kernel and size + 2 * padding >= kernel)
    assert arith.pool_output_size(size, kernel, stride, padding, True) == brute_pool_ceil(
        size, kernel, stride, padding
    )


@prop
@given(sizes, kernels, strides, paddings)
def test_pool_ceil_adds_at_most_one_window(size, kernel, stride, padding):
    assume(2 * padding <= kernel and size + 2 * padding >= kernel)
    floor_out = arith.pool_output_size(size, kernel, stride, padding, False)
    ceil_out = arith.pool_output_size(size, kernel, stride, padding, True)
    assert ceil_out - floor_out in (0, 1)
    if arith.conv_dropped(size, kernel, stride, padding) == 0:
        assert ceil_out == floor_out


@pytest.mark.parametrize(
    ("size", "k", "s", "p", "ceil", "expected"),
    [
        (7, 3, 1, 0, False, 5),  # the notes' 7x7 map, 3x3 pooling, stride 1
        (7, 3, 2, 0, False, 3),  # ... stride 2
        (6, 3, 2, 0, False, 2),
        (6, 3, 2, 0, True, 3),
        (112, 3, 2, 1, False, 56),  # ResNet stem max pool
        (5, 2, 2, 1, True, 3),  # last window would start in the right padding: dropped
        (55, 3, 2, 0, True, 27),  # AlexNet / GoogLeNet ceil pools
        (56, 3, 2, 0, True, 28),
    ],
)
def test_pool_examples(size, k, s, p, ceil, expected):
    assert arith.pool_output_size(size, k, s, p, ceil) == expected


# -- the notes' worked examples -----------------------------------------------------------------


def test_notes_worked_examples():
    assert arith.conv_output_size(32, 5, 1, 0) == 28
    assert arith.conv_output_size(32, 5, 2, 0) == 14
    assert arith.conv_dropped(32, 5, 2, 0) == 1
    assert arith.conv_output_size(32, 5, 1, arith.same_padding(5)) == 32
    assert arith.same_padding(5) == 2
    assert arith.conv_output_size(32, 5, 1, arith.full_padding(5)) == 36
    assert arith.full_padding(5) == 4
    assert arith.conv_output_size(5, 3, 1, 0) == 3  # "a 3x3 filter on a 5x5 input"
    assert arith.conv_output_size(5, 3, 1, arith.full_padding(3)) == 7
