"""``cnn gradcheck``: check a network's backward pass against finite differences."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated

import typer

from cnncli.cli.app import app
from cnncli.cli.common import TableOrJson, handle_errors, info, stdout, warn, write_stdout
from cnncli.errors import CnnError, ExitCode

#: What a training step keeps per activation value (forward output, cache, gradient): the
#: estimate below multiplies the shape report's activation memory by it.
_STEP_COPIES = 3


def _network(spec: Path, input: str | None):
    from cnncli.spec import load_spec, parse_hwc, resolve

    shape = parse_hwc(input) if input else None
    return resolve(load_spec(spec, input_shape=shape), shape)


def _check_memory(network, batch: int, bytes_per_value: int, option: str = "--batch") -> None:
    """Refuse, before anything is allocated, a batch whose activations (from the shape
    report) plus weights cannot fit in the memory this machine has free."""
    from cnncli.shapes import shape_report

    totals = shape_report(network, batch)["totals"]
    scale = bytes_per_value / totals["bytes_per_value"]
    need = scale * (batch * (totals["input_bytes_per_image"]
                             + _STEP_COPIES * totals["activation_bytes_per_image"])
                    + 4 * totals["param_bytes"])  # weights, gradients, optimizer-sized spare
    have = _available_memory()
    if have is not None and need > have:
        raise CnnError(
            f"{network.spec.file or network.spec.name}: {option} {batch:,} needs about "
            f"{_gib(need)} of memory (activations from the shape report, and weights), more "
            f"than the {_gib(have)} available; use a smaller {option}")


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.0f} MiB"


@app.command()
@handle_errors
def gradcheck(
    spec: Annotated[Path, typer.Argument(metavar="SPEC", help="Architecture YAML file.")],
    input: Annotated[str | None, typer.Option("--input", "-i", help="Input HxWxC (small is fast).")] = None,
    batch: Annotated[int, typer.Option(min=1, help="Random images per check.")] = 2,
    samples: Annotated[int, typer.Option(min=1, help="Entries checked per tensor.")] = 12,
    tol: Annotated[float, typer.Option(help="Largest acceptable relative error.")] = 1e-5,
    seed: Annotated[int, typer.Option(help="Seed for data, weights and sampled entries.")] = 0,
    mode: Annotated[str, typer.Option(help="train (batch statistics, dropout) or eval.")] = "train",
    format: Annotated[TableOrJson, typer.Option("--format", "-f")] = TableOrJson.table,
) -> None:
    """Backward vs centred finite differences (float64), per parameter tensor; exit 1 if above tol."""
    import json

    import numpy as np

    from cnncli.engine import build_model
    from cnncli.engine.gradcheck import conditioning_warnings, summary
    from cnncli.engine.gradcheck import gradcheck as run_check

    if mode not in ("train", "eval"):
        raise CnnError(f"--mode must be train or eval, not {mode!r}")
    if seed < 0:
        raise CnnError(f"--seed must be a non-negative integer, got {seed}")
    if not (math.isfinite(tol) and tol > 0):
        raise CnnError(f"--tol must be a positive number, got {tol}")
    network = _network(spec, input)
    _check_memory(network, batch, 8)
    model = build_model(network, dtype=np.float64, seed=seed)
    for w in conditioning_warnings(model, batch, mode == "train"):
        warn(w)
    results = run_check(model, batch=batch, samples=samples, tol=tol, seed=seed,
                        training=mode == "train")
    data = summary(results)
    if format is TableOrJson.json:
        write_stdout(json.dumps(data, indent=2))
    else:
        from rich.table import Table

        t = Table(title=f"gradient check: {spec} (tolerance {tol:g})", title_justify="left")
        for col, just in (("tensor", "left"), ("shape", "right"), ("checked", "right"),
                          ("max rel error", "right"), ("", "left")):
            t.add_column(col, justify=just)  # type: ignore[arg-type]
        for r in results:
            t.add_row(r.name, "x".join(map(str, r.shape)), str(r.checked),
                      f"{r.max_rel_error:.2e}", "ok" if r.ok else "FAIL")
        stdout.print(t)
    if not data["ok"]:
        bad = [r.name for r in results if not r.ok]
        info(f"gradient check failed for {len(bad)} tensor(s): {', '.join(bad)}")
        raise typer.Exit(int(ExitCode.FAILURE))


@app.command(name="time")
@handle_errors
def time_cmd(
    spec: Annotated[Path, typer.Argument(metavar="SPEC", help="Architecture YAML file.")],
    input: Annotated[str | None, typer.Option("--input", "-i", help="Input HxWxC.")] = None,
    batch: Annotated[int, typer.Option(min=1, help="Batch size.")] = 64,
    iterations: Annotated[int, typer.Option(min=1, help="Timed forward+backward passes.")] = 10,
    autotune: Annotated[bool, typer.Option("--autotune", help="Time each conv's candidate kernel paths first and keep the fastest (cached on disk).")] = False,
    format: Annotated[TableOrJson, typer.Option("--format", "-f")] = TableOrJson.table,
) -> None:
    """Per-layer forward and backward times of a training step, and each layer's kernel path.

    Like Caffe's time verb and cuDNN's algorithm report."""
    import json

    from cnncli.engine import build_model
    from cnncli.engine.timing import time_layers

    network = _network(spec, input)
    _check_memory(network, batch, 4)
    model = build_model(network)
    if autotune:
        model.tune(batch, log=info)
    rep = time_layers(model, batch=batch, iterations=iterations)
    if format is TableOrJson.json:
        write_stdout(json.dumps(rep, indent=2))
        return
    from rich.table import Table

    t = Table(title=f"{spec}: batch {batch}, mean of {iterations} iterations",
              title_justify="left")
    for col in ("layer", "type", "path", "forward ms", "backward ms", "GFLOP/s"):
        t.add_column(col, justify="left" if col in ("layer", "type", "path") else "right")
    for r in rep["layers"]:
        name = "  " * r["depth"] + r["name"]
        if r["fused_into"]:
            inside = f"in {r['fused_into'].rsplit('.', 1)[-1]}"
            t.add_row(name, r["type"], "fused", inside, inside, "")
            continue
        gf = "" if r["gflops"] is None else f"{r['gflops']:.0f}"
        t.add_row(name, r["type"], r["path"], f"{r['forward_ms']:.3f}",
                  f"{r['backward_ms']:.3f}", gf)
    stdout.print(t)
    stdout.print(f"total {rep['total_ms']:.2f} ms per step, "
                 f"{rep['images_per_second']:,.0f} images/s (forward + backward)", highlight=False)
