"""``cnn export``: a trained run, a checkpoint or a spec as an ONNX model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cnncli.cli.app import app
from cnncli.cli.common import TableOrJson, handle_errors, info, write_stdout
from cnncli.errors import ExitCode


@app.command()
@handle_errors
def export(
    source: Annotated[str, typer.Argument(metavar="SOURCE", help="Run folder, checkpoint .npz, or spec YAML (fresh weights).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The .onnx file to write.")],
    seed: Annotated[int, typer.Option(help="Spec only: seed of the fresh weights.")] = 0,
    input: Annotated[str | None, typer.Option("--input", "-i", help="Spec only: input size HxWxC.")] = None,
    normalize: Annotated[bool, typer.Option("--normalize/--no-normalize", help="Put the checkpoint's (x - mean)/std first in the graph.")] = True,
    opset: Annotated[int, typer.Option(help="ONNX opset (19 or later).")] = 19,
    verify: Annotated[bool, typer.Option("--verify", help="Run onnxruntime on random images and compare with cnncli's output; exit 1 if they differ.")] = False,
    format: Annotated[TableOrJson, typer.Option("--format", "-f", help="table (a line on stderr) or json (on stdout).")] = TableOrJson.table,
) -> None:
    """Write a model as ONNX (NCHW float32, batch size N), checked with onnx.checker."""
    import json

    from cnncli.onnxio.export import export as run_export
    from cnncli.spec import parse_hwc

    summary = run_export(source, out, input_shape=parse_hwc(input) if input else None,
                         seed=seed, normalize=normalize, opset=opset)
    if verify:
        from cnncli.onnxio.verify import verify_file

        summary["verify"] = verify_file(source, out, normalize=summary["normalized"],
                                        input_shape=parse_hwc(input) if input else None,
                                        seed=seed)
    if format is TableOrJson.json:
        write_stdout(json.dumps(summary, indent=2))
    else:
        shape = "x".join(str(d) for d in summary["output"]["shape"])
        info(f"wrote {summary['file']}: {summary['params']:,} parameters, {summary['nodes']} "
             f"nodes, opset {summary['opset']}; input '{summary['input']['name']}' "
             f"Nx{'x'.join(str(d) for d in summary['input']['shape'][1:])} -> "
             f"'{summary['output']['name']}' {shape}"
             + (" (normalisation in the graph)" if summary["normalized"] else ""))
        if verify:
            v = summary["verify"]
            info(f"onnxruntime vs cnncli on {v['images']} images: max |difference| "
                 f"{v['max_abs_diff']:.2e} ({v['compared']}), top-1 agrees on "
                 f"{v['top1_agree']}/{v['images']}")
    if verify and not summary["verify"]["ok"]:
        raise typer.Exit(int(ExitCode.FAILURE))
