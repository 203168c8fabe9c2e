"""Frozen layers: which nodes of a network keep their parameters fixed during training.

A layer is frozen when the spec says ``trainable: false`` on it or on a block around it,
or when a ``--freeze`` name is its dotted path or a prefix of it on a dot boundary
(``layer1`` freezes ``layer1.0.conv1`` but not ``layer10``). Frozen parameters get no
gradient and no update; a frozen batchnorm normalises with its running statistics in
training too (and does not update them), as Keras does for ``trainable = False``.

Pure functions over the resolved node tree: ``cnn shapes`` uses them without NumPy.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cnncli.errors import CnnError
from cnncli.layers.base import Node, suggest


def parse_freeze(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"layer1,layer2"`` (or a list of such strings) -> ("layer1", "layer2")."""
    if not text:
        return ()
    items = [text] if isinstance(text, str) else list(text)
    names = [n.strip() for item in items for n in str(item).split(",")]
    return tuple(n for n in names if n)


def _all_nodes(nodes: Iterable[Node]):
    for node in nodes:
        yield node
        for children in node.children.values():
            yield from _all_nodes(children)


def _matches(name: str, path: str) -> bool:
    return path == name or path.startswith(name + ".")


def check_freeze_names(nodes: list[Node], names: Sequence[str]) -> None:
    """CnnError for a name that is no layer or block path (nor a prefix of one)."""
    paths = [n.path for n in _all_nodes(nodes)]
    for name in names:
        if not any(_matches(name, p) for p in paths):
            raise CnnError(f"--freeze: no layer or block named '{name}'"
                           f"{suggest(name, paths, n=3, cutoff=0.5)}; names are dotted layer paths "
                           "as `cnn shapes` lists them (a prefix freezes everything below it)")


def frozen_paths(nodes: list[Node], names: Sequence[str] = ()) -> frozenset[str]:
    """Paths of every frozen node (blocks and leaves) under ``nodes``."""
    out: set[str] = set()

    def walk(level: list[Node], inherited: bool) -> None:
        for node in level:
            frozen = (inherited or not node.layer.trainable
                      or any(_matches(n, node.path) for n in names))
            if frozen:
                out.add(node.path)
            for children in node.children.values():
                walk(children, frozen)

    walk(nodes, False)
    return frozenset(out)
