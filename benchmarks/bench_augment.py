"""Throughput of ``cnn augment`` against the I/O floor and the albumentations reference.

Usage::

    python benchmarks/bench_augment.py [FOLDER] [-n 5] [--limit K] [--formats png1,png6,jpg]

FOLDER defaults to /work/shared/data/images/bulk (500 JPEGs of about 320x240) when it exists.
Pipeline (issue 5): flip p=0.5, rotate within 15 degrees, random resized crop to 224x224 with
area 0.8-1.0, brightness and contrast 0.2; 5 outputs per input. For each output format it
prints images/s for:

* the I/O floor: one process, Pillow decode once per input, then per output a plain 224x224
  crop (no resampling) encoded and written atomically: what any tool must pay;
* ``cnn augment`` through :func:`cnncli.augment.runner.run` with 1 and 2 worker processes
  (manifest and pipeline files included; interpreter start-up and imports not timed);

then ``x floor``, our single-process time over the floor's (the target is 1.5 or less), the
I/O share (the floor's share of our single-process time), and the reference figures measured on
this machine for albumentations 2.0.8 + OpenCV (2 threads inside OpenCV) and for Pillow's
decode + encode only, from ../shared/reference/README.md. ``--repeat R`` keeps the best of R
runs of each measurement, the measurements taking turns (the machine may be shared).

``--opencv`` (needs ``opencv-python-headless``, not a dependency of cnncli) also times a lean
OpenCV version of the same pipeline on one thread, with the floor's decode, encode and write:
one ``cv2.warpAffine`` per output for flip + rotation + resized crop, ``cv2.LUT`` for
brightness, a grey mean and a second ``cv2.LUT`` for contrast, no manifests. It shows what
the same work costs over the floor with OpenCV's SIMD kernels and almost no Python around them.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cnncli.augment import _kernels  # noqa: E402
from cnncli.augment.io import IMAGE_EXTENSIONS  # noqa: E402
from cnncli.augment.pipeline import parse_ops  # noqa: E402
from cnncli.augment.runner import RunSettings, run  # noqa: E402
from cnncli.fileio import atomic_write_bytes  # noqa: E402


def write_atomic(path: Path, data: bytes) -> None:
    """The floors write as ``cnn augment`` writes its outputs (durable once per run)."""
    atomic_write_bytes(path, data, fsync=False)

DEFAULT_FOLDERS = [
    Path("/work/shared/data/images/bulk"),
    Path(__file__).resolve().parents[2] / "shared" / "data" / "images" / "bulk",
]
PIPELINE = (
    "flip(p=0.5),rotate(limit=15),"
    "random_resized_crop(size=224, area=[0.8, 1.0]),brightness(limit=0.2),contrast(limit=0.2)"
)
FORMATS = {
    # name: (label, --format, png level, albumentations img/s, Pillow floor img/s (reference))
    "png6": ("PNG level 6", "png", 6, 88, 73),
    "png1": ("fast PNG (level 1)", "png", 1, 332, 217),
    "jpg": ("JPEG q95", "jpg", 1, 694, 851),
}


def io_floor(files: list[Path], n: int, fmt: str, png_level: int, out: Path) -> float:
    """Seconds for decode + n x (224 crop, encode, atomic write): no augmentation at all."""
    from PIL import Image

    out.mkdir(parents=True)
    t0 = time.perf_counter()
    for f in files:
        with Image.open(f) as im:
            im.load()
            w, h = im.size
            box = ((w - 224) // 2, (h - 224) // 2, (w - 224) // 2 + 224, (h - 224) // 2 + 224)
            for i in range(n):
                buf = io.BytesIO()
                crop = im.crop(box)
                if fmt == "png":
                    crop.save(buf, format="PNG", compress_level=png_level)
                else:
                    crop.save(buf, format="JPEG", quality=95)
                write_atomic(out / f"{f.stem}_{i}.{fmt}", buf.getvalue())
    return time.perf_counter() - t0


def opencv_lean(files: list[Path], n: int, fmt: str, png_level: int, out: Path) -> float:
    """Seconds for the pipeline done the lean way with OpenCV kernels on one thread (see the
    module docstring); parameters drawn as torchvision draws them, not as cnn augment does."""
    import math

    import cv2
    import numpy as np
    from PIL import Image

    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    ramp = np.arange(256, dtype=np.float64)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    for f in files:
        with Image.open(f) as im:
            im.load()
            src = np.asarray(im.convert("RGB"))
        h, w = src.shape[:2]
        imgs = []  # stage by stage, as cnn augment does: augment all, encode all, write all
        for _ in range(n):
            flip = rng.random() < 0.5
            angle = math.radians(rng.uniform(-15.0, 15.0))
            area = rng.uniform(0.8, 1.0) * h * w
            ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            cw = min(w, round(math.sqrt(area * ratio)))
            ch = min(h, round(math.sqrt(area / ratio)))
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            # output pixel -> crop box -> rotation about the centre -> mirror: one matrix
            crop = np.array([[cw / 224, 0, left], [0, ch / 224, top], [0, 0, 1.0]])
            c, s_ = math.cos(angle), math.sin(angle)
            cx, cy = w / 2, h / 2
            rot = np.array(
                [[c, -s_, cx - c * cx + s_ * cy], [s_, c, cy - s_ * cx - c * cy], [0, 0, 1]]
            )
            mirror = np.array([[-1.0, 0, w - 1], [0, 1, 0], [0, 0, 1]]) if flip else np.eye(3)
            m = (mirror @ rot @ crop)[:2]
            img = cv2.warpAffine(src, m, (224, 224), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
            fb = rng.uniform(0.8, 1.2)
            img = cv2.LUT(img, np.clip(np.floor(ramp * fb + 0.5), 0, 255).astype(np.uint8))
            fc, mean = rng.uniform(0.8, 1.2), cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).mean()
            table = np.clip(np.floor(mean + fc * (ramp - mean) + 0.5), 0, 255).astype(np.uint8)
            imgs.append(cv2.LUT(img, table))
        blobs = []
        for img in imgs:
            buf = io.BytesIO()
            if fmt == "png":
                Image.fromarray(img).save(buf, format="PNG", compress_level=png_level)
            else:
                Image.fromarray(img).save(buf, format="JPEG", quality=95)
            blobs.append(buf.getvalue())
        for i, data in enumerate(blobs):
            write_atomic(out / f"{f.stem}_{i}.{fmt}", data)
    return time.perf_counter() - t0


def best_times(measures: list[Callable[[Path], float]], out: Path, repeat: int) -> list[float]:
    """Shortest of ``repeat`` timings (seconds) of each ``measure(out_folder)``, fresh folder
    each. The measures take turns, round by round, so that a neighbour's load on the shared
    machine falls on all of them alike rather than on whichever ran during it. Between
    measures the written files are flushed (``os.sync``, not timed) and kept until the end:
    the write-back or deletion of thousands of files slows whatever runs next."""
    best = [float("inf")] * len(measures)
    for r in range(repeat):
        for i, measure in enumerate(measures):
            best[i] = min(best[i], measure(out.with_name(f"{out.name}_{i}_{r}")))
            os.sync()
    return best


def ours(src: Path, out: Path, *, n: int, fmt: str, png_level: int, workers: int) -> float:
    settings = RunSettings(
        n=n, seed=0, workers=workers, out_format=fmt, png_level=png_level, quality=95
    )
    summary = run(src, out, parse_ops(PIPELINE), settings)
    if summary.failed:
        raise SystemExit(f"benchmark run had failures: {summary.failed[:3]}")
    return summary.seconds


#: The standalone OpenCV script ``--processes`` times as a whole process (JPEG q95 out).
OPENCV_SCRIPT = """\
import math, sys
from pathlib import Path
import cv2, numpy as np
cv2.setNumThreads(1)
src_dir, out_dir, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
out_dir.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
for f in sorted(p for p in src_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")):
    img = cv2.imread(str(f))
    h, w = img.shape[:2]
    for i in range(n):
        a = rng.uniform(-15, 15)
        area = rng.uniform(0.8, 1.0) * h * w
        r = math.exp(rng.uniform(math.log(0.75), math.log(4 / 3)))
        cw, ch = min(w, round(math.sqrt(area * r))), min(h, round(math.sqrt(area / r)))
        x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        m = cv2.getRotationMatrix2D((x0 + cw / 2, y0 + ch / 2), a, 1.0)
        m[:, 2] -= (x0, y0)
        m *= np.array([[224 / cw], [224 / ch]])
        if rng.random() < 0.5:
            m[0], m[0, 2] = -m[0], 224 - m[0, 2]
        o = cv2.warpAffine(img, m, (224, 224), borderMode=cv2.BORDER_REFLECT_101)
        o = cv2.LUT(o, np.clip(np.arange(256) * rng.uniform(.8, 1.2), 0, 255).astype(np.uint8))
        g = cv2.cvtColor(o, cv2.COLOR_BGR2GRAY).mean()
        lut = np.clip((np.arange(256) - g) * rng.uniform(.8, 1.2) + g, 0, 255).astype(np.uint8)
        out = str(out_dir / f"{f.stem}_{i}.jpg")
        cv2.imwrite(out, cv2.LUT(o, lut), [cv2.IMWRITE_JPEG_QUALITY, 95])
"""


def whole_processes(src: Path, tmp: Path, n: int, repeat: int) -> None:
    """Both tools as a shell user runs them: whole processes (interpreter start, imports,
    Numba's kernel cache, manifests), best of ``repeat``, the turns alternating; then the
    same on one image, which is the fixed cost of each."""
    import subprocess

    script = tmp / "opencv_augment.py"
    script.write_text(OPENCV_SCRIPT)
    one = tmp / "one"
    one.mkdir()
    first = sorted(src.iterdir())[0]
    shutil.copy2(first, one / first.name)
    cmds = {
        "OpenCV script": lambda s, o: [sys.executable, str(script), str(s), str(o), str(n)],
        "cnn augment -j 1": lambda s, o: [sys.executable, "-m", "cnncli.cli.main", "augment",
                                          str(s), "--out", str(o), "-n", str(n), "--ops",
                                          PIPELINE, "--format", "jpg", "-j", "1"],
    }
    best: dict[tuple[str, str], float] = {}
    for rep in range(repeat):
        for what, folder in (("all", src), ("one image", one)):
            for name, cmd in cmds.items():
                out = tmp / f"proc-{rep}-{what}-{name[:3]}"
                t0 = time.perf_counter()
                subprocess.run(cmd(folder, out), check=True, capture_output=True)
                t = time.perf_counter() - t0
                best[(name, what)] = min(best.get((name, what), t), t)
                shutil.rmtree(out, ignore_errors=True)
    files = len(list(src.iterdir()))
    print(f"\nwhole processes, {files} sources x {n} JPEG q95 outputs (best of {repeat}):")
    for name in cmds:
        print(f"  {name:<18} {best[(name, 'all')]:6.2f} s   fixed cost (one image) "
              f"{best[(name, 'one image')]:5.2f} s")
    ratio = best[("OpenCV script", "all")] / best[("cnn augment -j 1", "all")]
    print(f"  cnn augment speed vs the script: {ratio:.2f}x (target >= 0.9x)")
    print("  cnn's fixed cost beyond the script's is Numba: its import (which imports "
          "scipy.linalg when installed) and its first cache load, which initialises its "
          "typing registries, before the warp kernels load (python -X importtime, cProfile)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("folder", nargs="?", type=Path, default=None)
    ap.add_argument("-n", type=int, default=5, help="outputs per input (default 5)")
    ap.add_argument("--limit", type=int, default=0, help="use only the first K images")
    ap.add_argument("--formats", default="png6,png1,jpg", help="comma list of png6,png1,jpg")
    ap.add_argument("--workers", default="1,2", help="worker counts to time (default 1,2)")
    ap.add_argument("--repeat", type=int, default=1, help="best of R runs (default 1)")
    ap.add_argument(
        "--opencv", action="store_true", help="also time a lean OpenCV version, 1 thread"
    )
    ap.add_argument(
        "--processes", action="store_true",
        help="only time cnn augment and a standalone OpenCV script as whole processes",
    )
    args = ap.parse_args()

    folder = args.folder or next((d for d in DEFAULT_FOLDERS if d.is_dir()), None)
    if folder is None:
        ap.error(f"no FOLDER given and the default {DEFAULT_FOLDERS[0]} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if args.limit:
        files = files[: args.limit]
    if not files:
        ap.error(f"no images in {folder}")
    workers = [int(w) for w in args.workers.split(",")]
    outputs = len(files) * args.n

    tmp = Path(tempfile.mkdtemp(prefix="bench_augment_"))
    src = tmp / "in"
    src.mkdir()
    for f in files:  # a private copy, so --limit works and the shared folder is only read
        shutil.copy2(f, src / f.name)
    if args.processes:
        try:
            whole_processes(src, tmp, args.n, max(1, args.repeat))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    _kernels.warm_up()
    print(
        f"{len(files)} images from {folder} -> {outputs} outputs of 224x224; cpus={os.cpu_count()}"
    )
    print(f"pipeline: {PIPELINE}")
    header = f"{'format':<20}{'I/O floor':>10}" + "".join(f"{f'ours x{w}':>10}" for w in workers)
    header += f"{'x floor':>9}{'I/O share':>10}{'albument.':>10}{'ref floor':>10}"
    if args.opencv:
        header += f"{'OpenCV x1':>10}{'x floor':>9}"
    print(header + "   (images/s; albumentations uses 2 threads)")
    try:
        for key in args.formats.split(","):
            label, fmt, level, ref_alb, ref_floor = FORMATS[key]

            files_in = [src / f.name for f in files]
            measures = [partial(io_floor, files_in, args.n, fmt, level)]
            measures += [
                partial(ours, src, n=args.n, fmt=fmt, png_level=level, workers=w) for w in workers
            ]
            if args.opencv:
                measures.append(partial(opencv_lean, files_in, args.n, fmt, level))
            floor, *rates = (outputs / t for t in best_times(measures, tmp / key, args.repeat))
            cv = rates.pop() if args.opencv else None
            one = rates[workers.index(1)] if 1 in workers else float("nan")
            line = f"{label:<20}{floor:>10.0f}" + "".join(f"{r:>10.0f}" for r in rates)
            line += f"{floor / one:>8.2f}x{one / floor:>10.0%}{ref_alb:>10}{ref_floor:>10}"
            if cv is not None:
                line += f"{cv:>10.0f}{floor / cv:>8.2f}x"
            print(line, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        "target: ours x2 >= albumentations; x floor <= 1.5 (single process). "
        "Reference: ../shared/reference/README.md (Augmentor: 97 PNG6, 265 JPEG)."
    )


if __name__ == "__main__":
    main()
