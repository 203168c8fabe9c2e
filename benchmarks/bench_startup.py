"""Start-up of the ``cnn`` command: cold (empty Numba cache) and warm wall time, as a table.

Usage::

    python benchmarks/bench_startup.py [--repeat R] [--kernels] [--light] [--torchinfo]

Each row is one whole process, timed from just before it starts:

* ``python -c "import typer, yaml"``: the floor the light commands are measured against;
* ``cnn --help`` and ``cnn shapes architectures/resnet50.yaml -f json`` (no Numba at all);
* ``cnn train --arch architectures/lenet5.yaml --epochs 1`` to its first batch (the
  ``first_batch_time`` of ``--format json``) and to its end;
* ``cnn augment sample_data/images --out X -n 2`` (37 images) to its end.

"cold" runs every command with ``NUMBA_CACHE_DIR`` (and ``CNNCLI_CACHE_DIR``) pointing at a
new empty folder, as on a fresh install or CI; "warm" reruns it with the cache the cold run
filled. Each figure is the best of ``--repeat`` runs (default 3; the machine may be shared),
the runs taking turns. The ``x floor`` column is warm time over the import floor's.

``--light`` times only the floor, ``--help`` and ``shapes`` (seconds, no Numba), for a quick
check of the light commands on a machine that is busy with other work.

``--kernels`` also lists, for the train and augment commands, each kernel specialisation
compiled on the cold run and its compile time (numba's ``numba:compile`` events, in process).

``--torchinfo`` (needs torch and torchinfo, never cnncli dependencies) also times, as whole
processes, torchinfo's summary of ResNet-50 built in plain PyTorch against ``cnn shapes
architectures/resnet50.yaml`` with ``-f json`` and as the table.

Targets (issue 13): augment cold <= 5 s, train first batch cold <= 2.5 s, ``--help`` and
``shapes`` within 2.5x of the import floor, ``shapes`` >= 8x faster than torchinfo.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: In-process runner for --kernels: the command's compile events, slowest first, on stderr.
KERNEL_PROBE = r"""
import sys, time
from numba.core import event
starts, rows, depth = {}, [], [0]
class Probe(event.Listener):
    def on_start(self, ev):
        starts[id(ev.data["dispatcher"]), str(ev.data["args"])] = time.perf_counter()
        depth[0] += 1
    def on_end(self, ev):
        depth[0] -= 1
        d = ev.data["dispatcher"]
        t = time.perf_counter() - starts.pop((id(d), str(ev.data["args"])))
        if d.py_func.__module__.startswith("cnncli"):
            arrays = str(ev.data["args"]).count("Array(")
            rows.append((t, d.py_func.__module__ + "." + d.py_func.__name__, arrays,
                         depth[0]))
event.register("numba:compile", Probe())
from cnncli.cli.main import main
sys.argv = ["cnn"] + sys.argv[1:]
try:
    main()
except SystemExit:
    pass
for t, name, arrays, level in sorted(rows, reverse=True):
    inner = ", called by another kernel: included in its time" if level else ""
    print(f"KERNEL {t:.3f} {name} ({arrays} array args{inner})", file=sys.stderr)
"""


#: ResNet-50 in plain PyTorch, summarised by torchinfo (``--torchinfo``): what a PyTorch
#: user runs to get the table ``cnn shapes architectures/resnet50.yaml`` prints.
TORCHINFO = """\
import torch
from torch import nn
from torchinfo import summary
class Bottleneck(nn.Module):
    def __init__(self, cin, mid, stride):
        super().__init__()
        out = mid * 4
        self.f = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, out, 1, bias=False), nn.BatchNorm2d(out))
        self.d = (nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))
                  if stride != 1 or cin != out else nn.Identity())
    def forward(self, x):
        return torch.relu(self.f(x) + self.d(x))
layers, cin = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
               nn.MaxPool2d(3, 2, 1)], 64
for mid, n, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
    for i in range(n):
        layers.append(Bottleneck(cin, mid, stride if i == 0 else 1))
        cin = mid * 4
net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000))
summary(net, input_size=(1, 3, 224, 224), depth=3)
"""


def torchinfo_ratio(tmp: Path, repeat: int) -> None:
    """Whole processes, best of ``repeat``: torchinfo on ResNet-50 against cnn shapes
    (JSON and the terminal table); needs torch and torchinfo, never a cnncli dependency."""
    import importlib.util

    if not all(importlib.util.find_spec(m) for m in ("torch", "torchinfo")):
        print("\n--torchinfo: torch and torchinfo are not installed (pip install "
              "torch==2.13.0 torchinfo)")
        return
    script = tmp / "torchinfo_resnet50.py"
    script.write_text(TORCHINFO)
    cnn = [sys.executable, "-m", "cnncli.cli.main", "shapes", "architectures/resnet50.yaml"]
    cmds = {"torchinfo summary": [sys.executable, str(script)],
            "cnn shapes -f json": cnn + ["-f", "json"], "cnn shapes (table)": cnn}
    best: dict[str, float] = {}
    for _ in range(max(1, repeat)):
        for name, cmd in cmds.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, cwd=ROOT, capture_output=True, check=True)
            best[name] = min(best.get(name, 1e9), time.perf_counter() - t0)
    ti = best["torchinfo summary"]
    print(f"\nResNet-50 summary, whole processes (best of {repeat}): torchinfo {ti:.2f} s")
    for name in list(cmds)[1:]:
        print(f"  {name:20} {best[name]:.3f} s  {ti / best[name]:5.1f}x faster (target >= 8x)")


def commands(tmp: Path) -> list[tuple[str, list[str]]]:
    cnn = [sys.executable, "-m", "cnncli.cli.main"]
    return [
        ("import typer, yaml (floor)", [sys.executable, "-c", "import typer, yaml"]),
        ("cnn --help", cnn + ["--help"]),
        ("cnn shapes resnet50 -f json", cnn + ["shapes", "architectures/resnet50.yaml",
                                               "-f", "json"]),
        ("cnn train lenet5 (first batch)", cnn + ["train", "--arch", "architectures/lenet5.yaml",
                                                  "--epochs", "1", "-q", "-f", "json",
                                                  "--out", str(tmp / "run")]),
        ("cnn augment sample -n 2", cnn + ["augment", "sample_data/images", "--out",
                                           str(tmp / "aug"), "-n", "2"]),
    ]


def run_once(label: str, cmd: list[str], tmp: Path, cache: Path) -> tuple[float, float | None]:
    """(wall seconds to the end, seconds to the first batch or None) of one process."""
    for name in ("run", "aug"):
        shutil.rmtree(tmp / name, ignore_errors=True)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache / "numba"),
               CNNCLI_CACHE_DIR=str(cache / "cnncli"), PYTHONPATH=str(ROOT))
    env.pop("COLUMNS", None)
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        sys.exit(f"{label} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    first = None
    if "first batch" in label:
        first = json.loads(proc.stdout)["first_batch_time"] - t0
    return wall, first


def kernels(tmp: Path) -> None:
    """Per-kernel compile times of the train and augment commands on an empty cache."""
    for label, cmd in commands(tmp)[3:]:
        cache = Path(tempfile.mkdtemp(dir=tmp))
        for name in ("run", "aug"):
            shutil.rmtree(tmp / name, ignore_errors=True)
        env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), PYTHONPATH=str(ROOT))
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-c", KERNEL_PROBE] + cmd[3:], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        wall = time.time() - t0
        rows = [ln[7:] for ln in proc.stderr.splitlines() if ln.startswith("KERNEL ")]
        total = sum(float(r.split()[0]) for r in rows if "called by" not in r)
        print(f"\n{label}: {len(rows)} kernel compiles, {total:.2f} s of {wall:.2f} s wall")
        for r in rows:
            print(f"  {r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="best of R runs (default 3)")
    ap.add_argument("--kernels", action="store_true", help="per-kernel compile times too")
    ap.add_argument("--light", action="store_true",
                    help="only the import floor, --help and shapes (no train, no augment)")
    ap.add_argument("--torchinfo", action="store_true",
                    help="also torchinfo's ResNet-50 summary against cnn shapes")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cnn-startup-"))
    try:
        cmds = commands(tmp)[:3] if args.light else commands(tmp)
        best: dict[tuple[str, str], float] = {}
        for _ in range(max(1, args.repeat)):
            for label, cmd in cmds:
                cache = Path(tempfile.mkdtemp(dir=tmp))
                for state in ("cold", "warm"):
                    wall, first = run_once(label, cmd, tmp, cache)
                    for key, v in ((state, wall), (state + " first", first)):
                        if v is not None:
                            k = (label, key)
                            best[k] = min(best.get(k, v), v)
                shutil.rmtree(cache, ignore_errors=True)
        floor = best[(cmds[0][0], "warm")]
        print(f"best of {args.repeat}, seconds; python {sys.version.split()[0]}, "
              f"{os.cpu_count()} CPUs")
        print(f"{'command':32} {'cold':>7} {'warm':>7} {'x floor':>8}")
        for label, _ in cmds:
            if (label, "cold first") in best:
                print(f"{label:32} {best[(label, 'cold first')]:7.2f} "
                      f"{best[(label, 'warm first')]:7.2f} "
                      f"{best[(label, 'warm first')] / floor:8.1f}")
                label_end = label.replace("(first batch)", "(to end)")
                print(f"{label_end:32} {best[(label, 'cold')]:7.2f} {best[(label, 'warm')]:7.2f} "
                      f"{best[(label, 'warm')] / floor:8.1f}")
                continue
            print(f"{label:32} {best[(label, 'cold')]:7.2f} {best[(label, 'warm')]:7.2f} "
                  f"{best[(label, 'warm')] / floor:8.1f}")
        if args.kernels and not args.light:
            kernels(tmp)
        if args.torchinfo:
            torchinfo_ratio(tmp, args.repeat)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
