"""Renderers for report data: rich tables, CSV and Markdown. They only format, never compute."""

from __future__ import annotations

import csv
import io
import json
from typing import Any


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


def human_count(n: int) -> str:
    for div, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def shape_str(shape: list[int]) -> str:
    return " x ".join(str(s) for s in shape)


def rf_str(v: Any) -> str:
    if v is None:
        return "all"
    if isinstance(v, list):
        return "x".join(f"{x:g}" for x in v)
    return f"{v:g}"


SHAPE_COLUMNS = ("name", "type", "detail", "output", "params", "macs", "receptive_field", "jump")


def shapes_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2)


def shapes_csv(report: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        [
            "name",
            "type",
            "detail",
            "output",
            "params",
            "weights",
            "biases",
            "non_trainable",
            "macs",
            "receptive_field",
            "jump",
        ]
    )
    for r in report["layers"]:
        w.writerow(
            [
                r["name"],
                r["type"],
                r["detail"],
                "x".join(map(str, r["output"])),
                r["params"],
                r["weights"],
                r["biases"],
                r["non_trainable"],
                r["macs"],
                "" if r["receptive_field"] is None else rf_str(r["receptive_field"]),
                "" if r["jump"] is None else rf_str(r["jump"]),
            ]
        )
    return buf.getvalue()


def totals_lines(report: dict[str, Any]) -> list[str]:
    t = report["totals"]
    b = t["batch"]
    frozen = t.get("frozen_params", 0)
    return [
        f"Total params: {t['params']:,} (trainable {t['trainable_params']:,}, "
        f"non-trainable {t['non_trainable_params']:,}"
        + (f", of which frozen {frozen:,}" if frozen else "") + ")",
        f"Multiply-adds: {t['macs']:,} ({human_count(t['macs'])}); "
        f"FLOPs: {t['flops']:,} ({human_count(t['flops'])}) [{t['convention']}]",
        f"Parameter memory: {human_bytes(t['param_bytes'])}; activations: "
        f"{human_bytes(t['activation_bytes_per_image'])} per image"
        + (f", {human_bytes(t['activation_bytes_batch'])} for batch {b}" if b != 1 else "")
        + f" (float32, {t['bytes_per_value']} bytes per value)",
        *memory_lines(t.get("memory")),
    ]


def memory_lines(m: dict[str, Any] | None) -> list[str]:
    """The training-memory totals (``cnn shapes --memory``), if computed."""
    if not m:
        return []
    opt = m["optimizer"] + "".join(f", {k} {v:g}" for k, v in m["optimizer_settings"].items())
    below = m.get("optimizer_scratch_below")
    scratch = f"{m['optimizer_scratch_per_param']} scratch"
    if below and m["optimizer_scratch_per_param"]:
        scratch += f" for arrays under {below:,} elements"
    return [
        f"Training memory ({opt}; batch {m['batch']}): parameters "
        f"{human_bytes(m['param_bytes'])} + gradients {human_bytes(m['grad_bytes'])} + "
        f"optimizer {human_bytes(m['optimizer_bytes'])} ({m['optimizer_buffers_per_param']} "
        f"state per parameter + {scratch}) + kept "
        f"activations {human_bytes(m['kept_bytes'])} + backward transient "
        f"{human_bytes(m['transient_bytes'])} = {human_bytes(m['total_bytes'])}",
    ]


def shapes_markdown(report: dict[str, Any]) -> str:
    out = [
        f"## {report['name']}: input {shape_str(report['input'])}",
        "",
        "| layer | type | detail | output | params | MACs | RF | jump |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in report["layers"]:
        out.append(
            f"| {r['name']} | {r['type']} | {r['detail']} | {shape_str(r['output'])} | "
            f"{r['params']:,} | {r['macs']:,} | {rf_str(r['receptive_field'])} | "
            f"{rf_str(r['jump'])} |"
        )
    out.append("")
    out += [f"- {line}" for line in totals_lines(report)]
    return "\n".join(out) + "\n"


def shapes_table(report: dict[str, Any], explain: bool = False):
    """A rich renderable: the table (and, with ``explain``, each layer's worked formulas)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(
        title=f"{report['name']}  (input {shape_str(report['input'])})", title_justify="left"
    )
    table.add_column("Layer", no_wrap=True)
    table.add_column("Type")
    table.add_column("Output", justify="right", no_wrap=True)
    table.add_column("Params", justify="right")
    any_frozen = any(r.get("frozen") for r in report["layers"])
    if any_frozen:  # trainable vs frozen, per row
        table.add_column("Trainable", justify="right")
        table.add_column("Frozen", justify="right")
    table.add_column("MACs", justify="right")
    table.add_column("RF", justify="right")
    table.add_column("Jump", justify="right")
    mem = "kept_bytes" in (report["layers"] or [{}])[0]
    if mem:  # --memory: bytes per row
        for head in ("Param mem", "Grads", "Optimizer", "Kept acts"):
            table.add_column(head, justify="right")
    for r in report["layers"]:
        typ = r["type"] + (f" ({r['detail']})" if r["detail"] else "")
        name = Text("  " * r["depth"] + r["name"])
        counts = [f"{r['trainable_params']:,}", f"{r['frozen_params']:,}"] if any_frozen else []
        table.add_row(
            name,
            typ,
            shape_str(r["output"]),
            f"{r['params']:,}",
            *counts,
            f"{r['macs']:,}",
            rf_str(r["receptive_field"]),
            rf_str(r["jump"]),
            *([human_bytes(r[k]) for k in ("param_bytes", "grad_bytes", "optimizer_bytes",
                                            "kept_bytes")] if mem else []),
        )
    parts = [table, Text("\n".join(totals_lines(report)))]
    if explain:
        parts.append(Text("\n" + explain_text(report)))
    return Group(*parts)


def explain_text(report: dict[str, Any]) -> str:
    """Each layer's formulas with the numbers filled in, as plain text."""
    out = [f"Input: {shape_str(report['input'])}"]
    for r in report["layers"]:
        out.append(
            f"{r['name']} ({r['type']}{', ' + r['detail'] if r['detail'] else ''})"
            f" -> {shape_str(r['output'])}"
        )
        out += [f"    {e}" for e in r["explain"]]
        if r["receptive_field"] is not None:
            out.append(
                f"    receptive field {rf_str(r['receptive_field'])}, jump {rf_str(r['jump'])}"
            )
    return "\n".join(out)
