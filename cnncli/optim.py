"""Optimizers and learning-rate schedules over named NumPy parameter arrays.

The engine owns the parameter arrays; an optimizer updates them IN PLACE from a dict of
gradients with the same names, so layers keep their references. The arithmetic follows
PyTorch's single-tensor (``foreach=False``) code paths operation by operation, which is what
the golden files ``tests/golden/optim_*.npz`` record (README §16):

* SGD: ``g = grad + wd*p``; ``buf = g`` on a parameter's first step (no dampening), then
  ``buf = momentum*buf + (1-dampening)*g``; ``update = g + momentum*buf`` (Nesterov) or
  ``buf``; ``p -= lr*update``.
* Adam: coupled L2 ``g = grad + wd*p``; ``m = lerp(m, g, 1-beta1)``;
  ``v = beta2*v + (1-beta2)*g*g``; ``p -= lr/(1-beta1^t) * m / (sqrt(v)/sqrt(1-beta2^t) + eps)``
  (eps after the square root of the bias-corrected v). AMSGrad uses ``max(v)`` instead of v.
* AdamW: ``p *= 1 - lr*wd`` first (decoupled), then Adam with the raw gradient.
* RMSprop: ``g = grad + wd*p``; ``v = alpha*v + (1-alpha)*g*g``; centered subtracts
  ``lerp(ga, g, 1-alpha)**2``; ``avg = sqrt(v) + eps`` (eps outside the root); with momentum
  ``buf = momentum*buf + g/avg; p -= lr*buf``, else ``p -= lr*g/avg``.

Every step works in place with ``out=`` ufuncs on per-parameter scratch arrays allocated on
the first step, so the hot loop allocates nothing and float32 parameters stay float32.
Gradients are read, never written.

``state_dict()`` is flat (``step`` and ``<buffer>/<param name>``) so it goes straight into a
checkpoint ``.npz`` without pickle.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np

from cnncli.errors import CnnError, DataError, ShapeMismatchError

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "SGD",
    "Adam",
    "AdamW",
    "LrSchedule",
    "Optimizer",
    "RMSprop",
    "lr_at",
    "make_optimizer",
    "make_schedule",
]


def _check(cond: bool, opt: str, what: str, value: Any) -> None:
    if not cond:
        raise CnnError(f"{opt}: {what}, got {value!r}")


def _real(opt: str, name: str, value: Any) -> float:
    """Coerce a hyperparameter to a finite float, or raise a CnnError naming it."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise CnnError(f"{opt}: {name} must be a number, got {value!r}") from None
    _check(math.isfinite(out), opt, f"{name} must be finite", value)
    return out


def _flag(opt: str, name: str, value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)) or value in (0, 1):
        return bool(value)
    raise CnnError(f"{opt}: {name} must be true or false, got {value!r}")


class Optimizer:
    """Base class: the step loop, the lr property and the flat state dict.

    Subclasses list their persistent per-parameter buffers in ``BUFFERS`` and implement
    ``_update(name, p, g)``; ``self._buf[buffer][name]`` holds the state and
    ``self._scratch`` temporaries that are never saved.
    """

    NAME: ClassVar[str] = ""
    BUFFERS: ClassVar[tuple[str, ...]] = ()
    #: Hyperparameters besides lr, as attributes named like ``make_optimizer``'s keywords.
    SETTINGS: ClassVar[tuple[str, ...]] = ()
    #: Scratch arrays per parameter (``_tmp``), allocated on the first step and kept.
    SCRATCH: ClassVar[int] = 2
    weight_decay: float = 0.0

    def __init__(self, lr: float) -> None:
        self.lr = lr
        self.t = 0  # steps taken; torch's per-parameter ``step`` (all parameters step together)
        self._buf: dict[str, dict[str, np.ndarray]] = {b: {} for b in self.BUFFERS}
        self._scratch: dict[str, list[np.ndarray]] = {}

    @property
    def lr(self) -> float:
        """Learning rate of the next step; a schedule sets it before each step or epoch."""
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        value = _real(self.NAME, "lr", value)
        _check(value >= 0.0, self.NAME, "lr must be >= 0", value)
        self._lr = value

    def config(self) -> dict[str, Any]:
        """Name and hyperparameters, JSON-serialisable, as ``make_optimizer`` takes them."""
        return {"name": self.NAME, "lr": self.lr, **{k: getattr(self, k) for k in self.SETTINGS}}

    def _with_l2(self, p: np.ndarray, g: np.ndarray, out: np.ndarray) -> np.ndarray:
        """g + weight_decay*p (L2 decay added to the gradient, as torch does), in ``out``."""
        if not self.weight_decay:
            return g
        np.multiply(p, self.weight_decay, out=out)
        np.add(g, out, out=out)
        return out

    def step(self, params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray]) -> None:
        """Update every array in ``params`` in place from ``grads[name]`` (same shape)."""
        self.t += 1
        for name, p in params.items():
            g = grads.get(name)
            if g is None:
                raise ShapeMismatchError(f"{self.NAME}: no gradient for parameter '{name}'")
            if g.shape != p.shape:
                raise ShapeMismatchError(
                    f"{self.NAME}: gradient of '{name}' has shape {g.shape}, parameter {p.shape}"
                )
            self._update(name, p, g)

    def _update(self, name: str, p: np.ndarray, g: np.ndarray) -> None:
        raise NotImplementedError

    def scratch_used(self, size: int = 1) -> int:
        """How many of the SCRATCH arrays a step writes (so the OS gives them pages) for a
        parameter of ``size`` elements: the second always, the first only for coupled L2
        decay (``_with_l2``)."""
        return 2 if self.weight_decay and not getattr(self, "DECOUPLED", False) else 1

    def state_buffers(self) -> int:
        """How many of ``BUFFERS`` these settings fill per parameter (the memory
        estimate, ``cnn shapes --memory``)."""
        return len(self.BUFFERS)

    # -- state -------------------------------------------------------------------------

    def _state(self, buffer: str, name: str, p: np.ndarray) -> np.ndarray:
        """The state array ``buffer`` of parameter ``name``, zeros the first time."""
        per = self._buf[buffer]
        a = per.get(name)
        if a is None:
            a = per[name] = np.zeros_like(p)
        elif a.shape != p.shape:
            raise DataError(
                f"{self.NAME}: saved state '{buffer}/{name}' has shape {a.shape}, "
                f"parameter has {p.shape}"
            )
        elif a.dtype != p.dtype:  # a loaded state: adopt the parameter's precision once
            a = per[name] = a.astype(p.dtype)
        return a

    def _tmp(self, name: str, p: np.ndarray, n: int) -> list[np.ndarray]:
        """``n`` scratch arrays shaped like ``p`` (allocated once per parameter)."""
        s = self._scratch.get(name)
        if s is None or len(s) < n or s[0].shape != p.shape or s[0].dtype != p.dtype:
            s = self._scratch[name] = [np.empty_like(p) for _ in range(n)]
        return s

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the state: ``step`` (0-d int64) and ``<buffer>/<param>`` arrays."""
        out: dict[str, np.ndarray] = {"step": np.array(self.t, dtype=np.int64)}
        for buffer, per in self._buf.items():
            for name, a in per.items():
                out[f"{buffer}/{name}"] = a.copy()
        return out

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Replace the state with (copies of) ``state``, as written by ``state_dict``."""
        if "step" not in state:
            raise DataError(f"{self.NAME}: optimizer state has no 'step'")
        bufs: dict[str, dict[str, np.ndarray]] = {b: {} for b in self.BUFFERS}
        for key, value in state.items():
            if key == "step":
                continue
            buffer, sep, name = key.partition("/")
            if not sep or buffer not in bufs or not name:
                raise DataError(f"{self.NAME}: unexpected optimizer state '{key}'")
            bufs[buffer][name] = np.array(value, copy=True)
        step = np.asarray(state["step"])
        if step.shape != () or step.dtype.kind not in "iu" or int(step) < 0:
            raise DataError(f"{self.NAME}: optimizer 'step' must be a count, got {step!r}")
        self.t = int(step)
        self._buf = bufs


#: Parameters with fewer elements than this step as ufuncs: the passes cost microseconds
#: there, and a run with none larger (LeNet-5) never compiles the kernel (0.5 s cold).
FUSED_MIN = 1 << 16


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum and L2 decay."""

    NAME = "sgd"
    SETTINGS = ("momentum", "dampening", "weight_decay", "nesterov")
    BUFFERS = ("momentum_buffer",)

    def __init__(
        self,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        super().__init__(lr)
        n = self.NAME
        self.momentum = _real(n, "momentum", momentum)
        self.dampening = _real(n, "dampening", dampening)
        self.weight_decay = _real(n, "weight_decay", weight_decay)
        self.nesterov = _flag(n, "nesterov", nesterov)
        _check(self.momentum >= 0, n, "momentum must be >= 0", momentum)
        _check(self.weight_decay >= 0, n, "weight_decay must be >= 0", weight_decay)
        _check(0 <= self.dampening <= 1, n, "dampening must be in [0, 1]", dampening)
        if self.nesterov:
            _check(self.momentum > 0, n, "nesterov needs momentum > 0", momentum)
            _check(self.dampening == 0, n, "nesterov needs dampening 0", dampening)

    def state_buffers(self) -> int:
        return 1 if self.momentum else 0

    def scratch_used(self, size: int = 1) -> int:
        if size >= FUSED_MIN:
            return 0  # one fused pass (cnncli._optim_kernels), no temporaries
        return super().scratch_used(size)

    def _update(self, name: str, p: np.ndarray, g: np.ndarray) -> None:
        per = self._buf["momentum_buffer"]
        first = bool(self.momentum) and name not in per
        if self.momentum:
            buf = per[name] = np.empty_like(p) if first else self._state("momentum_buffer",
                                                                          name, p)
        else:
            buf = p  # never touched: the kernel reads buf only with momentum
        if not (p.size >= FUSED_MIN and p.flags.c_contiguous and g.flags.c_contiguous
                and g.dtype == p.dtype and p.dtype in (np.float32, np.float64)):
            self._update_ufuncs(name, p, g, buf, first)
            return
        from cnncli._optim_kernels import sgd_step
        from cnncli.ops._threads import over_batch

        t = p.dtype.type
        args = (t(self.weight_decay), t(self.momentum), t(1.0 - self.dampening), t(-self.lr),
                first, self.nesterov)
        pf, gf, bf = p.reshape(-1), g.reshape(-1), buf.reshape(-1)

        def part(lo: int, hi: int, _i: int) -> None:
            sgd_step(pf[lo:hi], gf[lo:hi], bf[lo:hi], *args)

        over_batch(part, pf.size, min_items=1 << 16)

    def _update_ufuncs(self, name: str, p: np.ndarray, g: np.ndarray, buf: np.ndarray,
                       first: bool) -> None:
        """The same arithmetic as ufuncs, bit for bit: for small parameters and for arrays
        the kernel does not take (strided views, mixed dtypes)."""
        s1, s2 = self._tmp(name, p, 2)
        g = self._with_l2(p, g, s1)
        update = g
        if self.momentum:
            if first:  # torch: buf = clone(grad) on the first step, undamped
                np.copyto(buf, g)
            else:
                np.multiply(buf, self.momentum, out=buf)
                if self.dampening:
                    np.multiply(g, 1.0 - self.dampening, out=s2)
                    np.add(buf, s2, out=buf)
                else:
                    np.add(buf, g, out=buf)
            if self.nesterov:
                np.multiply(buf, self.momentum, out=s2)
                np.add(g, s2, out=s2)
                update = s2
            else:
                update = buf
        np.multiply(update, -self.lr, out=s2)
        np.add(p, s2, out=p)


def _lerp(a: np.ndarray, b: np.ndarray, w: float, tmp: np.ndarray) -> None:
    """``a = a + w*(b - a)`` in place, the way torch's ``lerp_`` rounds it."""
    np.subtract(b, a, out=tmp)
    if w < 0.5:
        np.multiply(tmp, w, out=tmp)
        np.add(a, tmp, out=a)
    else:
        np.multiply(tmp, 1.0 - w, out=tmp)
        np.subtract(b, tmp, out=a)


class Adam(Optimizer):
    """Adam (Kingma and Ba) with coupled L2 weight decay and optional AMSGrad."""

    NAME = "adam"
    SETTINGS = ("beta1", "beta2", "eps", "weight_decay", "amsgrad")
    BUFFERS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    DECOUPLED: ClassVar[bool] = False

    def __init__(
        self,
        lr: float = 1e-3,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(lr)
        n = self.NAME
        self.beta1 = _real(n, "beta1", beta1)
        self.beta2 = _real(n, "beta2", beta2)
        self.eps = _real(n, "eps", eps)
        self.weight_decay = _real(n, "weight_decay", weight_decay)
        self.amsgrad = _flag(n, "amsgrad", amsgrad)
        _check(0 <= self.beta1 < 1, n, "beta1 must be in [0, 1)", beta1)
        _check(0 <= self.beta2 < 1, n, "beta2 must be in [0, 1)", beta2)
        _check(self.eps >= 0, n, "eps must be >= 0", eps)
        _check(self.weight_decay >= 0, n, "weight_decay must be >= 0", weight_decay)

    def state_buffers(self) -> int:
        return 3 if self.amsgrad else 2

    def _update(self, name: str, p: np.ndarray, g: np.ndarray) -> None:
        s1, s2 = self._tmp(name, p, 2)
        if self.DECOUPLED:
            if self.weight_decay:
                np.multiply(p, 1.0 - self.lr * self.weight_decay, out=p)
        else:
            g = self._with_l2(p, g, s1)
        m = self._state("exp_avg", name, p)
        v = self._state("exp_avg_sq", name, p)
        _lerp(m, g, 1.0 - self.beta1, s2)
        np.multiply(v, self.beta2, out=v)
        np.multiply(g, 1.0 - self.beta2, out=s2)
        np.multiply(s2, g, out=s2)
        np.add(v, s2, out=v)
        if self.amsgrad:
            vmax = self._state("max_exp_avg_sq", name, p)
            np.maximum(vmax, v, out=vmax)
            v = vmax
        step_size = self.lr / (1.0 - self.beta1**self.t)
        bias_correction2_sqrt = (1.0 - self.beta2**self.t) ** 0.5
        np.sqrt(v, out=s2)
        np.divide(s2, bias_correction2_sqrt, out=s2)
        np.add(s2, self.eps, out=s2)
        np.divide(m, s2, out=s2)
        np.multiply(s2, -step_size, out=s2)
        np.add(p, s2, out=p)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov and Hutter): ``p *= 1 - lr*wd`` first."""

    NAME = "adamw"
    DECOUPLED = True

    def __init__(
        self,
        lr: float = 1e-3,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(lr, beta1, beta2, eps, weight_decay, amsgrad)


class RMSprop(Optimizer):
    """RMSprop (Hinton) as torch has it: eps outside the root, optional momentum, centered."""

    NAME = "rmsprop"
    SETTINGS = ("alpha", "eps", "weight_decay", "momentum", "centered")
    BUFFERS = ("square_avg", "grad_avg", "momentum_buffer")

    def __init__(
        self,
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
    ) -> None:
        super().__init__(lr)
        n = self.NAME
        self.alpha = _real(n, "alpha", alpha)
        self.eps = _real(n, "eps", eps)
        self.weight_decay = _real(n, "weight_decay", weight_decay)
        self.momentum = _real(n, "momentum", momentum)
        self.centered = _flag(n, "centered", centered)
        _check(0 <= self.alpha <= 1, n, "alpha must be in [0, 1]", alpha)
        _check(self.eps >= 0, n, "eps must be >= 0", eps)
        _check(self.weight_decay >= 0, n, "weight_decay must be >= 0", weight_decay)
        _check(self.momentum >= 0, n, "momentum must be >= 0", momentum)

    def state_buffers(self) -> int:
        return 1 + bool(self.centered) + (self.momentum > 0)

    def _update(self, name: str, p: np.ndarray, g: np.ndarray) -> None:
        s1, s2 = self._tmp(name, p, 2)
        g = self._with_l2(p, g, s1)
        v = self._state("square_avg", name, p)
        np.multiply(v, self.alpha, out=v)
        np.multiply(g, 1.0 - self.alpha, out=s2)
        np.multiply(s2, g, out=s2)
        np.add(v, s2, out=v)
        if self.centered:
            ga = self._state("grad_avg", name, p)
            _lerp(ga, g, 1.0 - self.alpha, s2)
            np.multiply(ga, ga, out=s2)
            np.subtract(v, s2, out=s2)
            np.sqrt(s2, out=s2)
        else:
            np.sqrt(v, out=s2)
        np.add(s2, self.eps, out=s2)  # avg
        np.divide(g, s2, out=s2)
        if self.momentum > 0:
            buf = self._state("momentum_buffer", name, p)
            np.multiply(buf, self.momentum, out=buf)
            np.add(buf, s2, out=buf)
            np.multiply(buf, -self.lr, out=s2)
        else:
            np.multiply(s2, -self.lr, out=s2)
        np.add(p, s2, out=p)


OPTIMIZERS: dict[str, type[Optimizer]] = {c.NAME: c for c in (SGD, Adam, AdamW, RMSprop)}


def make_optimizer(name: str, **hparams: Any) -> Optimizer:
    """Build an optimizer by name (sgd, adam, adamw, rmsprop) from keyword hyperparameters.

    ``None`` values are dropped so that unset CLI flags fall back to the defaults (torch's).
    Unknown names, unknown settings and bad values raise :class:`CnnError`.
    """
    key = str(name).strip().lower()
    cls = OPTIMIZERS.get(key)
    if cls is None:
        raise CnnError(f"unknown optimizer '{name}' (choose from {', '.join(sorted(OPTIMIZERS))})")
    allowed = [k for k in inspect.signature(cls.__init__).parameters if k != "self"]
    given = {k: v for k, v in hparams.items() if v is not None}
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise CnnError(
            f"{key}: unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
            f"(settings: {', '.join(allowed)})"
        )
    return cls(**given)


# -- learning-rate schedules ---------------------------------------------------------------

SCHEDULES = ("constant", "step", "cosine", "exponential")
_DEFAULT_GAMMA = {"step": 0.1, "exponential": 0.95}


@dataclass(frozen=True)
class LrSchedule:
    """A learning-rate schedule over a count ``t`` (epochs or steps; the caller picks one).

    After ``warmup`` units of linear warm-up the main schedule runs on ``s = t - warmup``:

    * constant: ``lr``
    * step: ``lr * gamma**(s // step_size)`` (torch StepLR)
    * exponential: ``lr * gamma**s`` (torch ExponentialLR)
    * cosine: ``min_lr + (lr - min_lr) * (1 + cos(pi * s / (total - warmup))) / 2``, held
      at ``min_lr`` after ``total`` (torch CosineAnnealingLR with ``T_max = total - warmup``)

    Warm-up: ``lr * (t + 1) / (warmup + 1)`` for ``t < warmup``, so it never starts at zero
    and rises evenly into the main schedule's first value.
    """

    kind: str = "constant"
    lr: float = 1e-3
    step_size: int = 10
    gamma: float = 0.1
    min_lr: float = 0.0
    total: int = 0
    warmup: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable settings; ``make_schedule(**d)`` rebuilds the schedule."""
        return asdict(self)


def make_schedule(
    kind: str = "constant",
    lr: float = 1e-3,
    *,
    step_size: int = 10,
    gamma: float | None = None,
    min_lr: float = 0.0,
    total: int = 0,
    warmup: int = 0,
) -> LrSchedule:
    """Validate schedule settings (CnnError on bad ones) and return an :class:`LrSchedule`.

    ``gamma`` defaults to 0.1 for ``step`` and 0.95 for ``exponential``; ``cosine`` needs
    ``total`` (the number of epochs or steps it spans, warm-up included) > ``warmup``.
    """
    k = str(kind).strip().lower()
    if k not in SCHEDULES:
        raise CnnError(f"unknown lr schedule '{kind}' (choose from {', '.join(SCHEDULES)})")
    n = f"{k} schedule"
    lr_f = _real(n, "lr", lr)
    _check(lr_f >= 0, n, "lr must be >= 0", lr)
    gamma_f = _real(n, "gamma", _DEFAULT_GAMMA.get(k, 0.1) if gamma is None else gamma)
    _check(gamma_f > 0, n, "gamma must be > 0", gamma)
    min_f = _real(n, "min_lr", min_lr)
    _check(min_f >= 0, n, "min_lr must be >= 0", min_lr)
    ints = {}
    for name, value in (("step_size", step_size), ("total", total), ("warmup", warmup)):
        _check(
            isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0,
            n,
            f"{name} must be a whole number >= 0",
            value,
        )
        ints[name] = int(value)
    if k == "step":
        _check(ints["step_size"] >= 1, n, "step_size must be >= 1", step_size)
    if k == "cosine":
        _check(
            ints["total"] > ints["warmup"],
            n,
            f"total must exceed warmup ({ints['warmup']})",
            total,
        )
    return LrSchedule(k, lr_f, ints["step_size"], gamma_f, min_f, ints["total"], ints["warmup"])


def lr_at(schedule: LrSchedule | Mapping[str, Any], t: int) -> float:
    """Learning rate at epoch or step ``t`` (0-based): a pure function of the settings."""
    if not isinstance(schedule, LrSchedule):
        schedule = make_schedule(**schedule)
    if t < 0:
        raise ValueError(f"lr_at: t must be >= 0, got {t}")
    sc = schedule
    if t < sc.warmup:
        return sc.lr * (t + 1) / (sc.warmup + 1)
    s = t - sc.warmup
    if sc.kind == "constant":
        return sc.lr
    if sc.kind == "step":
        return sc.lr * sc.gamma ** (s // sc.step_size)
    if sc.kind == "exponential":
        return sc.lr * sc.gamma**s
    span = sc.total - sc.warmup
    s = min(s, span)
    return sc.min_lr + (sc.lr - sc.min_lr) * (1.0 + math.cos(math.pi * s / span)) / 2.0
