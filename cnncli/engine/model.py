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

from cnncli.errors import ShapeMismatchError
from cnncli.layers.base import Node
from cnncli.ops import _threads
from cnncli.spec import Network, Spec, load_spec, resolve

_SKIP_FOR_INIT = frozenset({"batchnorm", "dropout", "pool", "flatten", "lrn", "global_pool"})


@dataclass
class _Run:
    """Per-call context handed to layers: mode, random source, and how to run children."""

    model: Model
    training: bool
    rng: np.random.Generator | None
    logits_of: str | None = None  # path of the layer whose softmax is skipped (fused loss)
    #: Path of the leaf node whose input gradient nobody needs (set by
    #: ``Model.backward(..., input_grad=False)``): it may skip computing it.
    skip_input_grad: str | None = None
    #: Where parameter gradients go (the model's dict; a part's own dict when the batch
    #: is split over threads, summed afterwards).
    grads: dict[str, np.ndarray] | None = None

    def run(self, nodes: list[Node], x: np.ndarray) -> tuple[np.ndarray, list]:
        caches = []
        trace, timer = self.model.trace, self.model.timer
        taps, tapped = self.model.taps, self.model.tapped
        # a tapped pass runs unfused: every conv output exists, and a fused conv+pool pass
        # in evaluation mode keeps no argmax for a backward
        pairs = self.model.fused_pools() if not taps else {}
        inside = None  # the pool node that the previous conv ran in its own pass
        for node in nodes:
            if node is inside:
                caches.append(_FUSED)
                if trace is not None:
                    trace[node.path] = tuple(x.shape)
                continue
            t0 = perf_counter() if timer is not None else 0.0
            inside = pairs.get(node.path)
            state = self.model.state[node.path]
            if inside is None:
                x, cache = node.layer.forward(node, x, state, self)
            else:
                x, cache = node.layer.forward_pooled(node, x, state, self)
            caches.append(cache)
            if timer is not None:
                timer.setdefault(node.path, [0.0, 0.0])[0] += perf_counter() - t0
            if trace is not None and inside is None:
                trace[node.path] = tuple(x.shape)
            elif trace is not None:  # x is the pool's output; the conv's is the report's
                h, w, c = node.out_shape
                trace[node.path] = (x.shape[0], c, h, w)
            if node.path in taps:
                tapped[node.path] = x.copy()
        return x, caches

    def unrun(self, nodes: list[Node], dy: np.ndarray, caches: list) -> np.ndarray:
        grads, timer = self.grads if self.grads is not None else self.model.grads, \
            self.model.timer
        taps = self.model.taps
        for node, cache in zip(reversed(nodes), reversed(caches)):
            if node.path in taps:  # the gradient arriving at the node's output
                self.model.tapped_grads[node.path] = dy.copy()
            if cache is _FUSED:  # the conv before it takes the pooled gradient
                continue
            state = self.model.state[node.path]
            t0 = perf_counter() if timer is not None else 0.0
            if node.layer.is_block:
                dy = node.layer.backward(node, dy, cache, state, self)
            else:
                local: dict[str, np.ndarray] = {}
                dy = node.layer.backward(node, dy, cache, state, local)
                for k, g in local.items():
                    grads[f"{node.path}.{k}"] = g
            if timer is not None:
                timer.setdefault(node.path, [0.0, 0.0])[1] += perf_counter() - t0
        return dy


class Model:
    """Arrays for every parameter and buffer of a network, and forward/backward over them.

    ``params`` and ``buffers`` map dotted names (``C1.weight``, ``layer1.0.bn1.running_mean``)
    to arrays; ``grads`` gets the same keys as ``params`` after :meth:`backward`.
    """

    def __init__(self, network: Network, *, dtype: Any = np.float32, seed: int | None = 0,
                 rng: np.random.Generator | None = None) -> None:
        self.network = network
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, not {self.dtype}")
        rng = rng if rng is not None else np.random.default_rng(seed)
        self.state: dict[str, dict[str, np.ndarray]] = {}
        self.params: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self._init(network.nodes, rng, None)
        self._cache: list | None = None
        #: Set to a dict to record every node's output shape (N, ...) on the next forward.
        self.trace: dict[str, tuple[int, ...]] | None = None
        #: Set to a dict to accumulate [forward, backward] seconds per node (``cnn time``).
        self.timer: dict[str, list[float]] | None = None
        #: Node paths to tap (``cnn viz``): the next forward keeps their outputs in
        #: ``tapped`` and the next backward the gradients arriving there in ``tapped_grads``
        #: (copies, NCHW). A tapped pass runs unfused and unsplit.
        self.taps: frozenset[str] = frozenset()
        self.tapped: dict[str, np.ndarray] = {}
        self.tapped_grads: dict[str, np.ndarray] = {}
        self._run: _Run | None = None
        self._splittable_train: bool | None = None
        self._fusion: tuple[tuple, dict[str, Node]] | None = None
        self._splittable_eval: bool | None = None
        self.training_rng = np.random.default_rng(rng.integers(2**63))
        last = network.nodes[-1] if network.nodes else None
        self.softmax_head = _softmax_head(last)

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
            arrays = node.layer.init(node, rng, self.dtype, nonlin) if (
                node.params or node.buffers) else {}
            self.state[node.path] = arrays
            for k in node.params:
                self.params[f"{node.path}.{k}"] = arrays[k]
            for k in node.buffers:
                self.buffers[f"{node.path}.{k}"] = arrays[k]

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
        return x

    def forward(self, x: np.ndarray, training: bool = False, *, logits: bool = False,
                rng: np.random.Generator | None = None) -> np.ndarray:
        """Run the network. ``logits=True`` skips a final softmax (for the fused loss).

        With several worker threads, a network whose layers treat every image on its own
        (see :func:`_splittable`) runs the whole pass on contiguous parts of the batch in
        parallel (``_threads.over_batch``; the layers' own splits then run serially inside
        each part). The split depends only on the batch size and the thread count."""
        x = self.check_input(x)
        rng = rng if rng is not None else self.training_rng
        head = self.softmax_head if logits else None
        nodes = self.network.nodes
        self.tapped = {}
        parts = self._parts(x.shape[0], training)
        with _threads.engine_region():
            if parts is None:
                run = _Run(self, training, rng, head)
                y, caches = run.run(nodes, x)
                self._cache, self._run = caches, run
                return y
            runs = [_Run(self, training, rng, head, grads={}) for _ in range(parts)]

            def part(lo: int, hi: int, p: int):
                yp, caches = runs[p].run(nodes, x[lo:hi])
                return lo, hi, yp, caches

            results = _threads.over_batch(part, x.shape[0], _PART_MIN)
            y0 = results[0][2]
            y = np.empty((x.shape[0], *y0.shape[1:]), dtype=y0.dtype)
            for lo, hi, yp, _ in results:
                y[lo:hi] = yp
        self._cache = [(lo, hi, runs[p], caches) for p, (lo, hi, _, caches) in enumerate(results)]
        self._run = _SPLIT
        return y

    def fused_pools(self) -> dict[str, Node]:
        """conv path -> the max-pool node after it, for the pairs that run as one op
        (``Conv.fuses_pool``: conv + ReLU + 2x2 max pooling on the Winograd path).
        Recomputed when the ops' switches change (tests turn the fast paths off)."""
        from cnncli.ops import conv

        key = (conv.FUSE_RELU_MAXPOOL, conv.WINOGRAD, conv.WINOGRAD_DX, conv.WINOGRAD_DW,
               conv.WINOGRAD_MIN_CHANNELS, conv.BATCHED_MAX_COLS)
        if self._fusion is None or self._fusion[0] != key:
            pairs: dict[str, Node] = {}
            if conv.FUSE_RELU_MAXPOOL:
                _find_pool_pairs(self.network.nodes, self.dtype, pairs)
            self._fusion = (key, pairs)
        return self._fusion[1]

    def _parts(self, n: int, training: bool) -> int | None:
        """How many parts to split a batch of ``n`` into at the model level (None: run the
        network in one piece)."""
        w = _threads.workers()
        if (w < 2 or self.timer is not None or self.trace is not None or self.taps
                or n < 2 * _PART_MIN):
            return None
        ok = self._splittable_train if training else self._splittable_eval
        if ok is None:
            ok = _splittable(self.network.nodes, training)
            if training:
                self._splittable_train = ok
            else:
                self._splittable_eval = ok
        if not ok:
            return None
        return len(_threads.split(n, min(w, n // _PART_MIN)))

    def backward(self, dy: np.ndarray, *, input_grad: bool = True) -> np.ndarray | None:
        """Gradients of sum(y * dy) (y the last forward's output) into :attr:`grads`.

        Returns the gradient with respect to the input; with ``input_grad=False`` (training
        needs only the parameter gradients) the first layer may skip it and None may be
        returned."""
        if self._cache is None or self._run is None:
            raise RuntimeError("backward() needs a forward() first")
        self.grads.clear()
        self.tapped_grads = {}
        skip = None if input_grad else _first_leaf(self.network.nodes)
        nodes = self.network.nodes
        if self._run is not _SPLIT:
            self._run.skip_input_grad = skip
            with _threads.engine_region():
                dx = self._run.unrun(nodes, dy, self._cache)
            return dx if input_grad else None
        pieces = self._cache
        for _, _, run, _ in pieces:
            run.skip_input_grad = skip
            run.grads = {}

        def part(lo: int, hi: int, p: int):
            plo, phi, run, caches = pieces[p]
            return run.unrun(nodes, dy[plo:phi], caches)

        with _threads.engine_region():
            dxs = _threads.over_batch(part, dy.shape[0], _PART_MIN)
        # gradients summed over the parts in part order (deterministic)
        first = pieces[0][2].grads
        for name, g in first.items():
            total = np.array(g, copy=True)
            for _, _, run, _ in pieces[1:]:
                total += run.grads[name]
            self.grads[name] = total
        if not input_grad:
            return None
        dx = np.empty((dy.shape[0], *dxs[0].shape[1:]), dtype=dxs[0].dtype)
        for (lo, hi, _, _), d in zip(pieces, dxs):
            dx[lo:hi] = d
        return dx

    def release(self) -> None:
        """Drop the forward caches (frees activation memory after evaluation)."""
        self._cache = self._run = None

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
#: Marks a forward pass that ran split (``Model._cache`` then holds the parts).
_SPLIT = object()
#: Layers that mix images of a batch (or draw random numbers in order) in training mode.
_BATCH_COUPLED_TRAIN = frozenset({"batchnorm", "dropout"})


#: Cache entry of a pool node that ran inside the conv before it (Conv.forward_pooled).
_FUSED = object()


def _find_pool_pairs(nodes: list[Node], dtype: Any, pairs: dict[str, Node]) -> None:
    """Add every conv -> next-node pair that ``Conv.fuses_pool`` accepts, in every block."""
    for node, after in zip(nodes, nodes[1:]):
        fuses = getattr(node.layer, "fuses_pool", None)
        if fuses is not None and fuses(node, after, dtype):
            pairs[node.path] = after
    for node in nodes:
        for children in (node.children or {}).values():
            _find_pool_pairs(children, dtype, pairs)


def _splittable(nodes: list[Node], training: bool) -> bool:
    """True when every layer treats each image on its own, so that running parts of the
    batch separately gives the same result (up to the order of the gradient sums)."""
    for node in nodes:
        if training and node.type in _BATCH_COUPLED_TRAIN:
            return False
        for children in (node.children or {}).values():
            if not _splittable(children, training):
                return False
    return True


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
                rng: np.random.Generator | None = None) -> Model:
    """Build a model from a spec path, YAML text, dict, :class:`Spec` or resolved network."""
    if isinstance(source, Network):
        network = source
    else:
        spec = source if isinstance(source, Spec) else load_spec(source, input_shape=input_shape)
        network = resolve(spec, input_shape)
    return Model(network, dtype=dtype, seed=seed, rng=rng)
