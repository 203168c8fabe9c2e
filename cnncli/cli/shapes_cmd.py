"""``cnn shapes``, ``cnn layers`` and ``cnn calc``: the shape calculator commands."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from cnncli.cli.app import app
from cnncli.cli.common import OutputFormat, handle_errors, stdout, warn, write_stdout


class ShapesFormat(str, Enum):
    """``cnn shapes`` formats: the report ones, and yaml (the spec itself, e.g. from ONNX)."""

    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"
    yaml = "yaml"


@app.command()
@handle_errors
def shapes(
    spec: Annotated[str, typer.Argument(metavar="SPEC", help="Architecture YAML file, ONNX model (.onnx), or - for stdin.")],
    input: Annotated[
        str | None, typer.Option("--input", "-i", help="Override the input, HxWxC.")
    ] = None,
    batch: Annotated[
        int, typer.Option("--batch", "-b", min=1, help="Batch size for activation memory.")
    ] = 1,
    format: Annotated[
        ShapesFormat, typer.Option("--format", "-f", help="Output format (yaml: the spec).")
    ] = ShapesFormat.table,
    explain: Annotated[
        bool,
        typer.Option(
            "--explain", "-e", help="Show each layer's formulas with the numbers filled in."
        ),
    ] = False,
    freeze: Annotated[
        str | None, typer.Option("--freeze", help="Count these layers (comma-separated dotted "
                                 "paths or prefixes) as frozen, as cnn train --freeze does.")
    ] = None,
    memory: Annotated[
        bool, typer.Option("--memory", "-m", help="Add training memory per layer and in total: "
                           "parameters, gradients, optimizer state, kept activations.")
    ] = False,
    optimizer: Annotated[
        str | None, typer.Option("--optimizer", help="Optimizer for --memory (sgd with momentum "
                                 "0.9 as cnn train, adam, adamw, rmsprop); implies --memory.")
    ] = None,
) -> None:
    """Every layer's output size, parameters, multiply-adds and receptive field."""
    from cnncli.cli import render
    from cnncli.shapes import shapes as compute
    from cnncli.spec import load_spec, parse_hwc, parse_spec, read_spec_stream

    input_shape = parse_hwc(input) if input else None
    if spec == "-":
        text = read_spec_stream(sys.stdin)
        source = parse_spec(text, file="<stdin>", input_shape=input_shape)
    elif spec.lower().endswith(".onnx"):
        from cnncli.onnxio.importer import load_onnx_spec

        source = load_onnx_spec(spec, input_shape=input_shape)
    else:
        source = load_spec(Path(spec), input_shape=input_shape)
    from cnncli.freeze import parse_freeze

    if memory and optimizer is None:
        optimizer = "sgd"
    report = compute(source, input_shape=input_shape, batch=batch, freeze=parse_freeze(freeze),
                     optimizer=optimizer.strip().lower() if optimizer else None)
    if getattr(source, "onnx_dense_inputs", None):
        from cnncli.onnxio.importer import weight_warnings

        report["warnings"] += weight_warnings(source, report)
    for w in report["warnings"]:
        warn(w)
    if format is ShapesFormat.yaml:
        from cnncli.onnxio.specyaml import spec_yaml

        write_stdout(spec_yaml(source, input_shape))
    elif format is ShapesFormat.json:
        write_stdout(render.shapes_json(report))
    elif format is ShapesFormat.csv:
        write_stdout(render.shapes_csv(report))
    elif format is ShapesFormat.markdown:
        write_stdout(render.shapes_markdown(report))
    else:
        stdout.print(render.shapes_table(report, explain=explain))


@app.command()
@handle_errors
def layers(
    format: Annotated[OutputFormat, typer.Option("--format", "-f")] = OutputFormat.table,
) -> None:
    """The spec vocabulary: every layer type, its parameters, defaults and meaning."""
    import json

    from cnncli.vocabulary import vocabulary

    vocab = vocabulary()
    if format is OutputFormat.json:
        write_stdout(json.dumps(vocab, indent=2))
        return
    if format is OutputFormat.markdown:
        from cnncli.vocabulary import vocabulary_markdown

        write_stdout(vocabulary_markdown(vocab))
        return
    if format is OutputFormat.csv:
        from cnncli.vocabulary import vocabulary_csv

        write_stdout(vocabulary_csv(vocab))
        return
    from rich.table import Table

    for entry in vocab:
        t = Table(title=f"{entry['type']}: {entry['doc']}", title_justify="left", expand=False)
        t.add_column("parameter")
        t.add_column("accepts")
        t.add_column("default")
        t.add_column("meaning")
        for p in entry["params"]:
            t.add_row(p["name"], p["accepts"], p["default"], p["doc"])
        if not entry["params"]:
            t.add_row("-", "", "", "no parameters")
        stdout.print(t)


@app.command()
@handle_errors
def calc(
    kind: Annotated[str, typer.Argument(metavar="KIND", help="conv, deconv or pool.")],
    input: Annotated[str, typer.Option("--input", "-i", help="Input size HxWxC.")],
    filters: Annotated[int | None, typer.Option(help="conv/deconv: number of filters K.")] = None,
    kernel: Annotated[str, typer.Option(help="F, or FhxFw.")] = "3",
    stride: Annotated[str | None, typer.Option(help="S (pool default: the kernel size).")] = None,
    padding: Annotated[str, typer.Option(help="valid, same, full, P or PhxPw.")] = "0",
    dilation: Annotated[int, typer.Option(help="conv: dilation D.")] = 1,
    groups: Annotated[int, typer.Option(help="conv: groups.")] = 1,
    type: Annotated[str, typer.Option("--type", help="pool: max, avg or l2.")] = "max",
    ceil: Annotated[bool, typer.Option(help="pool: ceil mode.")] = False,
    output_padding: Annotated[int, typer.Option(help="deconv: output padding.")] = 0,
    format: Annotated[OutputFormat, typer.Option("--format", "-f")] = OutputFormat.table,
) -> None:
    """One layer's output size, parameters and cost, without writing a YAML file."""
    from cnncli.calc import one_layer_spec
    from cnncli.cli import render
    from cnncli.shapes import shapes as compute

    spec = one_layer_spec(
        kind,
        input,
        filters=filters,
        kernel=kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        pool_type=type,
        ceil=ceil,
        output_padding=output_padding,
    )
    report = compute(spec)
    for w in report["warnings"]:
        warn(w)
    if format is OutputFormat.json:
        write_stdout(render.shapes_json(report))
        return
    if format is OutputFormat.csv:
        write_stdout(render.shapes_csv(report))
        return
    if format is OutputFormat.markdown:
        write_stdout(render.shapes_markdown(report))
        return
    row = report["layers"][0]
    stdout.print(
        f"{kind}: {render.shape_str(report['input'])} -> {render.shape_str(row['output'])}"
        f"  ({row['detail']})",
        highlight=False,
    )
    for line in row["explain"]:
        stdout.print("  " + line, highlight=False)
