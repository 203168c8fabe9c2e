"""The plan: how each node of a network runs, decided once when the model is built.

``build_plan`` walks the same node tree that ``cnn shapes`` reports and gives every node
a :class:`Step`. A step knows which node(s) it runs, the kernel path chosen for their
shapes (shown by ``cnn time``) and the arguments that choice implies. Fusions are steps
that cover more than one node:

* conv + ReLU + 2x2 max pool, when the conv is on the Winograd path (the pooling runs in
  its output transform): :class:`ConvPoolStep`;
* batchnorm followed by ReLU or ReLU6: one pass forward, one backward;
* (inside the residual block itself) the add and the ReLU after it.

The maths stays with the layers (``Layer.forward``/``backward``); a step only calls them
with what the plan chose. Convolutions get a :class:`~cnncli.ops.conv.algo.ConvAlgo`
from the cost rules, or from timing the candidates when the model is tuned
(:mod:`cnncli.engine.autotune`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cnncli.layers.base import Node
from cnncli.ops.options import EngineOptions


@dataclass
class Step:
    """Run ``node`` (and the nodes in ``covers``, whose work it does) forward and back."""

    node: Node
    covers: tuple[Node, ...] = ()
    #: The kernel path, for reports: 'winograd', 'im2col / im2col / direct', 'fused'...
    path: str = ""
    #: Extra keyword arguments for the layer's forward (``algo=``, ``act=``).
    kwargs: dict[str, Any] = field(default_factory=dict)

    def forward(self, x: Any, run: Any) -> tuple[Any, Any]:
        node = self.node
        return node.layer.forward(node, x, run.model.state[node.path], run, **self.kwargs)

    def backward(self, dy: Any, cache: Any, run: Any) -> Any:
        node = self.node
        state = run.model.state[node.path]
        if node.layer.is_block:
            return node.layer.backward(node, dy, cache, state, run)
        local: dict[str, Any] = {}
        dx = node.layer.backward(node, dy, cache, state, local, **_grad_kwargs(node, run))
        for k, g in local.items():
            run.grads[f"{node.path}.{k}"] = g
        return dx

    @property
    def out_node(self) -> Node:
        """The node whose output this step produces (the last one it covers)."""
        return self.covers[-1] if self.covers else self.node


class ConvPoolStep(Step):
    """A conv with ReLU and the 2x2 max pooling after it, as one op (Conv.forward_pooled)."""

    def forward(self, x: Any, run: Any) -> tuple[Any, Any]:
        node = self.node
        return node.layer.forward_pooled(node, x, run.model.state[node.path], run)


class ConvBatchNormStep(Step):
    """A conv, the batchnorm after it and optionally that batchnorm's ReLU/ReLU6. In
    training the two layers run one after the other (batchnorm needs the batch's
    statistics); in evaluation as one conv with the normalisation folded into its weights
    and bias (Conv.forward_folded), the activation in its output pass."""

    def forward(self, x: Any, run: Any) -> tuple[Any, Any]:
        conv, bn = self.node, self.covers[0]
        act = self.covers[1].type if len(self.covers) > 1 else None
        cs, bs = run.model.state[conv.path], run.model.state[bn.path]
        if run.training:
            z, c1 = conv.layer.forward(conv, x, cs, run, **self.kwargs)
            y, c2 = bn.layer.forward(bn, z, bs, run, act=act)
            return y, ("separate", c1, c2)
        y, c = conv.layer.forward_folded(conv, x, cs, run, bn, bs, act, **self.kwargs)
        return y, ("folded", c, None)

    def backward(self, dy: Any, cache: Any, run: Any) -> Any:
        conv, bn = self.node, self.covers[0]
        cs, bs = run.model.state[conv.path], run.model.state[bn.path]
        kind, c1, c2 = cache
        g_conv: dict[str, Any] = {}
        g_bn: dict[str, Any] = {}
        if kind == "separate":
            dz = bn.layer.backward(bn, dy, c2, bs, g_bn, **_grad_kwargs(bn, run))
            dx = conv.layer.backward(conv, dz, c1, cs, g_conv, **_grad_kwargs(conv, run))
        else:
            dx = conv.layer.backward_folded(conv, dy, c1, cs, bs, g_conv, g_bn)
        frozen = getattr(run, "frozen", ())
        for node, grads in ((conv, g_conv), (bn, g_bn)):
            if node.path in frozen:  # the folded (evaluation) backward computes both
                continue
            for k, g in grads.items():
                run.grads[f"{node.path}.{k}"] = g
        return dx


def _grad_kwargs(node: Node, run: Any) -> dict[str, Any]:
    """What a layer with parameters (``grad_options``) need not compute: the weight
    gradients of a frozen node, the input gradient nobody reads (a first conv reads the
    latter from the run context itself)."""
    if not node.layer.grad_options:
        return {}
    kw = {}  # only what differs from the defaults (True, True)
    if node.path in getattr(run, "frozen", ()):
        kw["param_grads"] = False
    if getattr(run, "skip_input_grad", None) == node.path:
        kw["need_dx"] = False
    return kw


@dataclass
class Plan:
    """Steps for every node list of a network (the top level and each block's children),
    and the options they were chosen under."""

    options: EngineOptions
    top: list[Step]
    sequences: dict[int, list[Step]]
    by_path: dict[str, Step]

    def steps(self, nodes: list[Node]) -> list[Step]:
        """The steps of one node list of the network (looked up by the list itself)."""
        return self.sequences[id(nodes)]

    def fusions(self) -> dict[str, tuple[str, ...]]:
        """node path -> the paths of the nodes its step also runs, for every fused step."""
        return {p: tuple(c.path for c in s.covers) for p, s in self.by_path.items() if s.covers}

    def describe(self, path: str) -> tuple[str, str | None]:
        """(kernel path, the node whose step does this node's work or None) for reports."""
        step = self.by_path.get(path)
        if step is not None:
            return step.path, None
        for s in self.by_path.values():
            if any(c.path == path for c in s.covers):
                return "fused", s.node.path
        return "", None


def build_plan(nodes: list[Node], dtype: Any, options: EngineOptions,
               algos: dict[str, Any] | None = None, keep: frozenset[str] = frozenset()
               ) -> Plan:
    """The plan of a network's top-level ``nodes``. ``algos`` (node path -> ConvAlgo)
    overrides the cost rules' choice for some convs (the autotuner's results). The output
    of a node in ``keep`` must exist (``Model.taps``): no step fuses it with what follows."""
    plan = Plan(options, [], {}, {})
    plan.top = _plan_list(nodes, dtype, options, algos or {}, plan, keep)
    return plan


def _plan_list(nodes: list[Node], dtype: Any, opts: EngineOptions, algos: dict,
               plan: Plan, keep: frozenset[str] = frozenset()) -> list[Step]:
    steps: list[Step] = []
    i = 0
    while i < len(nodes):
        node = nodes[i]
        step, used = _step(node, nodes[i + 1:], dtype, opts, algos, plan, keep)
        if any(n.path in keep for n in (step.node, *step.covers[:-1])):
            step, used = _step(node, [], dtype, opts, algos, plan, keep)  # nothing fused
        steps.append(step)
        plan.by_path[node.path] = step
        i += used
    plan.sequences[id(nodes)] = steps
    return steps


def _step(node: Node, rest: list[Node], dtype: Any, opts: EngineOptions, algos: dict,
          plan: Plan, keep: frozenset[str] = frozenset()) -> tuple[Step, int]:
    """The step for ``node`` (followed by ``rest`` in its list) and how many nodes it
    covers."""
    after = rest[0] if rest else None
    if node.layer.is_block:
        for children in node.children.values():
            _plan_list(children, dtype, opts, algos, plan, keep)
        return Step(node, path=_block_path(node, opts)), 1
    if node.type == "conv":
        if after is not None and opts.fuse_relu_maxpool and node.layer.fuses_pool(
                node, after, dtype, opts):
            return ConvPoolStep(node, (after,), path="winograd, ReLU + 2x2 max pool fused"), 2
        algo = algos.get(node.path) or node.layer.algo(node, dtype, opts)
        if (opts.fold_bn and after is not None and after.type == "batchnorm"
                and len(after.in_shape) == 3 and node.layer.cfg.get("activation") is None):
            act = rest[1] if (len(rest) > 1 and rest[1].type in ("relu", "relu6")
                              and opts.fuse_bn_act) else None
            covers = (after,) if act is None else (after, act)
            return ConvBatchNormStep(node, covers, path=algo.describe() + ", batchnorm "
                                     "folded at evaluation", kwargs={"algo": algo}), 1 + len(covers)
        return Step(node, path=algo.describe(), kwargs={"algo": algo}), 1
    if (node.type == "batchnorm" and opts.fuse_bn_act and after is not None
            and after.type in ("relu", "relu6")):
        return Step(node, (after,), path=f"batchnorm + {after.type}, one pass",
                    kwargs={"act": after.type}), 2
    if node.type == "batchnorm":
        return Step(node, path="one pass"), 1
    return Step(node), 1


def _block_path(node: Node, opts: EngineOptions) -> str:
    act = node.layer.cfg.get("activation")
    if node.type == "residual" and opts.fuse_add_act and act is not None and act[0] == "relu":
        return "add + ReLU, one pass"
    return ""
