"""Every fast op against its slow loop-based twin in cnncli.ops.reference, on random inputs
(hypothesis explores stride, padding, dilation, groups and sizes), plus centred finite
differences for the cases no golden file covers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cnncli.errors import ShapeMismatchError
from cnncli.ops import activations, conv, dropout, losses, norm, pool
from cnncli.ops import reference as ref
from cnncli.ops.options import EngineOptions, twin_options

SETTINGS = settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
ATOL = 1e-10


def close(a, b, atol=ATOL):
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, rtol=0, atol=atol)


@pytest.fixture(params=[1 << 30, 1], ids=["one-chunk", "chunk-per-image"])
def chunking(request):
    """Engine options with the whole batch in one chunk, or with one image per chunk (and
    Winograd images cut into bands of tile rows)."""
    big = request.param > 1
    return EngineOptions(chunk_bytes=request.param,
                         winograd_chunk_bytes=1 << 19 if big else 1 << 10,
                         winograd_dw_tiles=128 if big else 2)


def _algos(xs, ws, s, p, d, groups, dtype, opts):
    g = conv.geometry(xs[2:], ws, s, p, d, groups)
    return conv.candidates(g, xs[1], ws[0], dtype, opts)


# ---------------------------------------------------------------------------------------
# convolution
# ---------------------------------------------------------------------------------------

pairs = st.tuples


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cg, kg = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    s = draw(pairs(st.integers(1, 3), st.integers(1, 3)))
    p = draw(pairs(st.integers(0, 2), st.integers(0, 2)))
    d = draw(pairs(st.integers(1, 2), st.integers(1, 2)))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    n = draw(st.integers(1, 3))
    assume(h + 2 * p[0] >= d[0] * (kh - 1) + 1 and w + 2 * p[1] >= d[1] * (kw - 1) + 1)
    seed = draw(st.integers(0, 2**31 - 1))
    return (n, cg * groups, h, w), (kg * groups, cg, kh, kw), s, p, d, groups, seed


@SETTINGS
@given(case=conv_cases(), bias=st.booleans(), data=st.data())
def test_conv2d_matches_reference(chunking, case, bias, data):
    """Every kernel path that can run a conv (a random one of ``conv.candidates`` per
    example: forward, input-gradient and weight-gradient paths mixed) in float64."""
    xs, ws, s, p, d, groups, seed = case
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    b = rng.standard_normal(ws[0]) if bias else None
    algo = data.draw(st.sampled_from(_algos(xs, ws, s, p, d, groups, np.float64, chunking)))
    y, cache = conv.conv2d_forward(x, w, b, s, p, d, groups, algo=algo, options=chunking)
    assert cache.algo == algo
    close(y, ref.conv2d(x, w, b, s, p, d, groups))
    dy = rng.standard_normal(y.shape)
    dx, dw, db = conv.conv2d_backward(dy, cache)
    rdx, rdw, rdb = ref.conv2d_backward(dy, x, w, s, p, d, groups)
    close(dx, rdx)
    close(dw, rdw)
    if bias:
        close(db, rdb)
    else:
        assert db is None
    dx_skipped, dw2, _ = conv.conv2d_backward(dy, cache, need_dx=False)
    assert dx_skipped is None
    close(dw2, rdw)


@SETTINGS
@given(case=conv_cases(), data=st.data(), bias=st.booleans())
def test_conv_transpose2d_matches_reference(chunking, case, data, bias):
    xs, ws, s, p, d, groups, seed = case
    # output_padding must be smaller than the stride or the dilation
    op = data.draw(pairs(*(st.integers(0, max(si, di) - 1) for si, di in zip(s, d))))
    k_out, cg, kh, kw = ws
    w_shape = (xs[1], k_out // groups, kh, kw)  # [C_in, C_out/groups, kh, kw]
    ho = (xs[2] - 1) * s[0] - 2 * p[0] + d[0] * (kh - 1) + op[0] + 1
    wo = (xs[3] - 1) * s[1] - 2 * p[1] + d[1] * (kw - 1) + op[1] + 1
    assume(ho >= 1 and wo >= 1)
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal(xs), rng.standard_normal(w_shape)
    b = rng.standard_normal(k_out) if bias else None
    opts = data.draw(st.sampled_from([chunking, twin_options().with_(
        chunk_bytes=chunking.chunk_bytes)]))
    y, cache = conv.conv_transpose2d_forward(x, w, b, s, p, op, d, groups, options=opts)
    close(y, ref.conv_transpose2d(x, w, b, s, p, op, d, groups))
    dy = rng.standard_normal(y.shape)
    dx, dw, db = conv.conv_transpose2d_backward(dy, cache)
    rdx, rdw, rdb = ref.conv_transpose2d_backward(dy, x, w, s, p, op, d, groups)
    close(dx, rdx)
    close(dw, rdw)
    if bias:
        close(db, rdb)


@pytest.mark.parametrize(
    "xs, ws, s, p",
    [
        ((4, 1, 32, 32), (6, 1, 5, 5), 1, 0),  # LeNet conv1
        ((3, 6, 14, 14), (16, 6, 5, 5), 1, 0),  # LeNet conv2
        ((3, 16, 5, 5), (120, 16, 5, 5), 1, 0),  # LeNet conv3: dense fast path
        ((2, 8, 6, 6), (5, 8, 1, 1), 1, 0),  # pointwise fast path
        ((2, 3, 16, 16), (8, 3, 3, 3), 1, 1),  # same padding, wide im2col
        ((2, 3, 15, 16), (8, 3, 3, 3), 2, 1),  # strided im2col
    ],
)
def test_conv2d_float32_model_shapes(chunking, xs, ws, s, p):
    """The model shapes the engine runs, float32 end to end on every path that can run
    them, against float64."""
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])
    y64, c64 = conv.conv2d_forward(x, w, b, s, p)
    dy = rng.standard_normal(y64.shape)
    want = conv.conv2d_backward(dy, c64)
    for algo in _algos(xs, ws, (s, s), (p, p), (1, 1), 1, np.float32, chunking):
        y32, c32 = conv.conv2d_forward(x.astype("f4"), w.astype("f4"), b.astype("f4"), s, p,
                                       algo=algo, options=chunking)
        assert y32.dtype == np.float32
        np.testing.assert_allclose(y32, y64, rtol=1e-4, atol=1e-4, err_msg=algo.describe())
        for g32, g64 in zip(conv.conv2d_backward(dy.astype("f4"), c32), want):
            assert g32.dtype == np.float32
            np.testing.assert_allclose(g32, g64, rtol=1e-4, atol=1e-3, err_msg=algo.describe())


def test_conv_shape_errors():
    x = np.zeros((2, 3, 8, 8))
    with pytest.raises(ShapeMismatchError, match=r"x has 3 channels"):
        conv.conv2d_forward(x, np.zeros((4, 2, 3, 3)), None, 1, 0)
    with pytest.raises(ShapeMismatchError, match=r"b must have shape \(4,\)"):
        conv.conv2d_forward(x, np.zeros((4, 3, 3, 3)), np.zeros(5), 1, 0)
    with pytest.raises(ShapeMismatchError, match="float32"):
        conv.conv2d_forward(x, np.zeros((4, 3, 3, 3), np.float32), None, 1, 0)
    with pytest.raises(ShapeMismatchError, match="padded input"):
        conv.conv2d_forward(x, np.zeros((4, 3, 9, 9)), None, 1, 0)
    y, cache = conv.conv2d_forward(x, np.zeros((4, 3, 3, 3)), None, 1, 0)
    with pytest.raises(ShapeMismatchError, match=r"\(2, 4, 6, 6\)"):
        conv.conv2d_backward(np.zeros((2, 4, 5, 5)), cache)
    with pytest.raises(ShapeMismatchError, match="output_padding"):
        conv.deconv_output_size(4, 3, 2, 1, output_padding=2)


def test_conv_output_size_lecture_cases():
    assert conv.conv_output_size(32, 5, 1, 0) == 28
    assert conv.conv_output_size(32, 5, 2, 0) == 14
    assert conv.conv_output_size(32, 5, 1, 2) == 32  # half padding
    assert conv.conv_output_size(32, 5, 1, 4) == 36  # full padding
    assert conv.conv_output_size(7, 3, 3, 0) == 2
    assert conv.deconv_output_size(4, 4, 2, 1) == 8


# ---------------------------------------------------------------------------------------
# pooling
# ---------------------------------------------------------------------------------------


@st.composite
def pool_cases(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    s = draw(pairs(st.integers(1, 3), st.integers(1, 3)))
    p = draw(pairs(st.integers(0, kh // 2), st.integers(0, kw // 2)))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    assume(h + 2 * p[0] >= kh and w + 2 * p[1] >= kw)
    return (draw(st.integers(1, 2)), draw(st.integers(1, 3)), h, w), (kh, kw), s, p


@SETTINGS
@given(
    case=pool_cases(),
    kind=st.sampled_from(pool.POOL_KINDS),
    ceil_mode=st.booleans(),
    ties=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_pool2d_matches_reference(case, kind, ceil_mode, ties, seed):
    xs, k, s, p = case
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, xs).astype(float) if ties else rng.standard_normal(xs)
    y, cache = pool.pool2d_forward(x, kind, k, s, p, ceil_mode)
    ry, rarg = ref.pool2d(x, kind, k, s, p, ceil_mode)
    close(y, ry)
    assert y.shape[2] == pool.pool_output_size(xs[2], k[0], s[0], p[0], ceil_mode)
    if kind == "max":
        assert np.array_equal(cache.argmax, rarg), "first maximum in row-major order wins"
    dy = rng.standard_normal(y.shape)
    close(pool.pool2d_backward(dy, cache), ref.pool2d_backward(dy, x, kind, k, s, p, ceil_mode))


@pytest.mark.parametrize("kind", pool.POOL_KINDS)
@pytest.mark.parametrize("hw", [(6, 8), (7, 5), (2, 2)])
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("ties", [False, True])
def test_pool2d_2x2_fast_path_matches_reference(kind, hw, ceil_mode, ties):
    """2x2 windows at stride 2 take dedicated kernels when every window is complete."""
    rng = np.random.default_rng(hw[0] * 10 + hw[1])
    xs = (2, 3, *hw)
    x = rng.integers(0, 2, xs).astype(float) if ties else rng.standard_normal(xs)
    y, cache = pool.pool2d_forward(x, kind, 2, 2, 0, ceil_mode)
    ry, rarg = ref.pool2d(x, kind, (2, 2), (2, 2), (0, 0), ceil_mode)
    close(y, ry)
    if kind == "max":
        assert np.array_equal(cache.argmax, rarg)
    dy = rng.standard_normal(y.shape)
    expected = ref.pool2d_backward(dy, x, kind, (2, 2), (2, 2), (0, 0), ceil_mode)
    close(pool.pool2d_backward(dy, cache), expected)
    y32, c32 = pool.pool2d_forward(x.astype(np.float32), kind, 2, 2, 0, ceil_mode)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, ry, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("k, s", [(2, 2), (3, 1)])
def test_max_pool_propagates_nan_like_torch(k, s):
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1, 1] = np.nan
    y, cache = pool.pool2d_forward(x, "max", k, s)
    assert np.isnan(y[0, 0, 0, 0])
    assert cache.argmax[0, 0, 0, 0] == 5


@pytest.mark.parametrize(
    "size, k, s, p, ceil, expected",
    [
        (7, 3, 1, 0, False, 5),
        (7, 3, 2, 0, False, 3),
        (6, 3, 2, 0, False, 2),
        (6, 3, 2, 0, True, 3),  # ceil: a partial last window
        (5, 2, 2, 1, True, 3),  # ceil, but the window would start in the right padding
        (4, 2, 2, 1, True, 3),
        (8, 3, 3, 1, True, 3),
    ],
)
def test_pool_output_size(size, k, s, p, ceil, expected):
    assert pool.pool_output_size(size, k, s, p, ceil) == expected
    assert ref.pool_output_size(size, k, s, p, ceil) == expected


@SETTINGS
@given(
    size=st.integers(1, 40),
    k=st.integers(1, 7),
    s=st.integers(1, 4),
    p=st.integers(0, 3),
    d=st.integers(1, 3),
    ceil=st.booleans(),
)
def test_shape_rules_agree_with_the_reference(size, k, s, p, d, ceil):
    """ops' checked shape rules agree with the loops in reference and the calculator's."""
    if size + 2 * p >= d * (k - 1) + 1:
        assert (
            conv.conv_output_size(size, k, s, p, d)
            == ref.conv2d(
                np.zeros((1, 1, size, 1)), np.zeros((1, 1, k, 1)), None, (s, 1), (p, 0), (d, 1)
            ).shape[2]
        )
    if p <= k // 2 and size + 2 * p >= k:
        assert pool.pool_output_size(size, k, s, p, ceil) == ref.pool_output_size(
            size, k, s, p, ceil
        )


def test_pool_shape_errors():
    with pytest.raises(ShapeMismatchError, match="half the kernel"):
        pool.pool_output_size(8, 2, 2, 2)
    with pytest.raises(ShapeMismatchError, match="kind"):
        pool.pool2d_forward(np.zeros((1, 1, 4, 4)), "median", 2, 2)
    with pytest.raises(ShapeMismatchError, match="4 dims"):
        pool.pool2d_forward(np.zeros((4, 4)), "max", 2, 2)


@SETTINGS
@given(
    c=st.integers(1, 7),
    k=st.integers(1, 4),
    s=st.integers(1, 3),
    kind=st.sampled_from(pool.POOL_KINDS),
    ties=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_depth_pool_matches_reference(c, k, s, kind, ties, seed):
    assume(k <= c)
    rng = np.random.default_rng(seed)
    xs = (2, c, 3, 2)
    x = rng.integers(-1, 2, xs).astype(float) if ties else rng.standard_normal(xs)
    y, cache = pool.depth_pool_forward(x, kind, k, s)
    ry, rarg = ref.depth_pool(x, kind, k, s)
    close(y, ry)
    if kind == "max":
        winner = np.arange(y.shape[1]).reshape(1, -1, 1, 1) * s + cache.offset
        assert np.array_equal(winner, rarg), "ties go to the lowest channel"
    dy = rng.standard_normal(y.shape)
    close(pool.depth_pool_backward(dy, cache), ref.depth_pool_backward(dy, x, kind, k, s))


@pytest.mark.parametrize("kind", pool.GLOBAL_POOL_KINDS)
@pytest.mark.parametrize("ties", [False, True])
def test_global_pool_matches_reference(kind, ties):
    rng = np.random.default_rng(1)
    x = (
        rng.integers(0, 2, (3, 4, 5, 6)).astype(float)
        if ties
        else rng.standard_normal((3, 4, 5, 6))
    )
    y, cache = pool.global_pool_forward(x, kind)
    close(y, ref.global_pool(x, kind))
    dy = rng.standard_normal(y.shape)
    close(pool.global_pool_backward(dy, cache), ref.global_pool_backward(dy, x, kind))


# ---------------------------------------------------------------------------------------
# normalisation, activations, losses, dropout
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(7, 5), (4, 3, 5, 2)])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_matches_reference(shape, training):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape) * 3 + 1
    c = shape[1]
    gamma, beta = rng.standard_normal(c), rng.standard_normal(c)
    rm, rv = rng.standard_normal(c), rng.uniform(0.5, 2, c)
    y, cache, nm, nv = norm.batchnorm_forward(x, gamma, beta, rm, rv, training, 0.2, 1e-3)
    ry, rnm, rnv = ref.batchnorm(x, gamma, beta, rm, rv, training, 0.2, 1e-3)
    close(y, ry)
    close(nm, rnm)
    close(nv, rnv)
    dy = rng.standard_normal(shape)
    for mine, theirs in zip(
        norm.batchnorm_backward(dy, cache),
        ref.batchnorm_backward(dy, x, gamma, rm, rv, training, 1e-3),
    ):
        close(mine, theirs)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 6])
@pytest.mark.parametrize("alpha_over_size", [True, False])
def test_lrn_matches_reference(size, alpha_over_size):
    rng = np.random.default_rng(size)
    x = rng.standard_normal((2, 7, 3, 2)) * 5
    hp = dict(size=size, alpha=1e-2, beta=0.75, k=2.0, alpha_over_size=alpha_over_size)
    y, cache = norm.lrn_forward(x, **hp)
    close(y, ref.lrn(x, **hp))
    dy = rng.standard_normal(x.shape)
    close(norm.lrn_backward(dy, cache), ref.lrn_backward(dy, x, **hp))


ELEMENTWISE = [a for a in activations.ACTIVATIONS if a != "softmax"]


@pytest.mark.parametrize("name", ELEMENTWISE)
@pytest.mark.parametrize("hp", [{}, {"slope": 0.2, "alpha": 0.5}, {"slope": -0.5, "alpha": -1.0}])
def test_activation_matches_reference(name, hp):
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.standard_normal(40) * 4, [0.0, 6.0, -0.0, 6.5, -50.0, 50.0]])
    x = x.reshape(2, 23)
    mine = {k: v for k, v in hp.items() if k in activations.HYPERPARAMETERS.get(name, {})}
    y, cache = activations.forward(name, x, **mine)
    close(y, ref.activation(name, x, **hp))
    dy = rng.standard_normal(x.shape)
    close(activations.backward(name, dy, cache), dy * ref.activation_derivative(name, x, **hp))


@pytest.mark.parametrize("name", ["relu", "tanh", "sigmoid"])
def test_fused_derivatives_fall_back_on_views(name):
    """The one-pass kernels need contiguous arrays; views take the numpy path."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((6, 5)).T  # a non-contiguous view
    y, cache = activations.forward(name, x)
    dy = rng.standard_normal((6, 5)).T
    expected = dy * ref.activation_derivative(name, np.ascontiguousarray(x))
    close(activations.backward(name, dy, cache), expected)
    close(activations.backward(name, np.ascontiguousarray(dy), cache), expected)


def test_softmax_matches_reference():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 7)) * 300  # large logits must not overflow
    y, cache = activations.forward("softmax", x)
    close(y, ref.activation("softmax", x))
    dy = rng.standard_normal(x.shape)
    close(activations.backward("softmax", dy, cache), ref.softmax_backward(dy, x))


def test_activation_errors_and_names():
    expected = [
        "relu",
        "relu6",
        "leaky_relu",
        "sigmoid",
        "tanh",
        "elu",
        "softmax",
        "identity",
        "linear",
    ]
    assert set(activations.ACTIVATIONS) >= set(expected)
    with pytest.raises(ShapeMismatchError, match="unknown activation"):
        activations.forward("swish", np.zeros(3))
    with pytest.raises(ShapeMismatchError, match="takes"):
        activations.forward("relu", np.zeros(3), slope=0.1)


def test_losses_match_reference():
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((6, 4)) * 200
    labels = rng.integers(0, 4, 6)
    loss, d, probs = losses.softmax_cross_entropy(logits, labels)
    rloss, rd = ref.softmax_cross_entropy(logits, labels)
    assert loss == pytest.approx(rloss, rel=1e-12)
    close(d, rd)
    pred, target = rng.standard_normal((3, 2, 4)), rng.standard_normal((3, 2, 4))
    loss, dpred = losses.mse(pred, target)
    rloss, rd = ref.mse(pred, target)
    assert loss == pytest.approx(rloss, rel=1e-12)
    close(dpred, rd)
    with pytest.raises(ShapeMismatchError, match="labels"):
        losses.softmax_cross_entropy(logits, np.array([0, 1, 4, 0, 0, 0]))


def test_dropout_matches_reference_and_statistics():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((50, 40))
    mask = rng.random(x.shape) > 0.3
    y, cache = dropout.dropout_forward(x, 0.3, None, True, mask=mask)
    close(y, ref.dropout(x, 0.3, mask))
    dy = rng.standard_normal(x.shape)
    close(dropout.dropout_backward(dy, cache), ref.dropout(dy, 0.3, mask))
    # sampling: P(keep) = 1 - p, reproducible from the generator, float32 stays float32
    y1, c1 = dropout.dropout_forward(x.astype("f4"), 0.25, np.random.default_rng(7), True)
    y2, _ = dropout.dropout_forward(x.astype("f4"), 0.25, np.random.default_rng(7), True)
    assert y1.dtype == np.float32 and np.array_equal(y1, y2)
    assert abs(np.mean(c1.scaled_mask != 0) - 0.75) < 0.03
    with pytest.raises(ShapeMismatchError, match="Generator"):
        dropout.dropout_forward(x, 0.5, None, True)


# ---------------------------------------------------------------------------------------
# centred finite differences (float64) for cases without golden files
# ---------------------------------------------------------------------------------------


def _grad_check(f, backward, x, seed=0, atol=1e-6):
    rng = np.random.default_rng(seed)
    y = f(x)
    dy = rng.standard_normal(y.shape)
    num = ref.numerical_gradient(f, x, dy)
    np.testing.assert_allclose(backward(dy), num, rtol=0, atol=atol)


@pytest.mark.parametrize(
    "kind, k, s, p, ceil",
    [
        ("max", 3, 2, 1, False),  # padded max pool: padding acts as -inf
        ("max", 3, 2, 1, True),
        ("avg", 3, 2, 1, True),  # ceil_mode: the last window divides by what's inside
        ("avg", 2, 2, 0, True),
        ("l2", 3, 2, 1, True),
    ],
)
def test_pool2d_finite_differences(kind, k, s, p, ceil):
    x = np.random.default_rng(8).standard_normal((2, 2, 6, 7))

    def f(v):
        return pool.pool2d_forward(v, kind, k, s, p, ceil)[0]

    _, cache = pool.pool2d_forward(x, kind, k, s, p, ceil)
    _grad_check(f, lambda dy: pool.pool2d_backward(dy, cache), x)


@pytest.mark.parametrize("kind", ["avg", "l2", "max"])
@pytest.mark.parametrize("k, s", [(2, 2), (3, 1), (3, 2)])
def test_depth_pool_finite_differences(kind, k, s):
    x = np.random.default_rng(9).standard_normal((2, 7, 2, 3))

    def f(v):
        return pool.depth_pool_forward(v, kind, k, s)[0]

    _, cache = pool.depth_pool_forward(x, kind, k, s)
    _grad_check(f, lambda dy: pool.depth_pool_backward(dy, cache), x)


def test_relu6_finite_differences():
    rng = np.random.default_rng(10)
    x = rng.uniform(-2, 8, (3, 20))
    x = x[np.abs(x) > 1e-3]  # keep away from the kinks, where differences are one-sided
    x = x[np.abs(x - 6) > 1e-3]

    def f(v):
        return activations.forward("relu6", v)[0]

    _, cache = activations.forward("relu6", x)
    _grad_check(f, lambda dy: activations.backward("relu6", dy, cache), x)
    # at the kinks PyTorch passes no gradient
    _, c = activations.forward("relu6", np.array([0.0, 6.0]))
    assert np.array_equal(activations.backward("relu6", np.ones(2), c), [0.0, 0.0])


@pytest.mark.parametrize(
    "s, p, op, d, groups, k",
    [
        ((2, 1), (1, 0), (1, 0), (2, 1), 2, (3, 2)),
        ((1, 2), (0, 1), (1, 1), (2, 2), 3, (3, 2)),
        ((1, 1), (0, 0), (1, 1), (2, 2), 1, (1, 1)),  # 1x1: output_padding via dilation
    ],
)
def test_conv_transpose2d_finite_differences(s, p, op, d, groups, k):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 2 * groups, 3, 4))
    w = rng.standard_normal((2 * groups, 2, *k))
    b = rng.standard_normal(2 * groups)
    y, cache = conv.conv_transpose2d_forward(x, w, b, s, p, op, d, groups)
    dy = rng.standard_normal(y.shape)
    dx, dw, db = conv.conv_transpose2d_backward(dy, cache)

    def loss_of_x(v):
        return conv.conv_transpose2d_forward(v, w, b, s, p, op, d, groups)[0]

    def loss_of_w(v):
        return conv.conv_transpose2d_forward(x, v, b, s, p, op, d, groups)[0]

    np.testing.assert_allclose(dx, ref.numerical_gradient(loss_of_x, x, dy), atol=1e-6)
    np.testing.assert_allclose(dw, ref.numerical_gradient(loss_of_w, w, dy), atol=1e-6)
    np.testing.assert_allclose(db, dy.sum(axis=(0, 2, 3)), atol=1e-12)


@pytest.mark.parametrize("hw", [(5, 7), (18, 20)], ids=["channel-last", "phase-planes"])
@pytest.mark.parametrize("s, p, d, mult", [(1, 1, 1, 1), (2, 1, 1, 1), (1, 2, 2, 1),
                                           (2, 0, 1, 2), (3, 2, 1, 1)])
def test_depthwise_both_layouts_match_reference(hw, s, p, d, mult):
    """The depthwise path's two layouts (small maps channel-last, wider ones on phase
    planes), strides, dilations and channel multipliers, against the reference."""
    rng = np.random.default_rng(6)
    c = 5
    x = rng.standard_normal((3, c, *hw))
    w = rng.standard_normal((c * mult, 1, 3, 3))
    b = rng.standard_normal(c * mult)
    algo = conv.ConvAlgo("depthwise", "depthwise", "depthwise")
    y, cache = conv.conv2d_forward(x, w, b, s, p, d, c, algo=algo)
    close(y, ref.conv2d(x, w, b, (s, s), (p, p), (d, d), c))
    dy = rng.standard_normal(y.shape)
    for got, want in zip(conv.conv2d_backward(dy, cache),
                         ref.conv2d_backward(dy, x, w, (s, s), (p, p), (d, d), c)):
        close(got, want)
