"""Training memory of a network, estimated from its plan: ``cnn shapes --memory``.

Five parts, float32, for a batch of N images trained with a given optimizer:

* parameters (and buffers: batchnorm running statistics);
* gradients: one array per trainable parameter (the backward pass allocates them, the
  model keeps them until the next one);
* optimizer state: per trainable parameter, the optimizer's buffers (SGD momentum 1,
  Adam 2, ...) and the scratch arrays it writes (:meth:`cnncli.optim.Optimizer.scratch_used`: 1,
  2 with coupled weight decay; none for arrays SGD updates in its fused kernel);
* activations the backward pass keeps: walked over the engine's own plan
  (:func:`cnncli.engine.plan.build_plan`, so fusions count as the engine runs them), each
  layer saying what its forward caches (:meth:`cnncli.layers.base.Layer.kept`). Arrays are
  tracked by identity, so a conv's output that the batchnorm after it also keeps counts
  once; the input batch counts (the first layer keeps it);
* the backward's transient peak: the largest (incoming gradient + outgoing gradient) of
  any step, the two activation-sized arrays alive at once while a step runs backward.

Building the plan needs NumPy but never Numba (no kernel is compiled or run).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from typing import Any

from cnncli.layers.base import Kept, Node

BYTES = 4  # float32


@dataclass
class _Walk:
    """Arrays (by id) with their size per image, which ones are kept and by which row."""

    sizes: list[int] = field(default_factory=list)
    kept: set[int] = field(default_factory=set)
    per_image: dict[str, int] = field(default_factory=dict)
    fixed: dict[str, int] = field(default_factory=dict)
    transient: int = 0  # values per image: max over steps of dy + dx
    logits_of: str | None = None

    def new(self, shape: tuple[int, ...]) -> int:
        self.sizes.append(prod(shape))
        return len(self.sizes) - 1

    def keep(self, row: str, tid: int) -> None:
        if tid not in self.kept:
            self.kept.add(tid)
            self.per_image[row] = self.per_image.get(row, 0) + self.sizes[tid] * BYTES

    def own(self, row: str, k: Kept) -> None:
        self.per_image[row] = self.per_image.get(row, 0) + k.per_image
        self.fixed[row] = self.fixed.get(row, 0) + k.fixed


def _leaf(st: _Walk, node: Node, k: Kept, x: int, out_shape: tuple[int, ...]) -> int:
    """Apply ``k`` for ``node`` reading array ``x``; returns its output array."""
    y = x if k.alias else st.new(out_shape)
    if k.input:
        st.keep(node.path, x)
    if k.output:
        st.keep(node.path, y)
    st.own(node.path, k)
    return y


def _steps(st: _Walk, plan: Any, nodes: list[Node], x: int) -> int:
    from cnncli.engine.plan import ConvBatchNormStep, ConvPoolStep

    for step in plan.steps(nodes):
        node = step.node
        st.transient = max(st.transient, prod(node.in_shape) + prod(step.out_node.out_shape))
        logits = node.path == st.logits_of
        if node.layer.is_block:
            x = _block(st, plan, node, x, logits)
        elif isinstance(step, ConvPoolStep):
            pool = step.covers[0]
            x = _leaf(st, node, node.layer.kept_pooled(node, pool, BYTES), x, pool.out_shape)
        elif isinstance(step, ConvBatchNormStep):  # training: conv, then bn (+ its act)
            bn = step.covers[0]
            z = _leaf(st, node, node.layer.kept(node, BYTES), x, node.out_shape)
            x = _leaf(st, bn, bn.layer.kept(bn, BYTES), z, bn.out_shape)
        else:  # a leaf, or batchnorm with its ReLU (the act keeps nothing more)
            k = node.layer.kept(node, BYTES, logits=logits)
            x = _leaf(st, node, k, x, step.out_node.out_shape)
    return x


def _block(st: _Walk, plan: Any, node: Node, x: int, logits: bool) -> int:
    if node.type == "residual":
        _steps(st, plan, node.children["body"], x)
        _steps(st, plan, node.children["shortcut"], x)
        return _leaf(st, node, node.layer.kept(node, BYTES, logits=logits), x, node.out_shape)
    if node.type == "parallel":  # concat / add: a new array, nothing kept for it
        for children in node.children.values():
            _steps(st, plan, children, x)
        return st.new(node.out_shape)
    return _steps(st, plan, node.children["layers"], x)  # sequential, repeat


def kept_activations(network: Any, logits: bool = True) -> tuple[dict, dict, int]:
    """(row path -> kept bytes per image, row path -> batch-independent kept bytes,
    transient values per image) for a training pass of ``network`` as the default engine
    plans it. ``logits``: trained with the fused softmax cross-entropy (a final softmax is
    skipped, as ``cnn train`` does)."""
    import numpy as np

    from cnncli.engine.model import _softmax_head
    from cnncli.engine.plan import build_plan
    from cnncli.ops.options import DEFAULT

    plan = build_plan(network.nodes, np.float32, DEFAULT)
    last = network.nodes[-1] if network.nodes else None
    st = _Walk(logits_of=_softmax_head(last) if logits else None)
    x = st.new(network.input)
    _steps(st, plan, network.nodes, x)
    return st.per_image, st.fixed, st.transient


def _ws_steps(plan: Any, nodes: list[Node], out: dict, batch: int, opts: Any,
              first: str | None, logits_of: str | None) -> None:
    from cnncli.engine.plan import ConvPoolStep

    def add(sizes: dict[str, int]) -> None:
        for tag, size in sizes.items():
            out[tag] = max(out.get(tag, 0), max(size, 1))  # _threads.workspace: >= 1

    for step in plan.steps(nodes):
        node = step.node
        if node.layer.is_block:
            for children in node.children.values():
                _ws_steps(plan, children, out, batch, opts, first, logits_of)
            continue
        if node.type == "conv":
            algo = step.kwargs.get("algo") or node.layer.algo(node, "float32", opts)
            add(node.layer.workspaces(node, algo, batch, BYTES, opts,
                                      need_dx=node.path != first,
                                      logits=node.path == logits_of,
                                      pooled=isinstance(step, ConvPoolStep)))
        elif node.type == "pool" and not isinstance(step, ConvPoolStep):
            add(node.layer.workspaces(node))


def workspace_elements(network: Any, batch: int, logits: bool = True) -> dict[str, int]:
    """Workspace tag -> elements of the scratch buffer the engine holds for it after a
    training step of ``batch`` images on one thread: ``_threads.workspace`` keeps one
    buffer per tag (and part and dtype), grown to the largest request, so each tag
    counts the most any conv or pooling step asks for (each layer's own size rule,
    ``Conv.workspaces`` / ``Pool.workspaces``, on the paths the plan chose). With T
    threads each part has its own set, for its share of the batch (not estimated here).
    Deconvolutions are not modelled (no shipped architecture has one)."""
    import numpy as np

    from cnncli.engine.model import _first_leaf, _softmax_head
    from cnncli.engine.plan import build_plan
    from cnncli.ops.options import DEFAULT

    plan = build_plan(network.nodes, np.float32, DEFAULT)
    last = network.nodes[-1] if network.nodes else None
    out: dict[str, int] = {}
    _ws_steps(plan, network.nodes, out, batch, DEFAULT, _first_leaf(network.nodes),
              _softmax_head(last) if logits else None)
    return out


def _fused_min(optimizer: str) -> int | None:
    from cnncli.optim import FUSED_MIN

    return FUSED_MIN if optimizer == "sgd" else None


def memory_rows(network: Any, rows: list[dict], batch: int, optimizer: str = "sgd",
                **hparams: Any) -> dict[str, Any]:
    """Add the memory fields to the report ``rows`` (in place) and return the totals.

    Per row: ``param_bytes`` (params + buffers), ``grad_bytes``, ``optimizer_bytes`` (state
    + scratch), ``kept_bytes`` (activations kept for the backward pass, for ``batch``)."""
    if optimizer == "sgd" and "momentum" not in hparams:
        hparams["momentum"] = 0.9  # cnn train's default for sgd
    from cnncli.optim import make_optimizer

    opt = make_optimizer(optimizer, **hparams)
    buffers, scratch = opt.state_buffers(), opt.scratch_used()
    arrays = {n.path: [prod(s) for s in n.params.values()]
              for top in network.nodes for n in top.walk()}
    per_image, fixed, transient = kept_activations(network)
    for r in rows:
        trainable = r["trainable_params"]
        r["param_bytes"] = (r["params"] + r["non_trainable"]) * BYTES
        r["grad_bytes"] = trainable * BYTES
        sizes = arrays.get(r["name"], [])  # each array's scratch follows its own path
        if sum(sizes) != trainable:  # frozen (0), or not one array per parameter
            sizes = [trainable]
        r["optimizer_bytes"] = sum(k * (buffers + opt.scratch_used(k)) for k in sizes) * BYTES
        r["kept_bytes"] = per_image.get(r["name"], 0) * batch + fixed.get(r["name"], 0)
    totals = {
        "optimizer": optimizer,
        "optimizer_settings": hparams,
        "optimizer_buffers_per_param": buffers,
        "optimizer_scratch_per_param": scratch,
        # arrays at least this large get no scratch (SGD's fused kernel); None: all do
        "optimizer_scratch_below": _fused_min(optimizer),
        "param_bytes": sum(r["param_bytes"] for r in rows),
        "grad_bytes": sum(r["grad_bytes"] for r in rows),
        "optimizer_bytes": sum(r["optimizer_bytes"] for r in rows),
        "kept_bytes": sum(r["kept_bytes"] for r in rows),
        "transient_bytes": transient * batch * BYTES,
        "workspace_bytes": sum(workspace_elements(network, batch).values()) * BYTES,
    }
    totals["total_bytes"] = sum(totals[k] for k in (
        "param_bytes", "grad_bytes", "optimizer_bytes", "kept_bytes", "transient_bytes",
        "workspace_bytes"))
    return totals
