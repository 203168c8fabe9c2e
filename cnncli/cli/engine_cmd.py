"""``cnn gradcheck``: check a network's backward pass against finite differences."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cnncli.cli.app import app
from cnncli.cli.common import TableOrJson, handle_errors, info, stdout, warn, write_stdout
from cnncli.errors import ExitCode


@app.command()
@handle_errors
def gradcheck(
    spec: Annotated[Path, typer.Argument(help="Architecture YAML file.")],
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
    from cnncli.errors import CnnError
    from cnncli.spec import parse_hwc

    if mode not in ("train", "eval"):
        raise CnnError(f"--mode must be train or eval, not {mode!r}")
    shape = parse_hwc(input) if input else None
    model = build_model(spec, input_shape=shape, dtype=np.float64, seed=seed)
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
    spec: Annotated[Path, typer.Argument(help="Architecture YAML file.")],
    input: Annotated[str | None, typer.Option("--input", "-i", help="Input HxWxC.")] = None,
    batch: Annotated[int, typer.Option(min=1, help="Batch size.")] = 64,
    iterations: Annotated[int, typer.Option(min=1, help="Timed forward+backward passes.")] = 10,
    autotune: Annotated[bool, typer.Option("--autotune", help="Time each conv's candidate kernel paths first and keep the fastest (cached on disk).")] = False,
    format: Annotated[TableOrJson, typer.Option("--format", "-f")] = TableOrJson.table,
) -> None:
    """Per-layer forward and backward times of a training step and the kernel path each
    layer runs on (like Caffe's time verb and cuDNN's algorithm report)."""
    import json

    from cnncli.engine import build_model
    from cnncli.engine.timing import time_layers
    from cnncli.spec import parse_hwc

    model = build_model(spec, input_shape=parse_hwc(input) if input else None)
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
