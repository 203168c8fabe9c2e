"""The layer graph: one DOT node per row of cnn shapes, and every residual and parallel
block's branches as edges; SVG/PNG through Graphviz's dot, or a clear error without it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cnncli.cli.main  # noqa: F401  (registers the commands)
from cnncli.cli.app import app
from cnncli.spec import load_spec, resolve
from cnncli.viz.graph import INPUT_ID, graph_dot
from cnncli.viz.probe import all_nodes

ROOT = Path(__file__).resolve().parents[2]
ARCH = ROOT / "architectures"
NODE = re.compile(r'^\s*"((?:[^"\\]|\\.)*)" \[label="((?:[^"\\]|\\.)*)"', re.M)
EDGE = re.compile(r'^\s*"((?:[^"\\]|\\.)*)" -> "((?:[^"\\]|\\.)*)"', re.M)
runner = CliRunner()


def parse(text: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    nodes = {m.group(1): m.group(2) for m in NODE.finditer(text)}
    return nodes, [(m.group(1), m.group(2)) for m in EDGE.finditer(text)]


def _subtree_rows(node, rows):
    paths = {n.path for n in all_nodes([node])}
    return [r for r in rows if r.path in paths]


@pytest.mark.parametrize("arch", ["resnet18.yaml", "googlenet.yaml", "resnet50.yaml",
                                  "mobilenet_v2.yaml", "lenet5.yaml"])
def test_one_node_per_report_row_and_the_edges_of_every_block(arch):
    from cnncli.shapes import layer_row

    network = resolve(load_spec(ARCH / arch))
    rows = network.rows()
    nodes, edges = parse(graph_dot(network))
    assert set(nodes) == {r.path for r in rows} | {INPUT_ID}
    assert len(nodes) == len(rows) + 1  # no duplicates
    for r in rows:
        label = nodes[r.path].replace("\\n", "\n").splitlines()
        row = layer_row(r)
        assert label[0] == r.path
        assert " x ".join(map(str, r.out_shape)) in label
        assert (f"{row['params']:,} params" in label) == (row["params"] > 0)
    incoming: dict[str, list[str]] = {}
    for a, b in edges:
        assert a in nodes and b in nodes
        incoming.setdefault(b, []).append(a)
    order = [r.path for r in rows]
    blocks = [n for n in all_nodes(network.nodes) if n.type in ("residual", "parallel")]
    if arch != "lenet5.yaml":
        assert blocks
    for block in blocks:
        own = _subtree_rows(block, rows)
        first = order.index(own[0].path)
        feeder = order[first - 1] if first else INPUT_ID  # the row that made the block's input
        want = []
        for part in block.children.values():
            if not part:  # identity shortcut or empty branch
                want.append(feeder)
                continue
            part_rows = [r for n in part for r in _subtree_rows(n, rows)]
            want.append(part_rows[-1].path)  # the part's output
            assert feeder in incoming[part_rows[0].path], (block.path, part_rows[0].path)
        assert sorted(incoming[block.path]) == sorted(want), block.path
    # the chain: every row but the first has an input, the last feeds nothing
    assert all(r.path in incoming for r in rows)
    assert rows[-1].path not in {a for a, _ in edges}


def test_identity_shortcut_and_parallel_branches_by_hand():
    spec = {"name": "t", "input": [8, 8, 4], "layers": [
        {"conv": {"name": "a", "filters": 4, "kernel": 3, "padding": "same"}},
        {"residual": {"name": "r", "body": [
            {"conv": {"name": "b", "filters": 4, "kernel": 3, "padding": "same"}}]}},
        {"parallel": {"name": "p", "branches": [
            [{"conv": {"name": "c1", "filters": 2, "kernel": 1}}],
            [{"conv": {"name": "c2", "filters": 2, "kernel": 1}},
             {"conv": {"name": "c3", "filters": 3, "kernel": 3, "padding": "same"}}],
            []]}}]}
    text = graph_dot(resolve(load_spec(spec)))
    _, edges = parse(text)
    assert sorted(edges) == sorted([
        (INPUT_ID, "a"), ("a", "r.b"), ("r.b", "r"), ("a", "r"),
        ("r", "p.branch1.c1"), ("r", "p.branch2.c2"), ("p.branch2.c2", "p.branch2.c3"),
        ("p.branch1.c1", "p"), ("p.branch2.c3", "p"), ("r", "p")])
    assert '"a" -> "r" [style=dashed, label="identity"]' in text
    assert 'subgraph "cluster_r"' in text and 'subgraph "cluster_p"' in text


def test_dot_on_stdout_and_in_a_file(tmp_path):
    spec = ARCH / "resnet18.yaml"
    result = runner.invoke(app, ["viz", "graph", str(spec), "--out", "-"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == graph_dot(resolve(load_spec(spec)))
    out = tmp_path / "net.dot"
    result = runner.invoke(app, ["viz", "graph", str(spec), "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    assert out.read_text() == graph_dot(resolve(load_spec(spec)))
    small = runner.invoke(app, ["viz", "graph", str(ARCH / "lenet5.yaml"), "-i", "36x36x1",
                                "--out", "-"])
    assert "32 x 32 x 6" in small.stdout  # C1 on a 36 x 36 input


def test_without_graphviz_svg_and_png_exit_2_saying_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no dot on the PATH
    for name in ("net.svg", "net.png"):
        out = tmp_path / name
        result = runner.invoke(app, ["viz", "graph", str(ARCH / "lenet5.yaml"), "-o", str(out)])
        assert result.exit_code == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert "apt-get install graphviz" in lines[0] and ".dot" in lines[0]
        assert not out.exists() and list(tmp_path.iterdir()) == []
    result = runner.invoke(app, ["viz", "graph", str(ARCH / "lenet5.yaml"), "-o",
                                 str(tmp_path / "net.dot")])
    assert result.exit_code == 0  # DOT needs no Graphviz


@pytest.mark.parametrize("out,fragment", [("net.pdf", "must end in .dot, .gv, .svg or .png"),
                                          ("nowhere/net.dot", "does not exist")])
def test_graph_bad_out(tmp_path, out, fragment):
    result = runner.invoke(app, ["viz", "graph", str(ARCH / "lenet5.yaml"), "-o",
                                 str(tmp_path / out)])
    assert result.exit_code == 2 and fragment in result.stderr
    assert "Traceback" not in result.stderr


def test_graph_will_not_overwrite_its_spec(tmp_path):
    spec = tmp_path / "net.dot"
    spec.write_text((ARCH / "lenet5.yaml").read_text())
    result = runner.invoke(app, ["viz", "graph", str(spec), "-o", str(spec)])
    assert result.exit_code == 2 and "would overwrite the input" in result.stderr
    assert spec.read_text() == (ARCH / "lenet5.yaml").read_text()


def _fake_dot(folder: Path, body: str) -> None:
    """A stand-in ``dot`` on the PATH (a Python script), to test the plumbing anywhere."""
    import sys

    exe = folder / "dot"
    exe.write_text(f"#!{sys.executable}\nimport sys\n{body}\n")
    exe.chmod(0o755)


def test_svg_is_what_dot_prints_for_our_dot_text(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_dot(bin_dir, "text = sys.stdin.read()\n"
                       "assert sys.argv[1:] == ['-Tsvg'], sys.argv\n"
                       "sys.stdout.write('<svg>' + str(len(text)) + '</svg>')")
    monkeypatch.setenv("PATH", str(bin_dir))
    out = tmp_path / "net.svg"
    result = runner.invoke(app, ["viz", "graph", str(ARCH / "resnet18.yaml"), "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    n = len(graph_dot(resolve(load_spec(ARCH / "resnet18.yaml"))).encode())
    assert out.read_text() == f"<svg>{n}</svg>"


def test_a_failing_dot_is_one_error_line_and_no_file(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_dot(bin_dir, "sys.stderr.write('Error: syntax error in line 3\\n'); sys.exit(1)")
    monkeypatch.setenv("PATH", str(bin_dir))
    out = tmp_path / "net.png"
    result = runner.invoke(app, ["viz", "graph", str(ARCH / "lenet5.yaml"), "-o", str(out)])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: Graphviz's dot failed (exit 1): Error: syntax error "
                                     "in line 3")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bin"]
