"""``cnn viz``: filters, feature maps, class activation maps, the layer graph, curves."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from cnncli.cli.app import app
from cnncli.cli.common import TableOrJson, handle_errors, info, stdout, write_stdout
from cnncli.errors import CnnError, DataError

viz = typer.Typer(
    name="viz",
    help="See inside a network: filters, feature maps, class activation maps, the layer "
         "graph and learning curves, as pictures.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(viz, name="viz")

RunArg = Annotated[Path, typer.Argument(metavar="RUN", help="Run folder (its best checkpoint) or checkpoint .npz.")]
ImageArg = Annotated[Path, typer.Argument(metavar="IMAGE", help="Image file (fitted and normalised as cnn predict does).")]


class FilterScale(str, Enum):
    filter = "filter"
    layer = "layer"


class MapScale(str, Enum):
    layer = "layer"
    channel = "channel"


class CamMethod(str, Enum):
    gradcam = "gradcam"
    hirescam = "hirescam"
    saliency = "saliency"


def _trained(run: Path) -> tuple[Any, dict[str, Any], Path]:
    from cnncli.train.loop import resolve_checkpoint
    from cnncli.train.predict import load_trained

    return load_trained(resolve_checkpoint(run, prefer="best"))


def _checkpoint(run: Path) -> Path:
    from cnncli.train.loop import resolve_checkpoint

    return resolve_checkpoint(run, prefer="best")


def _png(out: Path | None, inputs: list[Path]) -> Path | None:
    from cnncli.viz.paths import check_output

    return None if out is None else check_output(out, (".png",), inputs)


def _one_image(meta: dict[str, Any], image: Path) -> tuple[Any, Any]:
    """(fitted image [1, C, H, W] in [0, 1], normalised model input) as cnn predict reads it."""
    from cnncli.train.predict import normalise, read_images

    if not image.is_file():
        raise DataError(f"{image}: no such image file")
    raw, _, errors = read_images(meta, [image])
    if raw is None:
        raise DataError(errors[0]["error"])
    return raw, normalise(meta, raw)


def _wrote(path: Path) -> None:
    from PIL import Image

    with Image.open(path) as im:
        info(f"wrote {path} ({im.width} x {im.height})")


@viz.command("filters")
@handle_errors
def filters(
    run: RunArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.")],
    layer: Annotated[str | None, typer.Option("--layer", "-l", help="Conv layer (default: the first).")] = None,
    scale: Annotated[FilterScale, typer.Option(help="Divide by the largest |weight| of each filter, or of the layer.")] = FilterScale.filter,
    max_tiles: Annotated[int, typer.Option("--max-tiles", min=1, help="Show at most this many tiles (first filters).")] = 256,
) -> None:
    """The kernels of a conv layer as a grid of tiles.

    One RGB tile per filter over 3 input channels, otherwise one row per filter and one
    tile per input channel (at most 16)."""
    from cnncli.viz.figures import tiles_png
    from cnncli.viz.filters import filter_tiles
    from cnncli.viz.probe import conv_node

    ckpt = _checkpoint(run)
    _png(out, [ckpt])
    model, _, _ = _trained(ckpt)
    node = conv_node(model.network, layer)
    ft = filter_tiles(model, node, scale.value, max_tiles)
    f, c, kh, kw = ft.weight_shape
    shown = (f" (first {ft.filters_shown} shown)" if ft.filters_shown < f else "") + (
        f", first {ft.channels_shown} of {c} channels" if ft.channels_shown < c else "")
    by = "filter's" if scale is FilterScale.filter else "layer's"
    subtitle = (f"{f} filters of {kh} x {kw} x {c}{shown}; colour: weight / the {by} "
                "largest |weight|")
    title = f"filters of {node.path} ({node.layer.describe()})"
    if ft.tiles.rgb:
        tiles_png(ft.tiles, out, title, subtitle + " as RGB, 0 = grey", cmap="gray", vmin=0,
                  vmax=1, colorbar=None)
    else:
        tiles_png(ft.tiles, out, title, subtitle, cmap="RdBu_r", vmin=-1, vmax=1,
                  colorbar=f"weight / the {by} largest |weight|", gap_colour="#8c8c8c")
    _wrote(out)


@viz.command("maps")
@handle_errors
def maps(
    run: RunArg,
    image: ImageArg,
    layer: Annotated[str, typer.Option("--layer", "-l", help="Layer whose output to show (a name from cnn shapes).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="PNG file to write (none: the numbers alone).")] = None,
    scale: Annotated[MapScale, typer.Option(help="One colour scale for the layer, or each channel stretched to its own range.")] = MapScale.layer,
    max_tiles: Annotated[int, typer.Option("--max-tiles", min=1, help="Show at most this many channels (the first).")] = 64,
    format: Annotated[TableOrJson, typer.Option("--format", "-f", help="table, or json: the numbers behind the picture.")] = TableOrJson.table,
) -> None:
    """The feature maps of one image at a layer, every channel tiled.

    The picture names the layer, its output shape and value range; the table (or JSON)
    gives each channel's min, max and mean."""
    import json

    from cnncli.viz.maps import feature_maps
    from cnncli.viz.probe import find_node

    ckpt = _checkpoint(run)
    _png(out, [ckpt, image])
    model, meta, _ = _trained(ckpt)
    node = find_node(model.network, layer)
    _, x = _one_image(meta, image)
    fm = feature_maps(model, x, node, scale.value, max_tiles)
    s = fm.summary()
    if out is not None:
        from cnncli.viz.figures import tiles_png

        h, w, c = s["shape"]
        part = (f"; channels 0-{s['channels_shown'] - 1} of {c}"
                if s["channels_shown"] < c else "")
        subtitle = (f"{image.name}: output {h} x {w} x {c}, values {s['min']:.3g} to "
                    f"{s['max']:.3g}{part}")
        detail = f": {fm.detail}" if fm.detail else ""
        if scale is MapScale.layer:
            lo, hi = s["min"], s["max"] if s["max"] > s["min"] else s["min"] + 1.0
            bar = "activation"
        else:
            lo, hi, bar = 0.0, 1.0, "share of the channel's own range"
        tiles_png(fm.tiles, out, f"feature maps of {fm.layer} ({fm.type}{detail})", subtitle,
                  cmap="viridis", vmin=lo, vmax=hi, colorbar=bar)
        _wrote(out)
    if format is TableOrJson.json:
        write_stdout(json.dumps({"checkpoint": str(ckpt), "image": str(image),
                                 "out": None if out is None else str(out), **s}))
        return
    from rich.table import Table

    h, w, c = s["shape"]
    stdout.print(f"{fm.layer} ({fm.type}) for {image}: {h} x {w} x {c}, values "
                 f"{s['min']:.4g} to {s['max']:.4g}, mean {s['mean']:.4g}", highlight=False)
    t = Table()
    for col in ("channel", "min", "max", "mean"):
        t.add_column(col, justify="right")
    for r in s["channels"]:
        t.add_row(str(r["channel"]), f"{r['min']:.4g}", f"{r['max']:.4g}", f"{r['mean']:.4g}")
    stdout.print(t)


@viz.command("cam")
@handle_errors
def cam(
    run: RunArg,
    image: ImageArg,
    cls: Annotated[str | None, typer.Option("--class", "-c", help="Class label or index (default: the predicted class).")] = None,
    layer: Annotated[str | None, typer.Option("--layer", "-l", help="Layer for gradcam/hirescam (default: the last with feature maps).")] = None,
    method: Annotated[CamMethod, typer.Option("--method", "-m", help="gradcam, hirescam (for heads that flatten, e.g. LeNet, VGG) or saliency.")] = CamMethod.gradcam,
    box: Annotated[str | None, typer.Option(help="X0,Y0,X1,Y1 in network-input pixels: report (and draw) the map's share inside.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="PNG file to write (none: the numbers alone).")] = None,
    format: Annotated[TableOrJson, typer.Option("--format", "-f", help="table, or json: the numbers behind the picture.")] = TableOrJson.table,
) -> None:
    """Where in an image the evidence for a class lies (Grad-CAM, HiResCAM, saliency).

    Grad-CAM: ReLU of the feature maps weighted by the spatial mean of the class score's
    gradient; HiResCAM: gradient times activation at each position; saliency:
    |d score / d input|. Drawn over the image, with the class and its probability."""
    import json

    from cnncli.viz.cam import class_map, parse_box
    from cnncli.viz.probe import spatial_node

    ckpt = _checkpoint(run)
    _png(out, [ckpt, image])
    model, meta, _ = _trained(ckpt)
    node = None
    if method is not CamMethod.saliency:
        node = spatial_node(model.network, layer)
    elif layer is not None:
        raise CnnError("--layer does not apply to --method saliency (it is taken at the input)")
    raw, x = _one_image(meta, image)
    h, w = x.shape[2:]
    the_box = parse_box(box, (h, w)) if box else None
    cm = class_map(model, x, list(meta["classes"]), node, method.value, cls, the_box)
    s = cm.summary()
    if out is not None:
        from cnncli.viz.figures import cam_png

        names = {"gradcam": "Grad-CAM", "hirescam": "HiResCAM", "saliency": "Saliency"}
        cam_png(cm, raw[0], out, f"{names[cm.method]} for class '{cm.label}' "
                                 f"(p = {cm.probability:.1%}): {image.name}")
        _wrote(out)
    if format is TableOrJson.json:
        write_stdout(json.dumps({"checkpoint": str(ckpt), "image": str(image),
                                 "input_size": [h, w], "out": None if out is None else str(out),
                                 **s}))
        return
    where = f"at {cm.layer} ({' x '.join(map(str, cm.layer_shape))})" if cm.layer else "at the input"
    peak = s["argmax"]["input"]
    lines = [f"{cm.method} {where} for class '{cm.label}' (index {cm.cls}, p = "
             f"{cm.probability:.2%}) in {image}",
             "predicted: " + ", ".join(f"{t['label']} {t['probability']:.2%}" for t in cm.top),
             "map peak: " + ("none (the map is zero: nothing here speaks for this class)"
                             if peak is None else f"row {peak[0]}, column {peak[1]} of the "
                             f"{h} x {w} input")]
    if cm.box is not None:
        lines.append(f"share inside box {box}: "
                     + ("n/a (zero map)" if cm.share is None else f"{cm.share:.1%}"))
    stdout.print("\n".join(lines), highlight=False)


@viz.command("graph")
@handle_errors
def graph(
    spec: Annotated[str, typer.Argument(metavar="SPEC", help="Architecture YAML file, or - for stdin.")],
    out: Annotated[str, typer.Option("--out", "-o", help="net.dot (or .gv), net.svg or net.png (those two need Graphviz), or - for DOT on stdout.")],
    input: Annotated[str | None, typer.Option("--input", "-i", help="Override the input, HxWxC.")] = None,
) -> None:
    """The layer graph, with residual and parallel blocks as branches.

    One node per row of cnn shapes (type, output shape, parameters). DOT is written
    directly; SVG and PNG are rendered by Graphviz's dot."""
    from cnncli.spec import load_spec, parse_hwc, parse_spec, resolve
    from cnncli.viz.graph import graph_dot, output_format, render

    input_shape = parse_hwc(input) if input else None
    out_path = None if out == "-" else Path(out)
    fmt = None
    if out_path is not None:
        from cnncli.viz.paths import check_output

        fmt = output_format(out_path)
        check_output(out_path, (out_path.suffix.lower(),), [] if spec == "-" else [Path(spec)])
    if spec == "-":
        source = parse_spec(sys.stdin.read(), file="<stdin>", input_shape=input_shape)
    else:
        source = load_spec(Path(spec), input_shape=input_shape)
    text = graph_dot(resolve(source, input_shape))
    if out_path is None:
        write_stdout(text)
        return
    from cnncli.fileio import atomic_write, atomic_write_text

    if fmt is None:
        atomic_write_text(out_path, text)
    else:
        data = render(text, fmt)
        atomic_write(out_path, lambda f: f.write(data), what="picture")
    info(f"wrote {out_path}")


@viz.command("curves")
@handle_errors
def curves(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="Run folder (also while it trains) or checkpoint .npz.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.")],
) -> None:
    """Loss and accuracy per epoch of a run, re-plotted from its metrics."""
    from cnncli.train.plot import learning_curves
    from cnncli.viz.paths import check_output

    history, source = _history(run)
    check_output(out, (".png",), [source])
    learning_curves(history, out, run_name=_run_name(run))
    _wrote(out)


def _run_name(run: Path) -> str:
    return run.resolve().name if run.is_dir() else run.resolve().parent.parent.name


def _history(run: Path) -> tuple[list[dict[str, Any]], Path]:
    """A run's metrics per epoch: its metrics.jsonl, or a checkpoint's saved history."""
    import json

    if run.is_dir():
        path = run / "metrics.jsonl"
        if not path.exists():
            raise DataError(f"{run}: no metrics.jsonl (not a run folder, or no epoch has "
                            "finished yet)")
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise DataError(f"{path}:{i}: not a JSON line") from None
            if not isinstance(row, dict) or "epoch" not in row:
                raise DataError(f"{path}:{i}: not a metrics row (no 'epoch')")
            rows.append(row)
        if not rows:
            raise DataError(f"{path}: no epoch has finished yet")
        return rows, path
    from cnncli.checkpoint import load_checkpoint
    from cnncli.train.loop import resolve_checkpoint

    path = resolve_checkpoint(run)
    _, meta = load_checkpoint(path)
    if not meta.get("history"):
        raise DataError(f"{path}: holds no training history")
    return list(meta["history"]), path
