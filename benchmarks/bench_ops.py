"""Micro-benchmark of the ops kernels on LeNet-5 and CIFAR-CNN shapes.

    python benchmarks/bench_ops.py [--batch 64] [--dtype float32] [--repeat 20] [--no-torch]

Prints per-op forward/backward microseconds (best of several runs: shared machines are
noisy and the best run is the one least disturbed), images/s of forward+backward,
and the sum over all ops of each model (a train step without the optimizer). If
``import torch`` works, the torch.nn.functional equivalents are timed the same way, with
``torch.set_num_threads(--threads)``, and the ratio ours/torch (lower is better) is shown.
Each op is timed in alternating blocks (ours, torch, ours, ...) and the best run is kept.
Nothing in cnncli depends on torch.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from cnncli.ops import activations, conv, losses, pool  # noqa: E402


def best_of(fn: Callable[[], object], repeat: int) -> float:
    """Best wall time in microseconds of ``repeat`` calls, after two warm-up calls."""
    for _ in range(2):
        fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.min(ts)) * 1e6


# ---------------------------------------------------------------------------------------
# layer builders: each returns (fwd, bwd, out_shape)
# ---------------------------------------------------------------------------------------


def ours_conv(shape, k, cout, pad, dtype, rng, first=False):
    n, c, h, w = shape
    x = rng.standard_normal(shape).astype(dtype)
    wt = (rng.standard_normal((cout, c, k, k)) * 0.1).astype(dtype)
    b = np.zeros(cout, dtype)
    y, cache = conv.conv2d_forward(x, wt, b, 1, pad)
    dy = rng.standard_normal(y.shape).astype(dtype)
    return (
        lambda: conv.conv2d_forward(x, wt, b, 1, pad),
        lambda: conv.conv2d_backward(dy, cache, need_dx=not first),
        y.shape,
    )


def ours_pool(shape, kind, dtype, rng):
    x = rng.standard_normal(shape).astype(dtype)
    y, cache = pool.pool2d_forward(x, kind, 2, 2)
    dy = rng.standard_normal(y.shape).astype(dtype)
    return (
        lambda: pool.pool2d_forward(x, kind, 2, 2),
        lambda: pool.pool2d_backward(dy, cache),
        y.shape,
    )


def ours_act(shape, name, dtype, rng):
    x = rng.standard_normal(shape).astype(dtype)
    y, cache = activations.forward(name, x)
    dy = rng.standard_normal(y.shape).astype(dtype)
    return (
        lambda: activations.forward(name, x),
        lambda: activations.backward(name, dy, cache),
        y.shape,
    )


def ours_dense(shape, out, dtype, rng):
    """Dense is the registry's layer; timed here as the same two GEMMs for a whole-model
    estimate (x @ w.T + b; dx = dy @ w, dw = dy.T @ x)."""
    n = shape[0]
    x = rng.standard_normal((n, int(np.prod(shape[1:])))).astype(dtype)
    w = (rng.standard_normal((out, x.shape[1])) * 0.1).astype(dtype)
    b = np.zeros(out, dtype)
    dy = rng.standard_normal((n, out)).astype(dtype)

    def bwd():
        return dy @ w, dy.T @ x, dy.sum(0)

    return (lambda: x @ w.T + b), bwd, (n, out)


def ours_loss(shape, dtype, rng):
    logits = rng.standard_normal(shape).astype(dtype)
    labels = rng.integers(0, shape[1], shape[0])
    return (lambda: losses.softmax_cross_entropy(logits, labels)), (lambda: None), ()


def torch_builders():
    import torch
    import torch.nn.functional as F

    def prep(a, grad=True):
        return torch.from_numpy(np.ascontiguousarray(a)).requires_grad_(grad)

    def wrap(fwd_fn, inputs, dy_shape, dtype, rng):
        dy = torch.from_numpy(rng.standard_normal(dy_shape).astype(dtype))
        y = fwd_fn()
        wants = [t for t in inputs if t.requires_grad]

        def bwd():
            return torch.autograd.grad(y, wants, dy, retain_graph=True)

        return fwd_fn, bwd

    def conv_(shape, k, cout, pad, dtype, rng, first=False):
        x = prep(rng.standard_normal(shape).astype(dtype), grad=not first)
        w = prep((rng.standard_normal((cout, shape[1], k, k)) * 0.1).astype(dtype))
        b = prep(np.zeros(cout, dtype))
        ho = shape[2] + 2 * pad - k + 1
        return wrap(
            lambda: F.conv2d(x, w, b, padding=pad),
            [x, w, b],
            (shape[0], cout, ho, shape[3] + 2 * pad - k + 1),
            dtype,
            rng,
        )

    def pool_(shape, kind, dtype, rng):
        x = prep(rng.standard_normal(shape).astype(dtype))
        f = F.max_pool2d if kind == "max" else F.avg_pool2d
        return wrap(lambda: f(x, 2, 2), [x], (*shape[:2], shape[2] // 2, shape[3] // 2), dtype, rng)

    def act_(shape, name, dtype, rng):
        x = prep(rng.standard_normal(shape).astype(dtype))
        f = {"relu": torch.relu, "tanh": torch.tanh}[name]
        return wrap(lambda: f(x), [x], shape, dtype, rng)

    def dense_(shape, out, dtype, rng):
        n = shape[0]
        x = prep(rng.standard_normal((n, int(np.prod(shape[1:])))).astype(dtype))
        w = prep((rng.standard_normal((out, x.shape[1])) * 0.1).astype(dtype))
        b = prep(np.zeros(out, dtype))
        return wrap(lambda: F.linear(x, w, b), [x, w, b], (n, out), dtype, rng)

    def loss_(shape, dtype, rng):
        logits = prep(rng.standard_normal(shape).astype(dtype))
        labels = torch.from_numpy(rng.integers(0, shape[1], shape[0]))

        def fwd():
            return F.cross_entropy(logits, labels)

        y = fwd()
        return fwd, (lambda: torch.autograd.grad(y, [logits], retain_graph=True))

    return {"conv": conv_, "pool": pool_, "act": act_, "dense": dense_, "loss": loss_}


# ---------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------


def lenet5(n):
    """(kind, label, args) per layer; shapes follow the golden lenet5 file (32x32 input)."""
    return [
        ("conv", "conv1 1->6 5x5 @32x32", ((n, 1, 32, 32), 5, 6, 0), {"first": True}),
        ("act", "tanh 6x28x28", ((n, 6, 28, 28), "tanh"), {}),
        ("pool", "avgpool 2x2 6x28x28", ((n, 6, 28, 28), "avg"), {}),
        ("conv", "conv2 6->16 5x5 @14x14", ((n, 6, 14, 14), 5, 16, 0), {}),
        ("act", "tanh 16x10x10", ((n, 16, 10, 10), "tanh"), {}),
        ("pool", "avgpool 2x2 16x10x10", ((n, 16, 10, 10), "avg"), {}),
        ("conv", "conv3 16->120 5x5 @5x5", ((n, 16, 5, 5), 5, 120, 0), {}),
        ("act", "tanh 120", ((n, 120, 1, 1), "tanh"), {}),
        ("dense", "dense 120->84 (GEMM)", ((n, 120), 84), {}),
        ("act", "tanh 84", ((n, 84), "tanh"), {}),
        ("dense", "dense 84->10 (GEMM)", ((n, 84), 10), {}),
        ("loss", "softmax cross-entropy", ((n, 10),), {}),
    ]


def cifar_cnn(n):
    return [
        ("conv", "conv 3->32 3x3 same @32x32", ((n, 3, 32, 32), 3, 32, 1), {"first": True}),
        ("act", "relu 32x32x32", ((n, 32, 32, 32), "relu"), {}),
        ("conv", "conv 32->32 3x3 same @32x32", ((n, 32, 32, 32), 3, 32, 1), {}),
        ("act", "relu 32x32x32", ((n, 32, 32, 32), "relu"), {}),
        ("pool", "maxpool 2x2 32x32x32", ((n, 32, 32, 32), "max"), {}),
        ("conv", "conv 32->64 3x3 same @16x16", ((n, 32, 16, 16), 3, 64, 1), {}),
        ("act", "relu 64x16x16", ((n, 64, 16, 16), "relu"), {}),
        ("conv", "conv 64->64 3x3 same @16x16", ((n, 64, 16, 16), 3, 64, 1), {}),
        ("act", "relu 64x16x16", ((n, 64, 16, 16), "relu"), {}),
        ("pool", "maxpool 2x2 64x16x16", ((n, 64, 16, 16), "max"), {}),
        ("dense", "dense 4096->512 (GEMM)", ((n, 4096), 512), {}),
        ("act", "relu 512", ((n, 512), "relu"), {}),
        ("dense", "dense 512->10 (GEMM)", ((n, 512), 10), {}),
        ("loss", "softmax cross-entropy", ((n, 10),), {}),
    ]


OURS = {"conv": ours_conv, "pool": ours_pool, "act": ours_act, "dense": ours_dense}


def run_model(title, layers, n, dtype, repeat, rounds, theirs):
    """Time every layer in ``rounds`` alternating blocks (ours, torch, ours, ...) of
    ``repeat`` runs each and keep the best, so that load from other processes on a shared
    machine hits both sides alike, while neither thread pool spins during the other's runs.
    """
    rng = np.random.default_rng(0)
    rows = []
    for kind, label, args, kw in layers:
        build = ours_loss if kind == "loss" else OURS[kind]
        f, b, _ = build(*args, dtype, rng, **kw)
        tf, tb = (theirs[kind](*args, dtype, rng, **kw)) if theirs else (None, None)
        best = {"f": [], "b": [], "tf": [], "tb": []}
        for _ in range(rounds):
            best["f"].append(best_of(f, repeat))
            best["b"].append(best_of(b, repeat))
            if theirs:
                best["tf"].append(best_of(tf, repeat))
                best["tb"].append(best_of(tb, repeat))
        rows.append((label, {k: min(v) if v else None for k, v in best.items()}))

    print(f"\n{title} (batch {n}, {np.dtype(dtype).name}; best of {rounds}x{repeat} runs, us)")
    head = f"{'op':30s} {'fwd':>7s} {'bwd':>7s} {'img/s':>9s}"
    if theirs is not None:
        head += f" | {'torch fwd':>9s} {'torch bwd':>9s} {'ours/torch':>10s}"
    print(head)
    tot = np.zeros(4)
    for label, t in rows:
        f, b = t["f"], t["b"]
        line = f"{label:30s} {f:7.0f} {b:7.0f} {n / (f + b) * 1e6:9.0f}"
        tot[:2] += (f, b)
        if theirs is not None:
            tf, tb = t["tf"], t["tb"]
            line += f" | {tf:9.0f} {tb:9.0f} {(f + b) / (tf + tb):10.2f}"
            tot[2:] += (tf, tb)
        print(line)
    line = f"{'sum of ops':30s} {tot[0]:7.0f} {tot[1]:7.0f} {n / (tot[0] + tot[1]) * 1e6:9.0f}"
    if theirs is not None:
        line += f" | {tot[2]:9.0f} {tot[3]:9.0f} {(tot[0] + tot[1]) / (tot[2] + tot[3]):10.2f}"
    print(line)
    if theirs is not None:
        print(
            f"images/s (sum of ops): cnncli {n / tot[:2].sum() * 1e6:.0f}, "
            f"torch {n / tot[2:].sum() * 1e6:.0f}"
        )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--repeat", type=int, default=10, help="runs per timing block")
    ap.add_argument("--rounds", type=int, default=3, help="alternating blocks per op")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--model", choices=["lenet5", "cifar", "all"], default="all")
    args = ap.parse_args(argv)
    dtype = np.dtype(args.dtype).type

    theirs = None
    if not args.no_torch:
        try:
            import torch

            torch.set_num_threads(args.threads)
            theirs = torch_builders()
        except ImportError:
            print("torch not installed: timing cnncli only")
    if args.model in ("lenet5", "all"):
        run_model(
            "LeNet-5", lenet5(args.batch), args.batch, dtype, args.repeat, args.rounds, theirs
        )
    if args.model in ("cifar", "all"):
        run_model(
            "CIFAR CNN", cifar_cnn(args.batch), args.batch, dtype, args.repeat, args.rounds, theirs
        )


if __name__ == "__main__":
    main()
