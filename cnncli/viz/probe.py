"""Finding a layer of a network by name and looking at what passes through it.

Uses the engine's taps (``Model.taps``): one forward pass keeps the named node's output,
one backward pass keeps the gradient that arrives there. Nothing is recomputed here, so a
feature map or a gradient is exactly what the model itself computed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from cnncli.errors import CnnError
from cnncli.layers.base import Node, suggest


def all_nodes(nodes: list[Node]) -> Iterator[Node]:
    """Every node (layers and blocks) in execution order: a block after its children."""
    for node in nodes:
        for children in node.children.values():
            yield from all_nodes(children)
        yield node


def find_node(network: Any, name: str) -> Node:
    """The node whose dotted path is ``name``; a one-line error naming close matches."""
    by_path = {n.path: n for n in all_nodes(network.nodes)}
    if name in by_path:
        return by_path[name]
    raise CnnError(f"no layer named '{name}' in {network.spec.name}{suggest(name, by_path)}; "
                   "the names are those of 'cnn shapes'")


def is_spatial(node: Node) -> bool:
    """Whether the node outputs feature maps larger than 1 x 1 (H x W x C)."""
    return len(node.out_shape) == 3 and node.out_shape[0] * node.out_shape[1] > 1


def spatial_node(network: Any, name: str | None) -> Node:
    """The named node, which must output feature maps; default: the last report row that
    does (where Grad-CAM is usually taken: the most abstract features that still have a
    place)."""
    if name is not None:
        node = find_node(network, name)
        if not is_spatial(node):
            shape = " x ".join(map(str, node.out_shape))
            raise CnnError(f"layer '{name}' outputs {shape}, not feature maps (H x W x C with "
                           f"H x W > 1); pick one of: {_names(network, is_spatial)}")
        return node
    spatial = [n for n in network.rows() if is_spatial(n)]  # rows of cnn shapes
    if not spatial:
        raise CnnError(f"{network.spec.name} has no layer with feature maps larger than 1 x 1")
    return spatial[-1]


def conv_node(network: Any, name: str | None) -> Node:
    """The named conv layer; default: the first (the one whose filters are image patterns)."""
    convs = [n for n in all_nodes(network.nodes) if n.type == "conv"]
    if name is None:
        if not convs:
            raise CnnError(f"{network.spec.name} has no conv layer")
        return convs[0]
    node = find_node(network, name)
    if node.type != "conv":
        raise CnnError(f"layer '{name}' is a {node.type} layer, not a conv layer; conv layers: "
                       f"{_names(network, lambda n: n.type == 'conv')}")
    return node


def _names(network: Any, keep: Any, most: int = 8) -> str:
    names = [n.path for n in all_nodes(network.nodes) if keep(n)]
    return ", ".join(names[:most]) + (f", ... ({len(names)} in all)" if len(names) > most else "")


def activations(model: Any, x: np.ndarray, path: str) -> tuple[np.ndarray, np.ndarray]:
    """(the node's output, the network's output) for a batch, in evaluation mode."""
    model.taps = frozenset({path})
    try:
        out = model.forward(x, training=False, logits=True)
        return model.tapped[path], out
    finally:
        model.taps = frozenset()
        model.release()


def class_gradients(model: Any, x: np.ndarray, path: str | None, cls: int
                    ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray, np.ndarray]:
    """Gradients of one image's class score (the logit, before any softmax).

    Returns (the node's output, the score's gradient there, the gradient at the input,
    the logits); the first two are None when ``path`` is None. The last node is always
    tapped too: a tapped pass runs unfused, which is what a backward after an
    evaluation-mode forward needs (a fused conv+pool pass keeps no argmax then)."""
    model.taps = frozenset({model.network.nodes[-1].path} | ({path} if path else set()))
    try:
        logits = model.forward(x, training=False, logits=True)
        dy = np.zeros_like(logits)
        dy[:, cls] = 1.0
        dx = model.backward(dy)
        if path is None:
            return None, None, dx, logits
        return model.tapped[path], model.tapped_grads[path], dx, logits
    finally:
        model.taps = frozenset()
        model.release()
