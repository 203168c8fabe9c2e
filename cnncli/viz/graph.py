"""The layer graph of a network in Graphviz's DOT language, and its rendering.

One node per row of ``cnn shapes`` (same names, types, output shapes and parameter counts,
from :func:`cnncli.shapes.layer_row`) plus one for the input. A residual block is a cluster
whose add node takes an edge from the end of the body and one from the end of the shortcut
(or, for an identity shortcut, from the block's input, drawn dashed); a parallel block is a
cluster whose merge node takes one edge per branch. The DOT text is written by us; SVG and
PNG need Graphviz's ``dot`` program.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from cnncli.errors import CnnError
from cnncli.layers.base import Node

INPUT_ID = "(input)"
#: Suffix of --out -> Graphviz output format (None: the DOT text itself).
FORMATS = {".dot": None, ".gv": None, ".svg": "svg", ".png": "png"}
_FILL = {"conv": "#cfe2f3", "deconv": "#cfe2f3", "dense": "#d9d2e9", "pool": "#fce5cd",
         "global_pool": "#fce5cd", "batchnorm": "#eeeeee", "lrn": "#eeeeee",
         "dropout": "#eeeeee", "flatten": "#eeeeee", "residual": "#fff2cc",
         "parallel": "#fff2cc"}
_ACTIVATION_FILL = "#d9ead3"


def _q(text: str) -> str:
    """A DOT quoted string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _shape(shape: tuple[int, ...]) -> str:
    return " x ".join(str(v) for v in shape)


def _label(node: Node) -> str:
    from cnncli.shapes import layer_row

    row = layer_row(node)
    kind = row["type"] + (f" ({row['detail']})" if row["detail"] else "")
    kind = "" if kind == row["name"] else f"{kind}\n"  # a layer named after its type
    params = f"\n{row['params']:,} params" if row["params"] else ""
    return f"{row['name']}\n{kind}{_shape(node.out_shape)}{params}"


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.edge_lines: list[str] = []  # written last, outside every cluster (an edge
        self.indent = 1                  # inside one would pull its nodes into it)

    def put(self, text: str) -> None:
        self.lines.append("  " * self.indent + text)

    def node(self, node: Node) -> None:
        from cnncli.layers.activation import ACTIVATIONS

        fill = _ACTIVATION_FILL if node.type in ACTIVATIONS else _FILL.get(node.type, "#ffffff")
        self.put(f"{_q(node.path)} [label={_q(_label(node))}, fillcolor={_q(fill)}];")

    def edges(self, preds: list[str], to: str, extra: str = "") -> None:
        for p in preds:
            self.edge_lines.append(f"  {_q(p)} -> {_q(to)}{extra};")

    def sequence(self, nodes: list[Node], preds: list[str]) -> list[str]:
        """Write ``nodes`` fed by ``preds``; return the ids that hold their output."""
        for node in nodes:
            if node.type in ("residual", "parallel"):
                preds = self.block(node, preds)
            elif node.layer.is_block:  # sequential, repeat: no row of their own
                preds = self.sequence(node.children["layers"], preds)
            else:
                self.node(node)
                self.edges(preds, node.path)
                preds = [node.path]
        return preds

    def block(self, node: Node, preds: list[str]) -> list[str]:
        self.put(f"subgraph {_q('cluster_' + node.path)} {{")
        self.indent += 1
        self.put(f"label={_q(f'{node.path}: {node.type}')}; style=\"rounded,dashed\"; "
                 "color=\"#999999\"; fontname=\"Helvetica\"; fontsize=11;")
        ends = []
        for children in node.children.values():
            ends.append((self.sequence(children, preds), not children))
        self.node(node)
        for tails, empty in ends:
            if empty:  # identity shortcut or empty branch: the block's input itself
                self.edges(tails, node.path, f" [style=dashed, label={_q('identity')}]")
            else:
                self.edges(tails, node.path)
        self.indent -= 1
        self.put("}")
        return [node.path]


def graph_dot(network: object) -> str:
    """The DOT text of a resolved network (:class:`cnncli.spec.Network`)."""
    w = _Writer()
    title = f"{network.spec.name} (input {_shape(network.input)})"
    w.put(f"graph [rankdir=TB, fontname=\"Helvetica\", fontsize=14, labelloc=t, "
          f"label={_q(title)}];")
    w.put('node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11];')
    w.put('edge [color="#555555", fontname="Helvetica", fontsize=9];')
    w.put(f"{_q(INPUT_ID)} [label={_q('input' + chr(10) + _shape(network.input))}, "
          "shape=box, style=\"rounded\"];")
    w.sequence(network.nodes, [INPUT_ID])
    return "digraph cnn {\n" + "\n".join(w.lines + w.edge_lines) + "\n}\n"


def output_format(out: Path) -> str | None:
    """The Graphviz format for ``out``'s suffix (None: DOT text); an error otherwise."""
    suffix = out.suffix.lower()
    if suffix not in FORMATS:
        raise CnnError(f"{out}: --out must end in .dot, .gv, .svg or .png")
    return FORMATS[suffix]


def render(dot_text: str, fmt: str) -> bytes:
    """SVG or PNG bytes from Graphviz's ``dot`` (a clear error when it is not installed)."""
    exe = shutil.which("dot")
    if exe is None:
        raise CnnError(f"Graphviz's 'dot' program is needed for .{fmt} and is not installed: "
                       "install Graphviz (apt-get install graphviz, brew install graphviz or "
                       "https://graphviz.org/download/), or write --out FILE.dot")
    try:
        done = subprocess.run([exe, f"-T{fmt}"], input=dot_text.encode("utf-8"),
                              capture_output=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CnnError(f"Graphviz's dot failed to run ({exc})") from None
    if done.returncode != 0 or not done.stdout:
        why = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise CnnError(f"Graphviz's dot failed (exit {done.returncode})"
                       + (f": {why[0]}" if why else ""))
    return done.stdout
