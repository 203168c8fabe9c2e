"""What a layer type is: its YAML parameters, shape rule, counts, receptive field and maths.

Each layer type is one subclass of :class:`Layer`, defined once and registered by name.
The shape side (``resolve``) is pure integer arithmetic; the engine side (``init``,
``forward``, ``backward``) imports NumPy kernels lazily, so ``cnn shapes`` never pays
for them. Shapes are channels-last tuples, as the spec writes them: ``(H, W, C)`` for
feature maps and ``(units,)`` for vectors. The engine's arrays are NCHW.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from cnncli.errors import SpecError

Shape = tuple[int, ...]

_REQUIRED = object()


@dataclass(frozen=True)
class Param:
    """One YAML parameter of a layer type: its name, checker, default and meaning."""

    name: str
    check: Callable[[str, Any], Any]
    default: Any = _REQUIRED
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    @property
    def kind(self) -> str:
        return getattr(self.check, "kind", "value")


@dataclass(frozen=True)
class RF:
    """Receptive field of one output unit in input pixels, and the jump between neighbours."""

    size: tuple[int, int]
    jump: tuple[float, float]

    def then(self, kernel: tuple[int, int], stride: tuple[int, int]) -> RF:
        """r_out = r_in + (F' - 1)*j_in and j_out = j_in*S, per axis."""
        return RF(
            (
                int(self.size[0] + (kernel[0] - 1) * self.jump[0]),
                int(self.size[1] + (kernel[1] - 1) * self.jump[1]),
            ),
            (self.jump[0] * stride[0], self.jump[1] * stride[1]),
        )


@dataclass
class Node:
    """A layer placed in a network: its dotted path, shapes, counts and (for blocks) children.

    ``params`` and ``buffers`` map local names (``weight``, ``running_mean``) to array
    shapes in the engine's layout (conv weights OIHW, dense weights [out, in]).
    """

    path: str
    layer: Layer
    in_shape: Shape
    out_shape: Shape
    params: dict[str, Shape] = field(default_factory=dict)
    buffers: dict[str, Shape] = field(default_factory=dict)
    macs: int = 0
    rf: RF | None = None
    explain: list[str] = field(default_factory=list)
    children: dict[str, list[Node]] = field(default_factory=dict)

    @property
    def type(self) -> str:
        return self.layer.type

    def walk(self):
        """This node's subtree in report order: children first, then the node if it has a row."""
        for nodes in self.children.values():
            for child in nodes:
                yield from child.walk()
        if self.layer.has_row:
            yield self


class Context:
    """Collects warnings and notes while a spec is resolved; knows the source file for messages.

    Warnings (printed on stderr) are for what may surprise: input that is never read, an
    implicit flatten. Notes are for arithmetic worth knowing that loses nothing (floor dropping
    zero padding, as in ResNet's stride-2 layers); they go to the report and the layer's
    ``--explain`` lines, not to stderr, so that classic architectures print no noise.
    """

    def __init__(self, file: str | None = None) -> None:
        self.file = file
        self.warnings: list[str] = []
        self.notes: list[str] = []

    def _where(self, layer: Layer) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{layer.line}: " if layer.line else f"{self.file}: "
        return f"{where}layer '{layer.path}': "

    def warn(self, layer: Layer, message: str) -> None:
        self.warnings.append(self._where(layer) + message)

    def note(self, layer: Layer, message: str) -> None:
        self.notes.append(self._where(layer) + message)


@dataclass(frozen=True)
class Kept:
    """What a node's training forward keeps for its backward pass (``Layer.kept``): a
    reference to its input and/or its output (arrays its neighbours may keep too, so the
    memory estimate counts each array once), arrays of its own (bytes per image) and
    batch-independent ones (per-channel statistics, bytes). ``alias``: the output is the
    input itself or a view of it (flatten, a skipped softmax)."""

    input: bool = False
    output: bool = False
    per_image: int = 0
    fixed: int = 0
    alias: bool = False


class Layer:
    """Base class of every layer type. Subclasses set ``type``, ``params`` and the rules."""

    type: ClassVar[str] = ""
    doc: ClassVar[str] = ""
    params_spec: ClassVar[tuple[Param, ...]] = ()
    #: Whether the node gets its own row in a shape report (containers usually do not).
    has_row: ClassVar[bool] = True
    #: Whether it is a container of other layers (residual, parallel, repeat, sequential).
    is_block: ClassVar[bool] = False
    #: Whether ``backward`` takes the keywords ``param_grads`` (False: a frozen layer, skip
    #: the weight-gradient work and return no parameter gradients) and ``need_dx`` (False:
    #: nobody reads the input gradient; None may be returned). Layers with parameters do.
    grad_options: ClassVar[bool] = False

    def __init__(self, name: str, cfg: dict[str, Any], *, line: int | None, path: str) -> None:
        self.name = name
        self.path = path
        self.line = line
        self.cfg = cfg
        #: ``trainable: false`` in the spec (on this layer or a block around it): frozen.
        self.trainable = True
        for p in self.params_spec:
            # ``type`` names the layer type itself; a ``type`` parameter (pooling) is ``mode``.
            setattr(self, "mode" if p.name == "type" else p.name, cfg[p.name])

    # -- errors ------------------------------------------------------------------------------
    def error(self, message: str) -> SpecError:
        return SpecError(f"({self.type}) {message}", line=self.line, layer=self.path)

    # -- shape side (pure) -------------------------------------------------------------------
    def resolve(self, in_shape: Shape, ctx: Context) -> Node:
        """Output shape, parameter shapes, MACs, receptive field and worked formulas."""
        raise NotImplementedError

    def receptive(self, rf: RF | None) -> RF | None:
        """Receptive field after this layer (default: unchanged, as for pointwise layers)."""
        return rf

    # -- engine side (NCHW arrays) -----------------------------------------------------------
    def init(self, node: Node, rng: Any, dtype: Any) -> dict[str, Any]:
        """Initial values for ``node.params`` and ``node.buffers`` (default: none)."""
        return {}

    def forward(self, node: Node, x: Any, state: dict[str, Any], ctx: Any) -> tuple[Any, Any]:
        raise NotImplementedError

    def backward(self, node: Node, dy: Any, cache: Any, state: dict[str, Any], grads: dict) -> Any:
        raise NotImplementedError

    def kept(self, node: Node, itemsize: int, *, logits: bool = False) -> Kept:
        """What ``forward`` keeps for ``backward`` in training (``itemsize``: bytes per
        value; ``logits``: this node's softmax is skipped for the fused loss). It mirrors
        the caches the forward builds; tests/engine/test_memory.py compares it with the
        arrays the engine really holds. Default: nothing."""
        return Kept()

    def describe(self) -> str:
        """Settings at a glance for report rows, e.g. '5x5/1, pad valid, tanh'."""
        parts = self.describe_parts()
        act = self.cfg.get("activation")
        if isinstance(act, tuple):
            parts.append(act[0])
        return ", ".join(parts)

    def describe_parts(self) -> list[str]:
        return []

    def config(self) -> dict[str, Any]:
        """The resolved parameters, for reports and checkpoints."""
        return {p.name: self.cfg[p.name] for p in self.params_spec}


def warn_dropped(ctx: Context, layer: Layer, pending: list[tuple], lines: list[str]) -> None:
    """Report where (W + 2P - F) is not divisible by S: floor() leaves rows/columns unread.

    ``pending`` holds (axis, size, padding, kernel extent, stride, dropped) per axis. The
    unread positions sit at the end of the padded input, so the first P of them are zero
    padding. When input rows/columns are lost it is a warning; when only padding is, a note
    (also appended to the layer's explain ``lines``). Equal arithmetic on both axes gives one
    message for "rows and columns".
    """
    if not pending:
        return

    def report(word: str, size: int, p: int, f: int, s: int, dropped: int) -> None:
        real = max(0, dropped - p)

        def n(k: int) -> str:
            plural = word.replace("row", "rows").replace("column", "columns")
            return f"{k} {word if k == 1 else plural}"

        head = f"({size} + 2*{p} - {f}) = {size + 2 * p - f} is not divisible by stride {s}: floor "
        if real == 0 or (f < s and dropped <= s - f):
            if real == 0:
                message = head + f"drops {n(dropped)} of zero padding (no input is lost)"
            else:  # e.g. ResNet's 1x1 stride-2 shortcut: every other row is skipped anyway
                message = head + (
                    f"drops the last {n(real)} of the input, one of the gaps that kernel {f} < "
                    f"stride {s} leaves by design (it reads {f} of every {s})"
                )
            ctx.note(layer, message)
            lines.append(f"note: {message}")
        elif real == dropped:
            ctx.warn(layer, head + f"drops the last {n(real)} of the input (never read)")
        else:
            ctx.warn(
                layer,
                head + f"drops the last {n(real)} of the input and {n(dropped - real)} of padding",
            )

    if len(pending) == 2 and pending[0][1:] == pending[1][1:]:
        report("row and column", *pending[0][1:])
        return
    for axis, *rest in pending:
        report("row" if axis == "H" else "column", *rest)


def size_lines(lines: list[str]) -> list[str]:
    """One 'H2 = W2 = ...' line when the H and W formulas agree, else both."""
    if len(lines) == 2 and lines[0][3:] == lines[1][3:]:
        return ["H2 = W2" + lines[0][2:]]
    return lines


def fmt_pair(p: tuple[int, int]) -> str:
    """'3' for (3, 3), '3x5' otherwise."""
    return str(p[0]) if p[0] == p[1] else f"{p[0]}x{p[1]}"


# -- parameter checkers: each returns the normalised value or raises ValueError --------------


def _kind(name: str):
    def deco(fn):
        fn.kind = name
        return fn

    return deco


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@_kind("int > 0")
def pos_int(name: str, v: Any) -> int:
    if not _is_int(v) or v <= 0:
        raise ValueError(f"'{name}' must be a positive integer, got {v!r}")
    return v


@_kind("int >= 0")
def nonneg_int(name: str, v: Any) -> int:
    if not _is_int(v) or v < 0:
        raise ValueError(f"'{name}' must be a non-negative integer, got {v!r}")
    return v


def _pair(name: str, v: Any, check) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        if len(v) != 2:
            raise ValueError(f"'{name}' must be an integer or [height, width], got {list(v)!r}")
        return (check(name, v[0]), check(name, v[1]))
    x = check(name, v)
    return (x, x)


@_kind("int > 0 or [h, w]")
def pos_pair(name: str, v: Any) -> tuple[int, int]:
    return _pair(name, v, pos_int)


@_kind("int >= 0 or [h, w]")
def nonneg_pair(name: str, v: Any) -> tuple[int, int]:
    return _pair(name, v, nonneg_int)


@_kind("valid | same | full | int | [h, w]")
def conv_padding(name: str, v: Any) -> str | tuple[int, int]:
    if isinstance(v, str):
        if v.lower() in ("valid", "same", "half", "full"):
            return "same" if v.lower() == "half" else v.lower()
        raise ValueError(
            f"'{name}' must be valid, same (half), full, an integer or [h, w]; got {v!r}"
        )
    return nonneg_pair(name, v)


@_kind("number")
def number(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"'{name}' must be a number, got {v!r}")
    if not math.isfinite(v):  # YAML's .nan and .inf: no layer means anything by them
        raise ValueError(f"'{name}' must be a finite number, got {v!r}")
    return float(v)


@_kind("number > 0")
def pos_number(name: str, v: Any) -> float:
    x = number(name, v)
    if not x > 0:
        raise ValueError(f"'{name}' must be positive, got {v!r}")
    return x


@_kind("0 <= number < 1")
def fraction(name: str, v: Any) -> float:
    x = number(name, v)
    if not 0 <= x < 1:
        raise ValueError(f"'{name}' must be in [0, 1), got {v!r}")
    return x


@_kind("true | false")
def boolean(name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"'{name}' must be true or false, got {v!r}")
    return v


def choice(*options: str):
    @_kind(" | ".join(options))
    def check(name: str, v: Any) -> str:
        if not isinstance(v, str) or v.lower() not in options:
            hint = suggest(str(v), options)
            raise ValueError(f"'{name}' must be one of {', '.join(options)}; got {v!r}{hint}")
        return v.lower()

    return check


def suggest(word: str, options, n: int = 1, cutoff: float = 0.6) -> str:
    """' (did you mean X?)' for the closest option (up to ``n`` of them), or ''."""
    close = difflib.get_close_matches(word, list(options), n=n, cutoff=cutoff)
    if not close:
        return ""
    if len(close) == 1:
        return f" (did you mean '{close[0]}'?)"
    quoted = [f"'{c}'" for c in close]
    return f" (did you mean {', '.join(quoted[:-1])} or {quoted[-1]}?)"
