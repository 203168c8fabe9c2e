"""Engine speed against PyTorch, side by side in one process (issue: engine speed).

Trains the same network on the same data with the same batch size, optimiser and initial
weights in cnncli's engine and in PyTorch, alternating rounds, and prints images/s for
both and the ratio. Absolute figures drift on shared machines; the ratios are the result.

    python benchmarks/train_vs_torch.py              # both cores
    python benchmarks/train_vs_torch.py --scaling    # also 1 thread vs 2, in subprocesses
    python benchmarks/train_vs_torch.py --memory --startup

Without PyTorch (``pip install torch==2.13.0``) only our figures are printed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _set_threads(n: int | None) -> None:
    """Thread counts must be fixed before NumPy/Numba/PyTorch start their pools."""
    if n is None:
        return
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def torch_model(model, torch):
    """The same network in PyTorch, with our initial weights copied in (torch_twin.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from torch_twin import torch_twin

    return torch_twin(model, torch)


def ours_train_epoch(model, opt, x, y, bs):
    from cnncli.train.loop import train_step

    t0 = time.perf_counter()
    for lo in range(0, len(y), bs):
        train_step(model, opt, x[lo:lo + bs], y[lo:lo + bs])
    return len(y) / (time.perf_counter() - t0)


def torch_train_epoch(net, opt, x, y, bs, torch):
    loss_fn = torch.nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    for lo in range(0, len(y), bs):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x[lo:lo + bs]), y[lo:lo + bs])
        loss.backward()
        opt.step()
    return len(y) / (time.perf_counter() - t0)


def ours_forward(model, x, bs):
    t0 = time.perf_counter()
    for lo in range(0, len(x), bs):
        model.forward(x[lo:lo + bs], training=False, logits=True)
    model.release()
    return len(x) / (time.perf_counter() - t0)


def torch_forward(net, x, bs, torch):
    t0 = time.perf_counter()
    with torch.no_grad():
        for lo in range(0, len(x), bs):
            net(x[lo:lo + bs])
    return len(x) / (time.perf_counter() - t0)


def workload(name, spec, x, y, x_eval, rounds, bs, eval_bs, lr, input_shape=None):
    import numpy as np

    from cnncli.engine import build_model
    from cnncli.optim import make_optimizer

    torch = _torch()
    model = build_model(spec, seed=0, input_shape=input_shape)
    net = torch_model(model, torch) if torch else None
    opt = make_optimizer("sgd", lr=lr, momentum=0.9)
    if torch:
        topt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
        tx, ty, tex = (torch.from_numpy(a) for a in (x, y, x_eval))
    # warm-up, both sides alike: compile, allocate, start thread pools
    ours_train_epoch(model, opt, x[: bs * 4], y[: bs * 4], bs)
    ours_forward(model, x_eval[: eval_bs * 2], eval_bs)
    if torch:
        torch_train_epoch(net, topt, tx[: bs * 4], ty[: bs * 4], bs, torch)
        torch_forward(net, tex[: eval_bs * 2], eval_bs, torch)
    res = {"ours_train": [], "torch_train": [], "ours_eval": [], "torch_eval": []}
    for _ in range(rounds):
        res["ours_train"].append(ours_train_epoch(model, opt, x, y, bs))
        if torch:
            net.train()
            res["torch_train"].append(torch_train_epoch(net, topt, tx, ty, bs, torch))
        res["ours_eval"].append(ours_forward(model, x_eval, eval_bs))
        if torch:
            net.eval()
            res["torch_eval"].append(torch_forward(net, tex, eval_bs, torch))
    macs = sum(n.macs for top in model.network.nodes for n in top.walk())
    out = {"name": name, "batch": bs, "eval_batch": eval_bs, "macs_per_image": macs}
    for k, v in res.items():
        out[k] = statistics.median(v) if v else None
    for kind in ("train", "eval"):
        t = out[f"torch_{kind}"]
        out[f"ratio_{kind}"] = out[f"ours_{kind}"] / t if t else None
    del np
    return out


#: The networks people train next (issue 11): shipped spec, input size, batches per round.
GENERAL = {
    "resnet18-32": ("ResNet-18 32x32x3", "resnet18", (32, 32, 3), 6),
    "resnet18-64": ("ResNet-18 64x64x3", "resnet18", (64, 64, 3), 3),
    "mobilenetv2-64": ("MobileNetV2 64x64x3", "mobilenet_v2", (64, 64, 3), 3),
    "vgg16-32": ("VGG-16 32x32x3", "vgg16", (32, 32, 3), 2),
}
WORKLOADS = ("lenet", "cifar", *GENERAL)


def run_all(rounds: int, which: tuple[str, ...] = WORKLOADS) -> list[dict]:
    import numpy as np

    from cnncli.data.dataset import load_dataset

    results = []
    if "lenet" in which:
        splits = load_dataset(ROOT / "sample_data/mnist", (32, 32, 1))
        results.append(workload("LeNet-5 (MNIST 4,000 train)", ROOT / "architectures/lenet5.yaml",
                                splits.train.x, splits.train.y, splits.test.x, rounds, 64, 1000,
                                0.05))
    rng = np.random.default_rng(0)
    if "cifar" in which:
        xc = rng.standard_normal((1024, 3, 32, 32)).astype(np.float32)
        yc = rng.integers(0, 10, 1024).astype(np.int64)
        cifar = ROOT / "architectures/cifar_cnn.yaml"
        results.append(workload("CIFAR-sized CNN (random 32x32x3)", cifar, xc, yc, xc[:512],
                                rounds, 64, 64, 0.01))
    for key in (k for k in GENERAL if k in which):
        label, arch, (h, w, c), batches = GENERAL[key]
        x = rng.standard_normal((32 * batches, c, h, w)).astype(np.float32)
        y = rng.integers(0, 1000, 32 * batches).astype(np.int64)
        results.append(workload(f"{label} (batch 32)", ROOT / f"architectures/{arch}.yaml",
                                x, y, x, rounds, 32, 32, 0.01, input_shape=(h, w, c)))
    return results


def path_table(key: str) -> None:
    """The kernel path the plan chose for every conv of a workload, and its times."""
    from cnncli.engine import build_model
    from cnncli.engine.timing import time_layers

    _, arch, shape, _ = GENERAL[key]
    model = build_model(ROOT / f"architectures/{arch}.yaml", input_shape=shape)
    rep = time_layers(model, batch=32, iterations=3)
    print(f"\n{key}: per-layer paths (batch 32, first part's ms)")
    for r in rep["layers"]:
        if r["type"] in ("sequential", "residual", "parallel") or r["fused_into"]:
            continue
        gf = "" if r["gflops"] is None else f"{r['gflops']:6.0f} GFLOP/s"
        print(f"  {r['name']:28} {r['type']:11} {r['path'][:40]:40} "
              f"{r['forward_ms']:7.2f} {r['backward_ms']:7.2f} ms {gf}")


def gemm_gflops() -> float:
    import numpy as np

    a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32)
    a @ a
    t0 = time.perf_counter()
    for _ in range(3):
        a @ a
    return 3 * 2 * 2048**3 / (time.perf_counter() - t0) / 1e9


def _fmt(v):
    return "-" if v is None else f"{v:,.0f}"


def print_table(results: list[dict], title: str) -> None:
    print(f"\n{title}")
    print(f"{'workload':36} {'what':6} {'cnncli img/s':>13} {'torch img/s':>12} {'ratio':>7}")
    for r in results:
        for kind, label in (("train", "train"), ("eval", "fwd")):
            ratio = r[f"ratio_{kind}"]
            print(f"{r['name']:36} {label:6} {_fmt(r[f'ours_{kind}']):>13} "
                  f"{_fmt(r[f'torch_{kind}']):>12} {'-' if ratio is None else f'{ratio:.2f}x':>7}")


def _child(args: list[str], threads: int) -> dict:
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMBA_NUM_THREADS"):
        env[var] = str(threads)
    out = subprocess.run([sys.executable, __file__, "--json", "--threads", str(threads), *args],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def measure_process(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of a child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"benchmark: {' '.join(cmd)} failed ({status})")
    return time.perf_counter() - t0, usage.ru_maxrss / 1024


TORCH_LENET = r'''
import gzip, sys, numpy as np, torch
torch.set_num_threads(2)
d = sys.argv[1]
def idx(p, off):
    return np.frombuffer(gzip.open(p).read(), np.uint8, offset=off)
x = idx(d + "/train-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28).astype(np.float32) / 255
y = idx(d + "/train-labels-idx1-ubyte.gz", 8).astype(np.int64)
x = torch.from_numpy((x - 0.1307) / 0.3081); y = torch.from_numpy(y)
nn = torch.nn
net = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2), nn.Conv2d(6, 16, 5),
    nn.Tanh(), nn.AvgPool2d(2), nn.Conv2d(16, 120, 5), nn.Tanh(), nn.Flatten(), nn.Linear(120, 84),
    nn.Tanh(), nn.Linear(84, 10))
opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
for epoch in range(int(sys.argv[2])):
    perm = torch.randperm(len(y))
    for lo in range(0, len(y), 64):
        i = perm[lo:lo + 64]
        opt.zero_grad()
        nn.functional.cross_entropy(net(x[i]), y[i]).backward()
        opt.step()
'''


TORCH_RESNET18 = r'''
import sys, numpy as np, torch
torch.set_num_threads(2)
nn = torch.nn
class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False); self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False); self.b2 = nn.BatchNorm2d(cout)
        self.down = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
    def forward(self, x):
        s = x if self.down is None else self.down(x)
        return torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x))))) + s)
layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
          nn.MaxPool2d(3, 2, 1)]
cin = 64
for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
    layers += [Block(cin, cout, stride), Block(cout, cout, 1)]; cin = cout
net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000))
opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
x = torch.randn(32, 3, 64, 64); y = torch.randint(0, 1000, (32,))
for _ in range(int(sys.argv[1])):
    opt.zero_grad(); nn.functional.cross_entropy(net(x), y).backward(); opt.step()
'''

OURS_RESNET18 = r'''
import sys, numpy as np
from cnncli.engine import build_model
from cnncli.optim import make_optimizer
from cnncli.train.loop import train_step
model = build_model(sys.argv[2], input_shape=(64, 64, 3))
opt = make_optimizer("sgd", lr=0.01, momentum=0.9)
rng = np.random.default_rng(0)
x = rng.standard_normal((32, 3, 64, 64)).astype(np.float32)
y = rng.integers(0, 1000, 32)
for _ in range(int(sys.argv[1])):
    train_step(model, opt, x, y)
'''


def memory_and_startup(memory: bool, startup: bool) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="cnnbench-"))
    try:
        cmd = [sys.executable, "-m", "cnncli.cli.main", "train", "--arch",
               str(ROOT / "architectures/lenet5.yaml"), "--data", str(ROOT / "sample_data/mnist"),
               "--epochs", "2", "--quiet", "--format", "json"]
        if memory:
            _, ours = measure_process(cmd + ["--out", str(tmp / "mem")])
            print(f"\npeak RSS, LeNet-5 2 epochs: cnn train {ours:,.0f} MiB", end="")
            if importlib.util.find_spec("torch") is not None:
                script = tmp / "torch_lenet.py"
                script.write_text(TORCH_LENET)
                _, theirs = measure_process([sys.executable, str(script),
                                             str(ROOT / "sample_data/mnist"), "2"])
                print(f", PyTorch script {theirs:,.0f} MiB (ratio {ours / theirs:.2f})")
            else:
                print()
            ours_py, torch_py = tmp / "ours_r18.py", tmp / "torch_r18.py"
            ours_py.write_text(OURS_RESNET18)
            _, ours = measure_process([sys.executable, str(ours_py), "5",
                                       str(ROOT / "architectures/resnet18.yaml")])
            print(f"peak RSS, ResNet-18 64x64 batch 32, 5 training steps: cnncli {ours:,.0f} MiB",
                  end="")
            if importlib.util.find_spec("torch") is not None:
                torch_py.write_text(TORCH_RESNET18)
                _, theirs = measure_process([sys.executable, str(torch_py), "5"])
                print(f", PyTorch {theirs:,.0f} MiB (ratio {ours / theirs:.2f})")
            else:
                print()
        if startup:
            cache = tmp / "numba-cache"
            env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
            for label in ("cold (empty Numba cache)", "warm (cached kernels)"):
                out = tmp / f"start-{len(list(tmp.iterdir()))}"
                t0 = time.time()
                proc = subprocess.run(cmd[:-5] + ["--epochs", "1", "--quiet", "--format", "json",
                                                  "--out", str(out)],
                                      env=env, capture_output=True, text=True, check=True)
                first = json.loads(proc.stdout)["first_batch_time"]
                print(f"time to first batch, {label}: {first - t0:.2f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds per workload")
    ap.add_argument("--threads", type=int, default=None, help="threads for NumPy/Numba/PyTorch")
    ap.add_argument("--scaling", action="store_true", help="also run with 1 and 2 threads")
    ap.add_argument("--memory", action="store_true", help="peak RSS of cnn train vs PyTorch")
    ap.add_argument("--startup", action="store_true", help="time to first batch, cold and warm")
    ap.add_argument("--json", action="store_true", help="print results as JSON (for --scaling)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS),
                    help=f"comma-separated subset of {', '.join(WORKLOADS)}")
    ap.add_argument("--paths", action="store_true",
                    help="also print the per-layer kernel paths of the general networks")
    args = ap.parse_args()
    _set_threads(args.threads)
    if args.memory or args.startup:
        # first, while this process is small: a child's peak RSS (ru_maxrss) starts from
        # the parent's size at fork/exec, so a parent holding PyTorch would mask it
        memory_and_startup(args.memory, args.startup)
    torch = _torch()
    if torch and args.threads:
        torch.set_num_threads(args.threads)
    which = tuple(w.strip() for w in args.workloads.split(",") if w.strip())
    bad = [w for w in which if w not in WORKLOADS]
    if bad:
        raise SystemExit(f"unknown workload(s) {', '.join(bad)}; "
                         f"choose from {', '.join(WORKLOADS)}")
    if args.scaling:
        one = _child(["--rounds", str(args.rounds), "--workloads", args.workloads], 1)
        two = _child(["--rounds", str(args.rounds), "--workloads", args.workloads], 2)
        print_table(one["results"], "1 thread")
        print_table(two["results"], "2 threads")
        print("\nspeed-up from 1 to 2 threads (cnncli / torch):")
        for a, b in zip(one["results"], two["results"]):
            for kind in ("train", "eval"):
                ours = b[f"ours_{kind}"] / a[f"ours_{kind}"]
                theirs = (b[f"torch_{kind}"] / a[f"torch_{kind}"]) if a[f"torch_{kind}"] else None
                print(f"  {a['name']:36} {kind:5} {ours:.2f}x / "
                      f"{'-' if theirs is None else f'{theirs:.2f}x'}")
    else:
        results = run_all(args.rounds, which)
        if args.json:
            print(json.dumps({"results": results}))
            return
        threads = args.threads or (torch.get_num_threads() if torch else os.cpu_count())
        print_table(results, f"{threads} thread(s); median of {args.rounds} alternating rounds"
                    + ("" if torch else " (PyTorch not installed: no comparison)"))
        gf = gemm_gflops()
        print(f"\nNumPy float32 GEMM here: {gf:,.0f} GFLOP/s. Training rate counted as direct "
              "convolution (3 products of 2 FLOPs per multiply-add; Winograd does fewer):")
        for r in results:
            flops = 6 * r["macs_per_image"]
            rate = r["ours_train"] * flops / 1e9
            print(f"  {r['name']:36} {rate:6,.0f} GFLOP/s = {100 * rate / gf:3.0f}% of GEMM")
        if args.paths:
            for key in (k for k in GENERAL if k in which):
                path_table(key)


if __name__ == "__main__":
    main()
