"""The shape report behind ``cnn shapes``: per-layer sizes, parameters, cost, receptive field.

Everything here is computed from the resolved network without allocating a single weight,
so even ResNet-50's report costs a few kilobytes. :func:`shape_report` returns plain data
(the JSON the CLI prints); renderers live in the CLI.
"""

from __future__ import annotations

from math import prod
from pathlib import Path
from typing import Any

from cnncli.layers.base import Node, Shape
from cnncli.spec import Network, Spec, load_spec, resolve

BYTES_PER_VALUE = 4  # float32, the engine's default
MAC_CONVENTION = "1 MAC = 2 FLOPs; MACs count conv, deconv and dense multiply-adds only"


def _rf(node: Node) -> tuple[Any, Any]:
    if node.rf is None:
        return None, None
    (rh, rw), (jh, jw) = node.rf.size, node.rf.jump
    size = rh if rh == rw else [rh, rw]
    jh2 = int(jh) if float(jh).is_integer() else jh
    jw2 = int(jw) if float(jw).is_integer() else jw
    jump = jh2 if jh2 == jw2 else [jh2, jw2]
    return size, jump


def layer_row(node: Node, frozen: bool = False) -> dict[str, Any]:
    weights = sum(prod(s) for k, s in node.params.items() if k != "bias")
    biases = sum(prod(s) for k, s in node.params.items() if k == "bias")
    rf, jump = _rf(node)
    return {
        "name": node.path,
        "type": node.type,
        "detail": node.layer.describe(),
        "depth": node.path.count("."),
        "input": list(node.in_shape),
        "output": list(node.out_shape),
        "params": weights + biases,
        "weights": weights,
        "biases": biases,
        "non_trainable": sum(prod(s) for s in node.buffers.values()),
        "frozen": frozen,
        "trainable_params": 0 if frozen else weights + biases,
        "frozen_params": weights + biases if frozen else 0,
        "macs": node.macs,
        "receptive_field": rf,
        "jump": jump,
        "activation_values": prod(node.out_shape),
        "explain": list(node.explain),
        "line": node.layer.line,
    }


def shape_report(network: Network, batch: int = 1, freeze: tuple[str, ...] = (),
                 optimizer: str | None = None) -> dict[str, Any]:
    """The whole report as JSON-ready data (see README for the fields). ``freeze``: layer
    paths (dotted prefixes) frozen on top of the spec's ``trainable: false``; frozen
    parameters count as non-trainable, as Keras counts them. ``optimizer`` (sgd, adam, ...):
    add the training memory per row and in ``totals["memory"]`` (cnncli.memory)."""
    from cnncli.freeze import check_freeze_names, frozen_paths

    check_freeze_names(network.nodes, freeze)
    frozen = frozen_paths(network.nodes, freeze)
    rows = [layer_row(n, n.path in frozen) for n in network.rows()]
    frozen_params = sum(r["frozen_params"] for r in rows)
    trainable = sum(r["params"] for r in rows) - frozen_params
    non_trainable = sum(r["non_trainable"] for r in rows) + frozen_params
    macs = sum(r["macs"] for r in rows)
    memory = None
    if optimizer is not None:
        from cnncli.memory import memory_rows

        memory = {"batch": batch, **memory_rows(network, rows, batch, optimizer)}
    act_values = sum(r["activation_values"] for r in rows)
    return {
        "name": network.spec.name,
        "file": network.spec.file,
        "input": list(network.input),
        "output": list(network.output),
        "layers": rows,
        "totals": {
            "params": trainable + non_trainable,
            "trainable_params": trainable,
            "non_trainable_params": non_trainable,
            "frozen_params": frozen_params,
            "macs": macs,
            "flops": 2 * macs,
            "param_bytes": (trainable + non_trainable) * BYTES_PER_VALUE,
            "activation_bytes_per_image": act_values * BYTES_PER_VALUE,
            "input_bytes_per_image": prod(network.input) * BYTES_PER_VALUE,
            "batch": batch,
            "activation_bytes_batch": act_values * BYTES_PER_VALUE * batch,
            "bytes_per_value": BYTES_PER_VALUE,
            "convention": MAC_CONVENTION,
            **({"memory": memory} if memory is not None else {}),
        },
        "warnings": list(network.warnings),
        "notes": list(network.notes),
    }


def shapes(
    source: str | Path | dict | Spec, input_shape: Shape | None = None, batch: int = 1,
    freeze: tuple[str, ...] = (), optimizer: str | None = None,
) -> dict[str, Any]:
    """Load (if needed), resolve and report: the one call behind ``cnn shapes``."""
    spec = source if isinstance(source, Spec) else load_spec(source, input_shape=input_shape)
    return shape_report(resolve(spec, input_shape), batch=batch, freeze=freeze,
                        optimizer=optimizer)
