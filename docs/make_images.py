"""Regenerate the pictures of the README's `cnn viz` section (docs/img/*.png).

Runs the README's commands as written (from the repository root, one thread so that the
training, and so the pictures, are the same on every machine), into a temporary folder,
and copies the pictures to docs/img/:

    python docs/make_images.py

Needs Graphviz's ``dot`` for the graph picture.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMG = ROOT / "docs" / "img"
DIGIT = "sample_data/images/digits/7/mnist5k_3500.png"

COMMANDS = [
    "train --arch architectures/lenet5_modern.yaml --epochs 5 --optimizer adam --lr 0.002 "
    "--out runs/lenet -q",
    "viz filters runs/lenet --out viz-filters.png",
    f"viz maps runs/lenet {DIGIT} --layer C1 --out viz-maps.png",
    f"viz cam runs/lenet {DIGIT} --out viz-cam-gradcam.png",
    f"viz cam runs/lenet {DIGIT} --method hirescam --layer S2 --out viz-cam-hirescam.png",
    "viz graph docs/blocks.yaml --out viz-graph.png",
    "viz curves runs/lenet --out viz-curves.png",
    "evaluate runs/lenet --confusion-png viz-confusion.png",
]


def main() -> None:
    env = dict(os.environ, CNNCLI_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for line in COMMANDS:
            args = [a.replace("runs/", f"{work}/runs/") for a in line.split()]
            args = [str(work / a) if a.endswith(".png") and "/" not in a else a for a in args]
            print("cnn", line, flush=True)
            subprocess.run([sys.executable, "-m", "cnncli.cli.main", *args], cwd=ROOT, env=env,
                           check=True, stdout=subprocess.DEVNULL)
        IMG.mkdir(parents=True, exist_ok=True)
        for png in sorted(work.glob("*.png")):
            shutil.copy(png, IMG / png.name)
            print("->", (IMG / png.name).relative_to(ROOT))


if __name__ == "__main__":
    main()
