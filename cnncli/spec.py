"""Architecture specs: load YAML (path, text or dict), validate, and resolve to a network.

A spec is ``name``, ``input: [H, W, C]`` and ``layers``: each entry a bare type name or a
one-key mapping ``type: {params}``. Loading checks every parameter against the layer
registry; :func:`resolve` then runs the shape rules through the whole network. Errors are
:class:`~cnncli.errors.SpecError` naming the file, YAML line and layer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnncli.errors import SpecError
from cnncli.layers.base import Context, Layer, Node, Shape, suggest
from cnncli.yamlsrc import load_yaml

TOP_KEYS = ("name", "input", "layers", "training", "description")


@dataclass
class Spec:
    """A validated architecture: the layer objects, before shapes are worked out."""

    name: str
    input: Shape
    layers: list[Layer]
    file: str | None = None
    text: str | None = None
    training: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass
class Network:
    """A spec resolved for one input size: every node with its shapes and counts."""

    spec: Spec
    input: Shape
    nodes: list[Node]
    warnings: list[str]
    notes: list[str] = field(default_factory=list)  # see layers.base.Context

    @property
    def output(self) -> Shape:
        return self.nodes[-1].out_shape if self.nodes else self.input

    def rows(self) -> list[Node]:
        """Every node that gets a report row, in execution order (blocks after children)."""
        return [n for top in self.nodes for n in top.walk()]


def parse_hwc(text: str) -> Shape:
    """Parse ``32x32x3`` (or ``32,32,3``) to (H, W, C)."""
    parts = re.split(r"[x,X* ]+", text.strip())
    try:
        dims = tuple(int(p) for p in parts if p)
    except ValueError:
        dims = ()
    if len(dims) != 3 or any(d <= 0 for d in dims):
        raise SpecError(
            f"input size must be HxWxC with positive integers, e.g. 32x32x3; got {text!r}"
        )
    return dims


def load_spec(source: str | Path | dict, *, input_shape: Shape | None = None) -> Spec:
    """Load a spec from a path, YAML text or a dict (``-`` is not handled here: read stdin)."""
    if isinstance(source, dict):
        return spec_from_dict(source, input_shape=input_shape)
    if isinstance(source, Path) or ("\n" not in source and not _looks_like_yaml(source)):
        path = Path(source)
        return parse_spec(read_spec_text(path), file=str(path), input_shape=input_shape)
    return parse_spec(source, input_shape=input_shape)


#: Most bytes a spec file (or stdin) may hold; real specs are a few kilobytes.
MAX_SPEC_BYTES = 8 << 20


def read_spec_text(path: str | Path) -> str:
    """The text of a spec file: a regular UTF-8 file of at most :data:`MAX_SPEC_BYTES`
    (a FIFO or ``/dev/zero`` is refused at once instead of blocking or filling memory)."""
    from cnncli.fileio import FileReadError, read_text

    try:
        return read_text(path, limit=MAX_SPEC_BYTES, what="spec")
    except FileReadError as exc:
        reason = {"spec not found": "no such file",
                  "is a folder, not a file": "is a directory, not a spec file"}.get(
                      exc.reason, exc.reason)
        raise SpecError(reason, file=str(path)) from None


def read_spec_stream(stream: Any, source: str = "<stdin>") -> str:
    """The text of a spec read from a stream (``cnn shapes -``), bounded like a file."""
    from cnncli.fileio import FileReadError, read_stream

    try:
        return read_stream(stream, source, limit=MAX_SPEC_BYTES, what="spec")
    except FileReadError as exc:
        raise SpecError(exc.reason, file=source) from None


def _looks_like_yaml(s: str) -> bool:
    return ":" in s and not Path(s).exists() and not s.endswith((".yaml", ".yml"))


def parse_spec(text: str, *, file: str | None = None, input_shape: Shape | None = None) -> Spec:
    """Parse YAML text into a :class:`Spec`."""
    try:
        data = load_yaml(text, file)
        if data is None:
            raise SpecError("empty spec: expected 'name', 'input' and 'layers'")
        spec = spec_from_dict(data, input_shape=input_shape)
    except SpecError as exc:
        raise exc.located(file=file) from None
    spec.file, spec.text = file, text
    return spec


def spec_from_dict(data: Any, *, input_shape: Shape | None = None) -> Spec:
    if not isinstance(data, dict):
        raise SpecError(
            "a spec must be a mapping with 'name', 'input' and 'layers'",
            line=getattr(data, "line", None),
        )
    lines = getattr(data, "key_lines", {})
    for key in data:
        if key not in TOP_KEYS:
            raise SpecError(
                f"unknown top-level key '{key}'{suggest(str(key), TOP_KEYS)}",
                line=lines.get(str(key)),
            )
    name = str(data.get("name") or "network")
    if input_shape is None:
        if "input" not in data:
            raise SpecError("missing 'input: [height, width, channels]' (or pass --input HxWxC)")
        input_shape = _input(data["input"], lines.get("input"))
    layers_raw = data.get("layers")
    if not isinstance(layers_raw, list) or not layers_raw:
        raise SpecError("'layers' must be a non-empty list", line=lines.get("layers"))
    builder = _Builder()
    layers = builder.build(layers_raw, "", lines.get("layers"))
    training = data.get("training") or {}
    if not isinstance(training, dict):
        raise SpecError("'training' must be a mapping", line=lines.get("training"))
    return Spec(name, input_shape, layers, training=dict(training), raw=data)


def _input(v: Any, line: int | None) -> Shape:
    if isinstance(v, str):
        try:
            return parse_hwc(v)
        except SpecError as exc:
            raise SpecError(exc.message, line=line) from None
    ok = (
        isinstance(v, list)
        and len(v) in (2, 3)
        and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in v)
    )
    if not ok:
        raise SpecError(
            f"'input' must be [height, width, channels] with positive integers; got {v!r}",
            line=line,
        )
    return tuple(v) if len(v) == 3 else (v[0], v[1], 1)


#: Most layers a spec may expand to (repeats included); real networks have a few hundred.
MAX_LAYERS = 100_000


class _Builder:
    """Turns layer entries into :class:`Layer` objects, naming and checking them."""

    def __init__(self) -> None:
        from cnncli.layers.registry import layer_types

        self.types = layer_types()
        self.paths: dict[str, int | None] = {}
        self.count = 0

    def build(
        self, entries: list, scope: str, line: int | None, single_name: str | None = None
    ) -> list[Layer]:
        if not isinstance(entries, list):
            raise SpecError("expected a list of layers", line=line)
        item_lines = getattr(entries, "item_lines", None) or [line] * len(entries)
        counters: dict[str, int] = {}
        out = []
        for entry, entry_line in zip(entries, item_lines):
            self.count += 1
            if self.count > MAX_LAYERS:
                raise SpecError(f"spec expands to more than {MAX_LAYERS:,} layers "
                                "(nested repeats?)", line=entry_line)
            kind, params, entry_line = self._split(entry, entry_line)
            cls = self.types[kind]
            name = params.pop("name", None)
            if single_name is not None:  # a repeat copy of a single layer: named by its index
                name = single_name
            elif name is None:
                counters[kind] = counters.get(kind, 0) + 1
                name = f"{kind}{counters[kind]}"
            elif not isinstance(name, (str, int)) or isinstance(name, bool) or str(name) == "":
                raise SpecError(
                    f"layer name must be a non-empty string, got {name!r}", line=entry_line
                )
            path = f"{scope}.{name}" if scope else str(name)
            if path in self.paths:
                raise SpecError(
                    f"duplicate layer name '{path}' (first used on line {self.paths[path]})",
                    line=entry_line,
                    layer=path,
                )
            self.paths[path] = entry_line
            trainable = _trainable(params, entry_line, path, cls.type)
            cfg = self._check(cls, params, entry_line, path)
            layer = cls(str(name), cfg, line=entry_line, path=path)
            layer.trainable = trainable
            if layer.is_block:
                layer.build(self.build)
            out.append(layer)
        return out

    def _split(self, entry: Any, line: int | None) -> tuple[str, dict, int | None]:
        if isinstance(entry, str):
            kind, params = entry, {}
        elif isinstance(entry, dict) and len(entry) == 1:
            ((kind, params),) = entry.items()
            line = getattr(entry, "line", line)
            if params is None:
                params = {}
            if not isinstance(params, dict):
                raise SpecError(
                    f"parameters of '{kind}' must be a mapping, got {params!r}", line=line
                )
        else:
            raise SpecError(
                "each layer must be a type name or a one-key mapping 'type: {params}'"
                + (f"; got keys {', '.join(map(str, entry))}" if isinstance(entry, dict) else ""),
                line=getattr(entry, "line", line),
            )
        if not isinstance(kind, str) or kind not in self.types:
            name = params.get("name") if isinstance(params, dict) else None
            raise SpecError(
                f"unknown layer type '{kind}'{suggest(str(kind), self.types)}",
                line=line,
                layer=None if name is None else str(name),
            )
        key_lines = getattr(params, "key_lines", {})
        params = dict(params)
        params["__lines__"] = key_lines
        return kind, params, line

    def _check(self, cls: type[Layer], params: dict, line: int | None, path: str) -> dict:
        key_lines = params.pop("__lines__", {})
        known = {p.name: p for p in cls.params_spec}
        for key in params:
            if key not in known:
                options = ", ".join(known) or "none"
                raise SpecError(
                    f"({cls.type}) unknown parameter '{key}'{suggest(str(key), known)}; "
                    f"parameters: {options}",
                    line=key_lines.get(str(key), line),
                    layer=path,
                )
        cfg = {}
        for p in cls.params_spec:
            if p.name not in params:
                if p.required:
                    raise SpecError(
                        f"({cls.type}) missing required parameter '{p.name}'", line=line, layer=path
                    )
                cfg[p.name] = None if p.default is None else p.check(p.name, p.default)
                continue
            try:
                cfg[p.name] = p.check(p.name, params[p.name])
            except ValueError as exc:
                raise SpecError(
                    f"({cls.type}) {exc}", line=key_lines.get(p.name, line), layer=path
                ) from None
        return cfg


def _trainable(params: dict, line: int | None, path: str, kind: str) -> bool:
    """Pop the ``trainable`` key every layer and block accepts (default true): false
    freezes the layer's parameters, or every layer inside the block."""
    if "trainable" not in params:
        return True
    value = params.pop("trainable")
    if not isinstance(value, bool):
        where = params.get("__lines__", {}).get("trainable", line)
        raise SpecError(f"({kind}) 'trainable' must be true or false, got {value!r}",
                        line=where, layer=path)
    return value


def resolve(spec: Spec, input_shape: Shape | None = None) -> Network:
    """Work out every layer's output shape, parameters, cost and receptive field."""
    from cnncli.layers.base import RF
    from cnncli.layers.blocks import resolve_sequence

    shape = input_shape or spec.input
    ctx = Context(spec.file)
    try:
        nodes, _, _ = resolve_sequence(spec.layers, shape, RF((1, 1), (1.0, 1.0)), ctx)
    except SpecError as exc:
        raise exc.located(file=spec.file) from None
    return Network(spec, shape, nodes, ctx.warnings, ctx.notes)
