"""Optimizers against the PyTorch golden files and a slow, obvious twin; schedules' values."""

from __future__ import annotations

import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from cnncli.errors import CnnError, DataError
from cnncli.optim import OPTIMIZERS, LrSchedule, lr_at, make_optimizer, make_schedule

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
NOT_HPARAMS = {"seed", "p0", "grads", "num_steps", "p_steps"}
STATE_OF = {  # golden "<x>_steps" array -> our state_dict buffer name
    "momentum_buffer_steps": "momentum_buffer",
    "exp_avg_steps": "exp_avg",
    "exp_avg_sq_steps": "exp_avg_sq",
    "square_avg_steps": "square_avg",
}


def _golden(name: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN / f"optim_{name}.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_matches_golden_every_step_and_state(name: str) -> None:
    z = _golden(name)
    hp = {k: v.item() for k, v in z.items() if v.ndim == 0 and k not in NOT_HPARAMS}
    opt = make_optimizer(name, **hp)
    p = z["p0"].copy()
    params = {"w": p}
    grads_before = z["grads"].copy()
    states = [k for k in z if k in STATE_OF]
    assert states, "golden file without optimizer state"
    for t in range(int(z["num_steps"])):
        opt.step(params, {"w": z["grads"][t]})
        assert params["w"] is p  # updated in place
        np.testing.assert_allclose(p, z["p_steps"][t], rtol=0, atol=1e-12)
        sd = opt.state_dict()
        assert int(sd["step"]) == t + 1
        for k in states:
            np.testing.assert_allclose(sd[f"{STATE_OF[k]}/w"], z[k][t], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(z["grads"], grads_before)  # gradients are never written


# -- a slow, obvious twin of torch's single-tensor code paths, element by element ------------


def _twin(name: str, hp: dict, p0: np.ndarray, grads: np.ndarray) -> list[np.ndarray]:
    p = [float(v) for v in p0.ravel()]
    n = len(p)
    buf: list[float | None] = [None] * n
    m, v, vmax, ga = [0.0] * n, [0.0] * n, [0.0] * n, [0.0] * n
    lr, wd = hp["lr"], hp.get("weight_decay", 0.0)
    out = []
    for t, gs in enumerate(grads, start=1):
        for i, g in enumerate(float(x) for x in gs.ravel()):
            if name == "adamw":
                p[i] *= 1 - lr * wd
            elif wd:
                g = g + wd * p[i]
            if name == "sgd":
                mom, damp = hp["momentum"], hp["dampening"]
                upd = g
                if mom:
                    b = buf[i]
                    buf[i] = g if b is None else mom * b + (1 - damp) * g
                    upd = g + mom * buf[i] if hp["nesterov"] else buf[i]
                p[i] -= lr * upd
            elif name in ("adam", "adamw"):
                b1, b2 = hp["beta1"], hp["beta2"]
                m[i] = b1 * m[i] + (1 - b1) * g
                v[i] = b2 * v[i] + (1 - b2) * g * g
                vmax[i] = max(vmax[i], v[i])
                vv = vmax[i] if hp["amsgrad"] else v[i]
                denom = math.sqrt(vv / (1 - b2**t)) + hp["eps"]
                p[i] -= lr * (m[i] / (1 - b1**t)) / denom
            else:  # rmsprop
                a = hp["alpha"]
                v[i] = a * v[i] + (1 - a) * g * g
                var = v[i]
                if hp["centered"]:
                    ga[i] = a * ga[i] + (1 - a) * g
                    var = v[i] - ga[i] * ga[i]
                avg = math.sqrt(var) + hp["eps"]
                if hp["momentum"]:
                    b = buf[i] or 0.0
                    buf[i] = hp["momentum"] * b + g / avg
                    p[i] -= lr * buf[i]
                else:
                    p[i] -= lr * g / avg
        out.append(np.array(p).reshape(p0.shape))
    return out


VARIANTS = [
    ("sgd", dict(lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False)),
    ("sgd", dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=1e-3, nesterov=True)),
    ("sgd", dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.0, nesterov=False)),
    ("adam", dict(lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.05, amsgrad=True)),
    ("adam", dict(lr=0.01, beta1=0.3, beta2=0.9, eps=1e-8, weight_decay=0.0, amsgrad=False)),
    ("adamw", dict(lr=0.02, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1, amsgrad=True)),
    ("rmsprop", dict(lr=0.01, alpha=0.9, eps=1e-8, weight_decay=1e-3, momentum=0.9, centered=True)),
    ("rmsprop", dict(lr=0.01, alpha=0.3, eps=1e-6, weight_decay=0.0, momentum=0.0, centered=True)),
    (
        "rmsprop",
        dict(lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.5, centered=False),
    ),
]


@pytest.mark.parametrize(("name", "hp"), VARIANTS)
def test_variants_match_slow_twin(name: str, hp: dict) -> None:
    rng = np.random.default_rng(7)
    p0 = rng.standard_normal((3, 4))
    grads = rng.standard_normal((5, 3, 4))
    expected = _twin(name, hp, p0, grads)
    opt = make_optimizer(name, **hp)
    p = p0.copy()
    for t in range(5):
        opt.step({"w": p}, {"w": grads[t]})
        np.testing.assert_allclose(p, expected[t], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_float32_in_place_and_allocation_free(name: str) -> None:
    rng = np.random.default_rng(1)
    hp = {"momentum": 0.9} if name in ("sgd", "rmsprop") else {}
    if name == "rmsprop":
        hp["centered"] = True
    opt = make_optimizer(name, lr=1e-3, weight_decay=1e-4, **hp)
    p = rng.standard_normal(250_000).astype(np.float32)  # 1 MB
    g = rng.standard_normal(250_000).astype(np.float32)
    opt.step({"w": p}, {"w": g})
    opt.step({"w": p}, {"w": g})  # every lazily made array exists now
    tracemalloc.start()
    try:
        for _ in range(3):
            opt.step({"w": p}, {"w": g})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20_000, f"{name} allocated {peak} bytes in 3 steps of a 1 MB parameter"
    assert p.dtype == np.float32
    assert all(a.dtype == np.float32 for a in opt.state_dict().values() if a.ndim)


@pytest.mark.parametrize(("name", "hp"), VARIANTS)
def test_state_dict_round_trip_resumes_exactly(name: str, hp: dict) -> None:
    rng = np.random.default_rng(3)
    params = {"a": rng.standard_normal((2, 3)), "b/bias": rng.standard_normal(4)}
    grads = [{k: rng.standard_normal(v.shape) for k, v in params.items()} for _ in range(4)]
    full = make_optimizer(name, **hp)
    pf = {k: v.copy() for k, v in params.items()}
    for g in grads:
        full.step(pf, g)
    first = make_optimizer(name, **hp)
    pr = {k: v.copy() for k, v in params.items()}
    for g in grads[:2]:
        first.step(pr, g)
    state = first.state_dict()
    assert set(state) >= {"step"} and all("/" in k for k in state if k != "step")
    resumed = make_optimizer(name, **hp)
    resumed.load_state_dict(state)
    for g in grads[2:]:
        resumed.step(pr, g)
    for k in params:
        np.testing.assert_array_equal(pr[k], pf[k])
    assert int(resumed.state_dict()["step"]) == 4


def test_state_keys_name_buffer_and_parameter() -> None:
    opt = make_optimizer("adam", lr=0.1)
    assert set(opt.state_dict()) == {"step"}
    opt.step({"conv1/w": np.ones(2)}, {"conv1/w": np.ones(2)})
    assert set(opt.state_dict()) == {"step", "exp_avg/conv1/w", "exp_avg_sq/conv1/w"}
    sd = opt.state_dict()
    assert sd["step"].dtype == np.int64 and sd["step"].shape == ()


def test_load_state_dict_rejects_foreign_or_mismatched_state() -> None:
    sgd = make_optimizer("sgd", lr=0.1, momentum=0.9)
    with pytest.raises(DataError, match="unexpected optimizer state 'exp_avg/w'"):
        sgd.load_state_dict({"step": np.array(1), "exp_avg/w": np.zeros(2)})
    with pytest.raises(DataError, match="no 'step'"):
        sgd.load_state_dict({})
    sgd.load_state_dict({"step": np.array(1), "momentum_buffer/w": np.zeros(3)})
    with pytest.raises(DataError, match="shape"):
        sgd.step({"w": np.zeros(2)}, {"w": np.zeros(2)})


def test_lr_is_settable_between_steps() -> None:
    opt = make_optimizer("sgd", lr=0.1)
    p = np.zeros(1)
    opt.step({"w": p}, {"w": np.ones(1)})
    opt.lr = 0.5
    opt.step({"w": p}, {"w": np.ones(1)})
    assert p[0] == pytest.approx(-0.6, abs=1e-15)
    with pytest.raises(CnnError, match="lr must be >= 0"):
        opt.lr = -1


@pytest.mark.parametrize(
    ("name", "hp", "message"),
    [
        ("adagrad", {}, "unknown optimizer 'adagrad' \\(choose from adam, adamw, rmsprop, sgd\\)"),
        ("sgd", {"betas": (0.9, 0.99)}, "sgd: unknown setting betas"),
        ("sgd", {"lr": -0.1}, "sgd: lr must be >= 0, got -0.1"),
        ("sgd", {"lr": "fast"}, "sgd: lr must be a number, got 'fast'"),
        ("sgd", {"lr": float("nan")}, "lr must be finite"),
        ("sgd", {"momentum": -0.5}, "momentum must be >= 0"),
        ("sgd", {"nesterov": True}, "nesterov needs momentum > 0"),
        (
            "sgd",
            {"nesterov": True, "momentum": 0.9, "dampening": 0.1},
            "nesterov needs dampening 0",
        ),
        ("sgd", {"nesterov": "yes"}, "nesterov must be true or false"),
        ("adam", {"beta1": 1.0}, "beta1 must be in \\[0, 1\\)"),
        ("adamw", {"beta2": -0.1}, "beta2 must be in"),
        ("adam", {"eps": -1e-8}, "eps must be >= 0"),
        ("adamw", {"weight_decay": -1}, "weight_decay must be >= 0"),
        ("rmsprop", {"alpha": 1.5}, "alpha must be in \\[0, 1\\]"),
    ],
)
def test_make_optimizer_errors(name: str, hp: dict, message: str) -> None:
    with pytest.raises(CnnError, match=message):
        make_optimizer(name, **hp)


def test_make_optimizer_names_defaults_and_config() -> None:
    assert make_optimizer(" AdamW ").config()["weight_decay"] == 0.01
    opt = make_optimizer("sgd", lr=0.05, momentum=0.9, weight_decay=None)  # None: default
    assert opt.config() == {
        "name": "sgd",
        "lr": 0.05,
        "momentum": 0.9,
        "dampening": 0.0,
        "weight_decay": 0.0,
        "nesterov": False,
    }
    for name in OPTIMIZERS:
        cfg = make_optimizer(name).config()
        assert make_optimizer(cfg.pop("name"), **cfg).config()["name"] == name


def test_missing_or_misshapen_gradient_is_an_error() -> None:
    opt = make_optimizer("sgd", lr=0.1)
    with pytest.raises(CnnError, match="no gradient for parameter 'b'"):
        opt.step({"b": np.zeros(2)}, {})
    with pytest.raises(CnnError, match="shape"):
        opt.step({"b": np.zeros(2)}, {"b": np.zeros(3)})


# -- schedules ----------------------------------------------------------------------------


def test_schedules_at_known_points() -> None:
    const = make_schedule("constant", 0.1)
    assert [lr_at(const, t) for t in (0, 5, 100)] == [0.1, 0.1, 0.1]

    step = make_schedule("step", 0.1, step_size=3, gamma=0.5)
    assert [lr_at(step, t) for t in range(7)] == pytest.approx(
        [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025], abs=1e-15
    )
    assert lr_at(make_schedule("step", 1.0, step_size=10), 25) == pytest.approx(0.01)

    expo = make_schedule("exponential", 0.2, gamma=0.9)
    assert lr_at(expo, 0) == 0.2
    assert lr_at(expo, 3) == pytest.approx(0.2 * 0.9**3, abs=1e-15)
    assert make_schedule("exponential").gamma == 0.95

    cos = make_schedule("cosine", 0.1, min_lr=0.001, total=10)
    assert lr_at(cos, 0) == pytest.approx(0.1, abs=1e-15)
    assert lr_at(cos, 5) == pytest.approx((0.1 + 0.001) / 2, abs=1e-15)
    assert lr_at(cos, 10) == pytest.approx(0.001, abs=1e-15)
    assert lr_at(cos, 50) == pytest.approx(0.001, abs=1e-15)  # held at the floor
    expected = 0.001 + 0.099 * (1 + math.cos(math.pi * 3 / 10)) / 2
    assert lr_at(cos, 3) == pytest.approx(expected, abs=1e-15)


def test_warmup_is_linear_then_hands_over() -> None:
    sc = make_schedule("cosine", 0.4, total=13, warmup=3)
    assert [lr_at(sc, t) for t in range(4)] == pytest.approx([0.1, 0.2, 0.3, 0.4], abs=1e-15)
    assert lr_at(sc, 8) == pytest.approx(0.2, abs=1e-15)  # half-way through the 10 cosine units
    assert lr_at(sc, 13) == pytest.approx(0.0, abs=1e-15)
    st = make_schedule("step", 1.0, step_size=2, gamma=0.1, warmup=1)
    assert [lr_at(st, t) for t in range(5)] == pytest.approx([0.5, 1, 1, 0.1, 0.1])


def test_schedule_from_mapping_and_round_trip() -> None:
    cfg = {"kind": "step", "lr": 0.1, "step_size": 2, "gamma": 0.5}
    assert lr_at(cfg, 2) == pytest.approx(0.05)
    sc = make_schedule(**cfg)
    assert isinstance(sc, LrSchedule) and make_schedule(**sc.as_dict()) == sc


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "linear"}, "unknown lr schedule 'linear'"),
        ({"kind": "cosine", "total": 0}, "total must exceed warmup"),
        ({"kind": "cosine", "total": 5, "warmup": 5}, "total must exceed warmup \\(5\\)"),
        ({"kind": "step", "step_size": 0}, "step_size must be >= 1"),
        ({"kind": "step", "step_size": 2.5}, "step_size must be a whole number"),
        ({"kind": "exponential", "gamma": 0}, "gamma must be > 0"),
        ({"kind": "constant", "lr": -1}, "lr must be >= 0"),
        ({"kind": "constant", "warmup": -2}, "warmup must be a whole number >= 0"),
    ],
)
def test_schedule_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(CnnError, match=message):
        make_schedule(**kwargs)


SGD_VARIANTS = [hp for name, hp in VARIANTS if name == "sgd"] + [
    dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False),  # the default
    dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=5e-4, nesterov=False),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("hp", SGD_VARIANTS)
def test_sgd_fused_kernel_is_bit_identical_to_the_ufuncs(hp: dict, dtype) -> None:
    """Large arrays step in one fused Numba pass (split over the workers), small and
    strided ones as ufuncs: the two must round alike, step after step."""
    from cnncli.optim import FUSED_MIN

    rng = np.random.default_rng(11)
    n = FUSED_MIN * 3 + 7  # above the threshold, and not a multiple of the part size
    p0 = rng.standard_normal(n).astype(dtype)
    fused, plain = make_optimizer("sgd", **hp), make_optimizer("sgd", **hp)
    pf, pp = p0.copy(), p0.copy()
    for t in range(4):
        g = rng.standard_normal(n).astype(dtype)
        fused.step({"w": pf}, {"w": g})
        # a strided view of the same values takes the ufunc path
        wide = np.zeros((n, 2), dtype)
        wide[:, 0] = pp
        view = wide[:, 0]
        plain.step({"w": view}, {"w": g})
        pp = view.copy()
        np.testing.assert_array_equal(pf, pp, err_msg=f"step {t}")
        if hp["momentum"]:
            np.testing.assert_array_equal(fused.state_dict()["momentum_buffer/w"],
                                          plain.state_dict()["momentum_buffer/w"])
    assert "w" not in fused._scratch  # the fused pass needs no temporaries
    assert pf.dtype == dtype
