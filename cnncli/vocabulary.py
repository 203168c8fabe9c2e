"""The spec vocabulary as data, generated from the layer registry (so it cannot go stale)."""

from __future__ import annotations

from typing import Any

from cnncli.layers.registry import layer_types


def _default(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, list):
        return "[]"
    return str(v)


def vocabulary() -> list[dict[str, Any]]:
    out = []
    for name, cls in layer_types().items():
        out.append(
            {
                "type": name,
                "doc": cls.doc,
                "block": cls.is_block,
                "params": [
                    {
                        "name": p.name,
                        "accepts": p.kind,
                        "default": "required" if p.required else _default(p.default),
                        "doc": p.doc,
                    }
                    for p in cls.params_spec
                ],
            }
        )
    return out


def _md(text: str) -> str:
    """Escape what Markdown would read as table cells or HTML tags."""
    return text.replace("|", "\\|").replace("<", "&lt;")


def vocabulary_markdown(vocab: list[dict[str, Any]]) -> str:
    lines = []
    for e in vocab:
        lines += [f"#### `{e['type']}`", "", _md(e["doc"]), ""]
        if e["params"]:
            lines += ["| parameter | accepts | default | meaning |", "| --- | --- | --- | --- |"]
            lines += [
                f"| `{p['name']}` | {_md(p['accepts'])} | {_md(p['default'])} | {_md(p['doc'])} |"
                for p in e["params"]
            ]
            lines.append("")
    return "\n".join(lines)


def vocabulary_csv(vocab: list[dict[str, Any]]) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["type", "parameter", "accepts", "default", "meaning"])
    for e in vocab:
        for p in e["params"] or [{"name": "", "accepts": "", "default": "", "doc": ""}]:
            w.writerow([e["type"], p["name"], p["accepts"], p["default"], p["doc"]])
    return buf.getvalue()
