"""A model: the resolved network plus its arrays, run forward and backward.

The model never re-derives a shape: it walks the same :class:`~cnncli.layers.base.Node`
tree that ``cnn shapes`` reports, and each node's layer object does the maths. So the
engine and the calculator cannot disagree about a layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np

from cnncli.engine.plan import build_plan
from cnncli.errors import ShapeMismatchError
from cnncli.layers.base import Node
from cnncli.ops import _threads
from cnncli.ops.options import DEFAULT, EngineOptions
from cnncli.spec import Network, Spec, load_spec, resolve

_SKIP_FOR_INIT = frozenset({"batchnorm", "dropout", "pool", "flatten", "lrn", "global_pool"})


@dataclass
class _Run:
    """Per-pass context handed to layers: mode, random source, which part of the batch
    this is, and how to run children (by the plan's steps)."""

    model: Model
    training: bool
    rng: np.random.Generator | None
    logits_of: str | None = None  # path of the layer whose softmax is skipped (fused loss)
    #: Path of the leaf node whose input gradient nobody needs (set by
    #: ``Model.backward(..., input_grad=False)``): it may skip computing it.
    skip_input_grad: str | None = None
    #: How many of the network's first top-level steps the backward pass skips whole
    #: (they hold no trainable parameter and nobody needs the input gradient).
    skip_head: int = 0
    #: Where parameter gradients go (the model's dict; a part's own dict when the batch
    #: is split over threads, summed afterwards).
    grads: dict[str, np.ndarray] | None = None
    #: This part's index, the number of parts, its first image and the whole batch size.
    part: int = 0
    parts: int = 1
    lo: int = 0
    n: int = 0
    #: Where the parts meet (batchnorm statistics, dropout masks); None when not split.
    rendezvous: _threads.Rendezvous | None = None
    #: Weights prepared once per pass for all parts (Winograd transforms, cropped taps).
    shared: Any = None
    #: Per-node [forward, backward] seconds (``cnn time``); only the first part records.
    timer: dict[str, list[float]] | None = None
    trace: dict[str, tuple[int, ...]] | None = None
    #: Set by Model.backward: gradient name -> (full shape, TapCrop) of the convs that
    #: handed back the gradient of their live taps only (put back after the parts' sum).
    grad_crops: dict[str, tuple] | None = None

    @property
    def options(self) -> EngineOptions:
        return self.model.options

    @property
    def frozen(self) -> frozenset[str]:
        """Paths of the frozen nodes: no parameter gradients; batchnorm in eval mode."""
        return self.model.frozen

    def gather(self, key, value):
        """Every part's ``value`` for ``key``, in part order (just [value] when unsplit)."""
        if self.rendezvous is None:
            return [value]
        return self.rendezvous.gather(key, self.part, value)

    def run(self, nodes: list[Node], x: np.ndarray) -> tuple[np.ndarray, list]:
        caches = []
        timer, trace = self.timer, self.trace
        taps = self.model.taps
        for step in self.model.plan.steps(nodes):
            t0 = perf_counter() if timer is not None else 0.0
            x, cache = step.forward(x, self)
            caches.append(cache)
            if taps and step.out_node.path in taps:
                self.model.tapped[step.out_node.path] = x.copy()
            if timer is not None:
                timer.setdefault(step.node.path, [0.0, 0.0])[0] += perf_counter() - t0
            if trace is not None:
                if step.covers and step.node.type == "conv":  # the conv's own output too
                    h, w, c = step.node.out_shape
                    trace[step.node.path] = (self.n, c, h, w)
                for node in (step.node, *step.covers):
                    if node is step.out_node or node.path not in trace:
                        trace[node.path] = (self.n, *x.shape[1:])
        return x, caches

    def unrun(self, nodes: list[Node], dy: np.ndarray, caches: list) -> np.ndarray:
        timer, taps = self.timer, self.model.taps
        steps = self.model.plan.steps(nodes)
        if self.skip_head and nodes is self.model.network.nodes:
            steps, caches = steps[self.skip_head:], caches[self.skip_head:]
        for step, cache in zip(reversed(steps), reversed(caches)):
            if taps and step.out_node.path in taps:  # the gradient arriving at its output
                self.model.tapped_grads[step.out_node.path] = dy.copy()
            t0 = perf_counter() if timer is not None else 0.0
            dy = step.backward(dy, cache, self)
            if timer is not None:
                timer.setdefault(step.node.path, [0.0, 0.0])[1] += perf_counter() - t0
        return dy


class Model:
    """Arrays for every parameter and buffer of a network, its plan, and forward/backward.

    ``params`` and ``buffers`` map dotted names (``C1.weight``, ``layer1.0.bn1.running_mean``)
    to arrays; ``grads`` gets the same keys as ``params`` after :meth:`backward`. ``plan``
    holds each node's step (kernel path, fusions), made once from ``options``.
    """

    def __init__(self, network: Network, *, dtype: Any = np.float32, seed: int | None = 0,
                 rng: np.random.Generator | None = None,
                 options: EngineOptions | None = None,
                 params_of: Model | None = None) -> None:
        """``params_of``: share that model's parameter arrays (no initialisation) and copy
        its buffers: a throw-away twin whose passes cannot change the original's state."""
        self.network = network
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, not {self.dtype}")
        from cnncli.engine.heap import keep_freed_memory

        keep_freed_memory()  # steps reuse freed pages instead of faulting them in again
        rng = rng if rng is not None else np.random.default_rng(seed)
        self.state: dict[str, dict[str, np.ndarray]] = {}
        self.params: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self._param_node: dict[str, str] = {}  # parameter name -> its node's path
        self._given = params_of.state if params_of is not None else None
        self._init(network.nodes, rng, None)
        self._given = None
        from cnncli.freeze import frozen_paths

        #: Paths of the frozen nodes (``trainable: false`` in the spec, or :meth:`freeze`).
        self.frozen: frozenset[str] = (params_of.frozen if params_of is not None
                                       else frozen_paths(network.nodes))
        self._cache: list | None = None
        #: Set to a dict to record every node's output shape (N, ...) on the next forward.
        self.trace: dict[str, tuple[int, ...]] | None = None
        #: Set to a dict to accumulate [forward, backward] seconds per node (``cnn time``;
        #: with the batch split over threads, the first part's times).
        self.timer: dict[str, list[float]] | None = None
        self._runs: list[_Run] | None = None
        self._taps: frozenset[str] = frozenset()
        #: Outputs of the tapped nodes on the last forward, and the gradients arriving there
        #: on the last backward (copies, NCHW; see ``taps``).
        self.tapped: dict[str, np.ndarray] = {}
        self.tapped_grads: dict[str, np.ndarray] = {}
        self._ranges_run: list[tuple[int, int]] = []
        #: The ops' scratch buffers for this model's passes (reused from step to step).
        self.workspaces: dict[tuple, np.ndarray] = {}
        from cnncli.ops.conv import PassCache

        #: Weights prepared for evaluation passes (batchnorm folded into convs, Winograd
        #: transforms), reused until a training pass, set() or load_state_dict(), or
        #: weights_changed() after changing ``params`` arrays in place by other means.
        self._eval_cache = PassCache()
        self.training_rng = np.random.default_rng(rng.integers(2**63))
        last = network.nodes[-1] if network.nodes else None
        self.softmax_head = _softmax_head(last)
        self.options = options if options is not None else DEFAULT
        self.plan = build_plan(network.nodes, self.dtype, self.options)

    # -- construction -----------------------------------------------------------------------
    def _init(self, nodes: list[Node], rng: np.random.Generator, after: str | None) -> None:
        for i, node in enumerate(nodes):
            follow = _next_activation(nodes[i + 1:]) or after
            if node.layer.is_block:
                act = node.layer.cfg.get("activation")
                inner_after = act[0] if isinstance(act, tuple) else follow
                for children in node.children.values():
                    self._init(children, rng, inner_after)
                self.state[node.path] = {}
                continue
            own = node.layer.cfg.get("activation")
            nonlin = own[0] if isinstance(own, tuple) else follow
            if self._given is not None:
                arrays = {k: v if k in node.params else v.copy()
                          for k, v in self._given[node.path].items()}
            else:
                arrays = node.layer.init(node, rng, self.dtype, nonlin) if (
                    node.params or node.buffers) else {}
            self.state[node.path] = arrays
            for k in node.params:
                self.params[f"{node.path}.{k}"] = arrays[k]
                self._param_node[f"{node.path}.{k}"] = node.path
            for k in node.buffers:
                self.buffers[f"{node.path}.{k}"] = arrays[k]

    def freeze(self, names=()) -> None:
        """Freeze the layers the spec marks ``trainable: false`` and every layer whose
        dotted path is one of ``names`` or lies under one (``layer1`` freezes
        ``layer1.0.conv1``); CnnError naming close paths for a name that matches none."""
        from cnncli.freeze import check_freeze_names, frozen_paths

        names = tuple(names)
        check_freeze_names(self.network.nodes, names)
        self.frozen = frozen_paths(self.network.nodes, names)
        self.release()

    @property
    def trainable_params(self) -> dict[str, np.ndarray]:
        """The parameters of the layers that are not frozen (what an optimizer updates)."""
        frozen = self.frozen
        return {k: v for k, v in self.params.items() if self._param_node[k] not in frozen}

    def _idle_head(self) -> tuple[int, str | None]:
        """(how many leading top-level steps hold no trainable parameter, the leaf after
        them that receives their output alone): a training backward pass stops there."""
        live = {self._param_node[k] for k in self.trainable_params}

        def has_live(node: Node) -> bool:
            return any(p == node.path or p.startswith(node.path + ".") for p in live)

        top = self.plan.top
        for i, step in enumerate(top):
            if any(has_live(n) for n in (step.node, *step.covers)):
                return i, _first_leaf([step.node])
        return len(top), None

    def replan(self, options: EngineOptions | None = None, algos: dict | None = None) -> None:
        """Make the plan again (other options, or conv paths from the autotuner)."""
        if options is not None:
            self.options = options
        if algos is not None:
            self._algos = algos
        self.plan = build_plan(self.network.nodes, self.dtype, self.options,
                               getattr(self, "_algos", None), self._taps)
        self.release()

    @property
    def taps(self) -> frozenset[str]:
        """Node paths whose outputs (in ``tapped``) and incoming gradients (in
        ``tapped_grads``) the next passes keep (``cnn viz``). Setting it replans so that no
        step fuses a tapped node with the nodes after it."""
        return self._taps

    @taps.setter
    def taps(self, paths) -> None:
        paths = frozenset(paths)
        if paths != self._taps:
            self._taps = paths
            self.replan()

    def tune(self, batch: int, *, cache_file: Any = None, log: Any = None) -> dict:
        """Time the candidate kernel paths of every conv at this batch size (cached on
        disk) and plan with the fastest: ``cnn train --autotune``. Returns the table of
        timings per conv (:func:`cnncli.engine.autotune.tune`)."""
        from cnncli.engine.autotune import tune

        algos, report = tune(self, batch, cache_file=cache_file, log=log)
        self.replan(algos=algos)
        return report

    # -- running ----------------------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Expected per-image shape, NCHW order without N: (C, H, W)."""
        h, w, c = self.network.input
        return (c, h, w)

    def check_input(self, x: Any) -> np.ndarray:
        if not isinstance(x, np.ndarray):
            raise ShapeMismatchError(f"input: expected a NumPy array, got {type(x).__name__}")
        want = self.input_shape
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ShapeMismatchError(
                f"input: expected shape [N, {want[0]}, {want[1]}, {want[2]}] (N x C x H x W), "
                f"got {list(x.shape)}")
        if x.dtype != self.dtype:
            if not np.issubdtype(x.dtype, np.floating):
                raise ShapeMismatchError(f"input: expected {self.dtype} values, got {x.dtype}")
            x = x.astype(self.dtype)
        if not np.isfinite(x).all():
            raise ShapeMismatchError("input: contains NaN or inf")
        return np.ascontiguousarray(x)

    def forward(self, x: np.ndarray, training: bool = False, *, logits: bool = False,
                rng: np.random.Generator | None = None) -> np.ndarray:
        """Run the network. ``logits=True`` skips a final softmax (for the fused loss).

        With several worker threads the batch is cut into contiguous parts (at least
        _PART_MIN images each), and each thread runs the whole pass on its part; layers
        that need the whole batch (batchnorm's statistics in training, dropout's mask)
        meet at a rendezvous and combine the parts' values in part order. The split
        depends only on the batch size and the thread count, so results are
        deterministic for a given thread count."""
        x = self.check_input(x)
        self.release()  # the last pass's activations go before this pass makes its own
        self.tapped = {}
        rng = rng if rng is not None else self.training_rng
        head = self.softmax_head if logits else None
        nodes = self.network.nodes
        n = x.shape[0]
        ranges = self._ranges(n)
        rdv = _threads.Rendezvous(len(ranges)) if len(ranges) > 1 else None
        from cnncli.ops.conv import PassCache

        if training:
            self._eval_cache.clear()  # an optimizer step may follow: weights will change
        shared = PassCache() if training else self._eval_cache
        runs = [_Run(self, training, rng, head, grads={}, part=i, parts=len(ranges), lo=lo,
                     n=n, rendezvous=rdv, shared=shared,
                     timer=self.timer if i == 0 else None,
                     trace=self.trace if i == 0 else None)
                for i, (lo, _) in enumerate(ranges)]

        def part(lo: int, hi: int, p: int):
            return runs[p].run(nodes, x[lo:hi])

        with _threads.engine_region(), _threads.workspaces_of(self.workspaces):
            self._prepare(shared, "fwd" if training else "eval")
            results = _threads.run_parts(part, ranges,
                                         on_error=rdv.abort if rdv is not None else None)
        self._runs, self._ranges_run = runs, ranges
        if training:  # the backward prepares its own (Winograd's differ), bar the crops
            shared.clear(keep=("crop",))
        self._cache = [caches for _, caches in results]
        if len(results) == 1:
            return results[0][0]
        y0 = results[0][0]
        y = np.empty((n, *y0.shape[1:]), dtype=y0.dtype)
        for (lo, hi), (yp, _) in zip(ranges, results):
            y[lo:hi] = yp
        return y

    def _prepare(self, shared: Any, direction: str) -> None:
        """Prepare the pass's derived weights into ``shared`` before the parts start,
        shared out over the worker threads by cost: otherwise the first part to reach a
        conv prepares its weights while the others wait, layer after layer. ``direction``:
        'fwd' and 'bwd' (training: cut kernels, Winograd transforms) or 'eval' (also the
        conv + batchnorm folds, kept in the evaluation cache until the weights change)."""
        from cnncli.engine.plan import ConvBatchNormStep, ConvPoolStep
        from cnncli.ops import conv

        todo = []
        for step in self.plan.by_path.values():
            node = step.node
            if node.type != "conv":
                continue
            w = self.state[node.path]["weight"]
            if direction == "eval" and isinstance(step, ConvBatchNormStep):
                if ("fold", id(w)) not in shared:
                    todo.append((("fold", id(w)), self._fold_and_prepare(step, shared),
                                 (5 if step.kwargs["algo"].fwd == "winograd" else 1) * w.size))
                continue
            if isinstance(step, ConvPoolStep):
                algo = conv.ConvAlgo("winograd", "winograd", "winograd")
                if direction == "bwd":
                    continue
            else:
                algo = step.kwargs.get("algo")
                if algo is None:
                    continue
            todo += [p for p in conv.weight_preparations(
                w, algo, "bwd" if direction == "bwd" else "fwd") if p[0] not in shared]
        if not todo:
            return
        w = min(_threads.workers(), len(todo))
        buckets: list[list] = [[] for _ in range(w)]
        loads = [0] * w
        for item in sorted(todo, key=lambda p: -p[2]):  # largest first, to the least loaded
            b = loads.index(min(loads))
            buckets[b].append(item)
            loads[b] += item[2]

        def part(lo: int, hi: int, p: int) -> None:
            for key, make, _ in buckets[p]:
                shared.get(key, make)

        if w == 1 or sum(loads) < _threads.MIN_PARALLEL_WORK / 8:
            for i in range(w):  # too little to hand to another thread
                part(0, 1, i)
        else:
            _threads.run_parts(part, [(i, i + 1) for i in range(w)])

    def _fold_and_prepare(self, step: Any, shared: Any) -> Any:
        """The evaluation preparation of a conv + batchnorm step: the folded weights and,
        on the Winograd path, their transform (which needs the folded array first)."""
        from cnncli.ops import conv

        conv_node, bn = step.node, step.covers[0]
        algo = step.kwargs["algo"]
        state, bn_state = self.state[conv_node.path], self.state[bn.path]

        def make() -> tuple:
            folded = conv_node.layer.folded(conv_node, state, bn, bn_state, algo)
            if algo.fwd == "winograd" and algo.crop is None:
                shared.get(*conv.wino_entry(folded[0]))
            return folded

        return make

    def _ranges(self, n: int) -> list[tuple[int, int]]:
        """The parts a batch of ``n`` is cut into at the model level."""
        w = _threads.workers()
        if w < 2 or n < 2 * _PART_MIN or self._taps:  # taps keep whole-batch arrays
            return [(0, n)]
        return _threads.split(n, min(w, n // _PART_MIN))

    def backward(self, dy: np.ndarray, *, input_grad: bool = True) -> np.ndarray | None:
        """Gradients of sum(y * dy) (y the last forward's output) into :attr:`grads`.

        Returns the gradient with respect to the input; with ``input_grad=False`` (training
        needs only the parameter gradients) the first layer may skip it and None may be
        returned."""
        if self._cache is None or self._runs is None:
            raise RuntimeError("backward() needs a forward() first")
        self.grads.clear()
        self.tapped_grads = {}
        skip, head = None, 0
        if not input_grad:
            head, skip = self._idle_head()
        nodes = self.network.nodes
        runs, caches = self._runs, self._cache
        if len(runs) > 1:
            runs[0].rendezvous = rdv = _threads.Rendezvous(len(runs))
            for run in runs[1:]:
                run.rendezvous = rdv
        for run in runs:
            run.skip_input_grad, run.skip_head = skip, head
            run.grads = {}
            run.grad_crops = {}
            run.timer = self.timer if run.part == 0 else None
        ranges = self._ranges_run

        def part(lo: int, hi: int, p: int):
            return runs[p].unrun(nodes, dy[lo:hi], caches[p])

        with _threads.engine_region(), _threads.workspaces_of(self.workspaces):
            if runs[0].training:
                self._prepare(runs[0].shared, "bwd")
            dxs = _threads.run_parts(part, ranges, on_error=(
                runs[0].rendezvous.abort if len(runs) > 1 else None))
            if runs[0].training:
                runs[0].shared.clear()
            self.grads.update(_sum_parts(runs))
        if not input_grad:
            return None
        if len(dxs) == 1:
            return dxs[0]
        dx = np.empty((dy.shape[0], *dxs[0].shape[1:]), dtype=dxs[0].dtype)
        for (lo, hi), d in zip(ranges, dxs):
            dx[lo:hi] = d
        return dx

    def weights_changed(self) -> None:
        """Forget weights prepared for evaluation (call after editing ``params`` in place
        outside set(), load_state_dict() and training)."""
        self._eval_cache.clear()

    def release(self) -> None:
        """Drop the forward caches (frees activation memory after evaluation)."""
        self._cache = self._runs = None

    # -- parameters by name -----------------------------------------------------------------
    def get(self, name: str) -> np.ndarray:
        if name in self.params:
            return self.params[name]
        if name in self.buffers:
            return self.buffers[name]
        raise KeyError(f"no parameter or buffer named {name!r}")

    def set(self, name: str, value: Any) -> None:
        """Copy ``value`` into the named array (shape must match exactly: no broadcasting)."""
        target = self.get(name)
        value = np.asarray(value)
        if value.shape != target.shape:
            layer = name.rsplit(".", 1)[0]
            raise ShapeMismatchError(
                f"layer '{layer}': {name} expects shape {list(target.shape)}, "
                f"got {list(value.shape)}")
        target[...] = value
        self._eval_cache.clear()

    def state_dict(self) -> dict[str, np.ndarray]:
        return {**self.params, **self.buffers}

    def load_state_dict(self, arrays: dict[str, np.ndarray]) -> None:
        missing = [k for k in self.state_dict() if k not in arrays]
        if missing:
            raise ShapeMismatchError(f"missing arrays: {', '.join(missing[:5])}"
                                     + (" ..." if len(missing) > 5 else ""))
        for k in self.state_dict():
            self.set(k, arrays[k])

    @property
    def num_params(self) -> int:
        return int(sum(p.size for p in self.params.values()))


#: A batch is split at the model level only into parts of at least this many images.
_PART_MIN = 8


def _sum_parts(runs: list[_Run]) -> dict[str, np.ndarray]:
    """Each gradient summed over the parts in part order (deterministic), into the first
    part's array, and put back to its full shape where a conv gave its live taps only.
    The arrays are shared out among the worker threads by size (ResNet-18's 11 M
    gradients took 5 ms to sum on one thread)."""
    from cnncli.ops.conv import uncrop_grad

    first = runs[0]
    names = list(first.grads)
    out: dict[str, np.ndarray] = {}

    def finish(name: str) -> None:
        g = first.grads[name]
        for run in runs[1:]:  # each part's arrays are its own
            other = run.grads[name]
            if other is not None:  # None: the first part's array holds the whole sum
                g += other
        crop = first.grad_crops.get(name) if first.grad_crops else None
        out[name] = g if crop is None else uncrop_grad(g, *crop)

    work = [first.grads[k].size * (len(runs) if k not in (first.grad_crops or {}) else 9)
            for k in names]
    if len(runs) == 1 or sum(work) < _threads.MIN_PARALLEL_WORK / 8:
        for name in names:
            finish(name)
    else:
        buckets: list[list[str]] = [[] for _ in range(_threads.workers())]
        loads = [0] * len(buckets)
        for i in sorted(range(len(names)), key=lambda i: -work[i]):  # largest first
            b = loads.index(min(loads))
            buckets[b].append(names[i])
            loads[b] += work[i]
        buckets = [b for b in buckets if b]

        def part(lo: int, hi: int, p: int) -> None:
            for name in buckets[p]:
                finish(name)

        _threads.run_parts(part, [(i, i + 1) for i in range(len(buckets))])
    return {name: out[name] for name in names}  # the plan's order, whatever the threads


def _first_leaf(nodes: list[Node]) -> str | None:
    """Path of the leaf layer that receives the network input directly and alone: the
    first node, descending into sequential blocks (not into residual/parallel blocks, where
    the input also flows elsewhere)."""
    from cnncli.layers.blocks import _Sequence

    while nodes:
        node = nodes[0]
        if not node.layer.is_block:
            return node.path
        if not isinstance(node.layer, _Sequence):
            return None
        nodes = node.children.get("layers", [])
    return None


def _softmax_head(node: Node | None) -> str | None:
    """Path of the final node if it ends in softmax (skipped when computing logits)."""
    if node is None:
        return None
    if node.type == "softmax":
        return node.path
    act = node.layer.cfg.get("activation")
    if isinstance(act, tuple) and act[0] == "softmax":
        return node.path
    return None


def _next_activation(rest: list[Node]) -> str | None:
    """The activation that follows a layer (across batchnorm, pooling, dropout), if any."""
    from cnncli.layers.activation import ACTIVATIONS

    for node in rest:
        if node.type in ACTIVATIONS:
            return node.type
        if node.type not in _SKIP_FOR_INIT:
            return None
    return None


def build_model(source: str | Path | dict | Spec | Network, *, input_shape: tuple | None = None,
                dtype: Any = np.float32, seed: int | None = 0,
                rng: np.random.Generator | None = None,
                options: EngineOptions | None = None) -> Model:
    """Build a model from a spec path, YAML text, dict, :class:`Spec` or resolved network,
    planned under ``options`` (default: every fast path)."""
    if isinstance(source, Network):
        network = source
    else:
        spec = source if isinstance(source, Spec) else load_spec(source, input_shape=input_shape)
        network = resolve(spec, input_shape)
    return Model(network, dtype=dtype, seed=seed, rng=rng, options=options)
