"""Start-up of the ``cnn`` command: cold (empty Numba cache) and warm wall time, as a table.

Usage::

    python benchmarks/bench_startup.py [--repeat R] [--kernels] [--light]

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

Targets (issue 13): augment cold <= 5 s, train first batch cold <= 2.5 s, ``--help`` and
``shapes`` within 2.5x of the import floor.
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
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
