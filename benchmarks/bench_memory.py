"""Training memory: the estimate of ``cnn shapes --memory`` vs the measured peak RSS.

For LeNet-5, the CIFAR CNN and ResNet-18 at 64x64 (batch 32, sgd momentum 0.9, one
thread), each in a fresh subprocess: the kernels are compiled/loaded first by a batch-2
warm-up step of the same network (so JIT code is not counted), the peak RSS is reset
(/proc/self/clear_refs, Linux), then the model is built and trained for 3 steps on
random data; measured = VmHWM - VmRSS before building. Prints both, the ratio
(measured / estimate), the conv/pool scratch workspaces the model holds afterwards
(measured: the estimate does not model them yet) and the ratio with them added.

    python benchmarks/bench_memory.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = [("lenet5", None), ("cifar_cnn", None), ("resnet18", (64, 64, 3))]
BATCH = 32

CHILD = r"""
import gc, json, sys
import numpy as np
from cnncli.engine.model import build_model
from cnncli.ops import _threads
from cnncli.optim import make_optimizer
from cnncli.train.loop import train_step

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

arch, shape, batch = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
shape = tuple(shape) if shape else None
_threads.set_workers(1)
rng = np.random.default_rng(0)

def steps(n, b):
    m = build_model(arch, input_shape=shape, seed=0)
    opt = make_optimizer("sgd", lr=0.01, momentum=0.9)
    c, h, w = m.input_shape
    classes = m.network.output[0]
    for _ in range(n):
        x = rng.normal(size=(b, c, h, w)).astype(np.float32)
        y = rng.integers(0, classes, size=b)
        train_step(m, opt, x, y)
    return m, opt

steps(1, 2)  # warm-up: compiles / loads every kernel this network uses
gc.collect()
before = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
m, opt = steps(3, batch)
peak = status("VmHWM")
ws = sum(a.nbytes for a in m.workspaces.values())
print(json.dumps({"measured": peak - before, "workspaces": ws}))
"""


def main() -> None:
    from cnncli.shapes import shapes

    print(f"{'network':<12}{'estimate MiB':>14}{'measured MiB':>14}{'ratio':>8}"
          f"{'workspaces MiB':>16}{'ratio with them':>17}")
    for name, shape in CASES:
        spec = ROOT / "architectures" / f"{name}.yaml"
        m = shapes(spec, input_shape=shape, batch=BATCH, optimizer="sgd")["totals"]["memory"]
        # a fixed mmap threshold: freed large arrays go back to the OS (glibc otherwise
        # raises it after the warm-up frees, keeping that memory resident for reuse)
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
        out = subprocess.run([sys.executable, "-c", CHILD, str(spec), json.dumps(shape),
                              str(BATCH)], capture_output=True, text=True, check=True,
                             cwd=ROOT, env=env)
        got = json.loads(out.stdout.strip().splitlines()[-1])
        est, meas = m["total_bytes"], got["measured"]
        mib = 1 << 20
        ws = got["workspaces"]  # measured (model.workspaces): not in the estimate
        print(f"{name:<12}{est / mib:>14.2f}{meas / mib:>14.2f}{meas / est:>8.3f}"
              f"{ws / mib:>16.2f}{meas / (est + ws):>17.3f}")
        parts = ", ".join(f"{k[:-6]} {m[k] / mib:.2f}" for k in (
            "param_bytes", "grad_bytes", "optimizer_bytes", "kept_bytes", "transient_bytes"))
        print(f"{'':<12}estimate parts (MiB): {parts}")


if __name__ == "__main__":
    main()
