"""Data-parallel training over MPI on this machine: 1 process vs ``mpiexec -n 2``.

The same network, data, global batch size and epochs, alternating rounds; prints training
images/s of both and the ratio (2 ranks / 1 process), and the bytes each rank sends per
step (4 per parameter). On one machine both runs have the same cores (one process uses them
all as threads, two ranks take half each), so the ratio shows what the split costs or gains
here; across machines each rank brings its own cores.

    python benchmarks/bench_mpi.py                 # LeNet-5 on MNIST, CIFAR CNN on noise
    python benchmarks/bench_mpi.py --rounds 3 --images 2048
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _mpiexec() -> str:
    here = Path(sys.executable).parent / "mpiexec"
    found = str(here) if here.exists() else shutil.which("mpiexec")
    if not found:
        sys.exit("mpiexec not found: pip install 'cnncli[mpi]'")
    return found


def _data(folder: Path, images: int) -> dict[str, Path]:
    from cnncli.data.idx import read_idx_images, read_idx_labels

    mnist = ROOT / "sample_data" / "mnist"
    x = read_idx_images(mnist / "train-images-idx3-ubyte.gz")[:images]
    y = read_idx_labels(mnist / "train-labels-idx1-ubyte.gz")[:images]
    np.savez(folder / "mnist.npz", x_train=x, y_train=y)
    rng = np.random.default_rng(0)
    n = images // 4  # the CIFAR CNN is ~60x LeNet-5's work per image
    np.savez(folder / "noise.npz", x_train=rng.integers(0, 256, (n, 32, 32, 3), np.uint8),
             y_train=rng.integers(0, 10, n))
    return {"lenet5": folder / "mnist.npz", "cifar_cnn": folder / "noise.npz"}


def _train(ranks: int, arch: str, data: Path, out: Path, batch: int) -> float:
    cmd = [sys.executable, "-m", "cnncli.cli.main", "train", "--arch",
           str(ROOT / "architectures" / f"{arch}.yaml"), "--data", str(data), "--epochs", "1",
           "--batch-size", str(batch), "--val-split", "0", "--out", str(out), "--overwrite",
           "--format", "json", "--quiet"]
    if ranks > 1:
        cmd = [_mpiexec(), "-n", str(ranks), *cmd]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["train_images_per_second"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--images", type=int, default=2048, help="MNIST images (CIFAR CNN: 1/4)")
    ap.add_argument("--batch", type=int, default=64, help="global batch size")
    args = ap.parse_args()
    from cnncli.engine.model import build_model

    print(f"cores: {len(os.sched_getaffinity(0))}, global batch {args.batch}, "
          f"{args.rounds} rounds (median)")
    print(f"{'network':<10} {'params':>10} {'bytes/step':>11} {'1 proc img/s':>13} "
          f"{'2 ranks img/s':>14} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        sets = _data(Path(tmp), args.images)
        for arch, data in sets.items():
            params = build_model(ROOT / "architectures" / f"{arch}.yaml").num_params
            _train(1, arch, data, Path(tmp) / "warm", args.batch)  # compile caches
            figures: dict[int, list[float]] = {1: [], 2: []}
            for _ in range(args.rounds):
                for ranks in (1, 2):
                    figures[ranks].append(_train(ranks, arch, data, Path(tmp) / f"r{ranks}",
                                                 args.batch))
            one, two = (statistics.median(figures[r]) for r in (1, 2))
            print(f"{arch:<10} {params:>10,} {4 * params:>11,} {one:>13,.0f} {two:>14,.0f} "
                  f"{two / one:>6.2f}")


if __name__ == "__main__":
    main()
