"""An ONNX graph made ready for translation: constants folded, data flow indexed, dominators.

PyTorch exports compute a Reshape's target from the input's shape (Shape -> Gather ->
Unsqueeze -> Concat). Those nodes are folded here into values: numbers where they are
known, the batch dimension as its symbol (``"N"``). What is left is the data graph, whose
nodes become layers; :meth:`Graph.common_dominator` finds where a block's branches fork.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from cnncli.errors import SpecError

Dim = int | str | None


class CannotFold(Exception):
    """A node whose value is not known before the network runs."""


def _attrs(node: Any, onnx: Any) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _sym_arith(op: str) -> Callable[[Any, Any], Any]:
    """Element-wise arithmetic on shape values where some entries are symbols."""
    fn = {"Add": lambda a, b: a + b, "Sub": lambda a, b: a - b, "Mul": lambda a, b: a * b,
          "Div": lambda a, b: a // b}[op]
    sign = {"Add": "+", "Sub": "-", "Mul": "*", "Div": "/"}[op]

    def apply(a: Any, b: Any) -> Any:
        if isinstance(a, str) or isinstance(b, str):
            return f"({a}{sign}{b})"
        return fn(int(a), int(b))

    return np.frompyfunc(apply, 2, 1)


class Graph:
    """The data graph of one ONNX model (after shape inference), with folded constants."""

    def __init__(self, model: Any, onnx: Any, file: str) -> None:
        self.onnx = onnx
        self.file = file
        self.model = model
        g = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                          1)
        self.values: dict[str, Any] = {}  # folded: np.ndarray (object dtype when symbolic)
        for init in g.initializer:
            self.values[init.name] = onnx.numpy_helper.to_array(init)
        self.shapes: dict[str, tuple[Dim, ...] | None] = {}
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            self.shapes[vi.name] = _dims(vi)
        inputs = [i for i in g.input if i.name not in self.values]
        if len(inputs) != 1:
            names = ", ".join(i.name for i in inputs) or "none"
            raise self.error(f"expected one input tensor, found {len(inputs)} ({names})")
        self.input = inputs[0].name
        if len(g.output) != 1:
            names = ", ".join(o.name for o in g.output)
            raise self.error(f"has {len(g.output)} outputs ({names}); cnn shapes follows one")
        self.output = g.output[0].name
        self.attrs: dict[int, dict[str, Any]] = {}
        self.nodes: list[Any] = []  # data nodes, in topological order
        self.producer: dict[str, Any] = {}
        self.consumers: dict[str, list[Any]] = {}
        for node in _topological(g, self.values, self.input):
            self.attrs[id(node)] = _attrs(node, onnx)
            if node.domain not in ("", "ai.onnx"):
                raise self.node_error(node, f"operator domain '{node.domain}' is not ONNX's own")
            try:
                outs = self._fold(node)
            except CannotFold:
                outs = None
            if outs is not None:
                for name, value in zip(node.output, outs):
                    self.values[name] = value
                continue
            self.nodes.append(node)
            for name in node.output:
                if name:
                    self.producer[name] = node
            for name in self.data_inputs(node):
                self.consumers.setdefault(name, []).append(node)
        if self.output in self.values:
            raise self.error(f"the output '{self.output}' is a constant")
        self._dominators()

    # -- messages ------------------------------------------------------------------------------
    def error(self, message: str) -> SpecError:
        return SpecError(message, file=self.file)

    def node_error(self, node: Any, message: str) -> SpecError:
        name = node.name or (node.output[0] if node.output else "?")
        return SpecError(f"node '{name}' ({node.op_type}): {message}", file=self.file)

    # -- queries -------------------------------------------------------------------------------
    def attr(self, node: Any, name: str, default: Any = None) -> Any:
        """An attribute's value; floats as the shortest decimal of their float32 (1e-05,
        not 9.999999747378752e-06), strings decoded."""
        value = self.attrs[id(node)].get(name, default)
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        if isinstance(value, float):
            return float(str(np.float32(value)))
        return value

    def data_inputs(self, node: Any) -> list[str]:
        return [i for i in node.input if i and i not in self.values]

    def const(self, node: Any, index: int) -> np.ndarray | None:
        """The folded value of input ``index`` (None if absent or not constant)."""
        if index >= len(node.input) or not node.input[index]:
            return None
        return self.values.get(node.input[index])

    def shape(self, tensor: str) -> tuple[Dim, ...] | None:
        return self.shapes.get(tensor)

    def rank(self, tensor: str) -> int | None:
        s = self.shape(tensor)
        return None if s is None else len(s)

    # -- folding -------------------------------------------------------------------------------
    def _fold(self, node: Any) -> list[Any] | None:
        op = node.op_type
        a = self.attrs[id(node)]
        if op == "Constant":
            return [_constant(a, self.onnx)]
        if op == "Shape":
            dims = self.shape(node.input[0])
            if dims is None or any(d is None for d in dims):
                raise CannotFold
            start, end = a.get("start", 0), a.get("end", None)
            vals = list(dims)[start:end]
            if all(isinstance(d, int) for d in vals):
                return [np.array(vals, dtype=np.int64)]
            return [np.array(vals, dtype=object)]
        ins = [i for i in node.input]
        if any(i and i not in self.values for i in ins):
            raise CannotFold
        vals = [self.values[i] if i else None for i in ins]
        if any(v is not None and v.dtype == object for v in vals):
            return [np.asarray(self._fold_symbolic(node, op, a, vals), dtype=object)]
        return self._reference(node, vals)

    def _fold_symbolic(self, node: Any, op: str, a: dict, vals: list) -> np.ndarray:
        """The few shape ops PyTorch's exporter applies to Shape's output."""
        x = vals[0]
        if op in ("Identity", "Cast"):
            return x
        if op == "Gather":
            return np.take(x, vals[1].astype(np.int64), axis=a.get("axis", 0))
        if op == "Unsqueeze":
            axes = a.get("axes") if len(vals) < 2 or vals[1] is None else vals[1].tolist()
            out = x
            for ax in sorted(int(v) % (x.ndim + len(axes)) for v in axes):
                out = np.expand_dims(out, ax)
            return out
        if op == "Squeeze":
            axes = a.get("axes") if len(vals) < 2 or vals[1] is None else vals[1].tolist()
            return np.squeeze(x, axis=tuple(axes) if axes is not None else None)
        if op == "Concat":
            return np.concatenate([v.astype(object) for v in vals], axis=a.get("axis", 0))
        if op == "Slice":
            starts, ends = vals[1].tolist(), vals[2].tolist()
            axes = vals[3].tolist() if len(vals) > 3 and vals[3] is not None else [0]
            steps = vals[4].tolist() if len(vals) > 4 and vals[4] is not None else [1]
            if axes != [0]:
                raise CannotFold
            return x[slice(starts[0], ends[0], steps[0])]
        if op in ("Add", "Sub", "Mul", "Div"):
            return _sym_arith(op)(x.astype(object), vals[1].astype(object))
        raise CannotFold

    def _reference(self, node: Any, vals: list) -> list[Any]:
        """Evaluate a node on constant inputs with onnx's reference implementation."""
        from onnx.reference import ReferenceEvaluator

        helper = self.onnx.helper
        names = [f"in{k}" if v is not None else "" for k, v in enumerate(vals)]
        outs = [o for o in node.output]
        single = helper.make_node(node.op_type, names, outs, **self.attrs[id(node)])
        graph = helper.make_graph(
            [single], "fold",
            [helper.make_tensor_value_info(n, _elem_type(v, self.onnx), list(v.shape))
             for n, v in zip(names, vals) if n],
            [helper.make_tensor_value_info(o, 0, None) for o in outs if o])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        try:
            result = ReferenceEvaluator(model).run(None, {n: v for n, v in zip(names, vals) if n})
        except Exception:  # noqa: BLE001 - anything it cannot evaluate stays a data node
            raise CannotFold from None
        return [np.asarray(r) for r in result]

    # -- dominators ----------------------------------------------------------------------------
    def _dominators(self) -> None:
        """dom[t]: the tensors every path from the input to ``t`` passes (``t`` included)."""
        self.order: dict[str, int] = {self.input: -1}
        self.dom: dict[str, frozenset[str]] = {self.input: frozenset([self.input])}
        for k, node in enumerate(self.nodes):
            ins = [self.dom.get(i) for i in self.data_inputs(node)]
            if not ins or any(d is None for d in ins):
                continue  # not reached from the input
            common = frozenset.intersection(*ins)  # type: ignore[arg-type]
            for out in node.output:
                if out:
                    self.order[out] = k
                    self.dom[out] = common | {out}

    def reached(self, tensor: str) -> bool:
        return tensor in self.dom

    def common_dominator(self, tensors: list[str]) -> str:
        """The latest tensor that every path to all of ``tensors`` goes through: the fork."""
        common = frozenset.intersection(*(self.dom[t] for t in tensors))
        return max(common, key=lambda t: self.order[t])


def _dims(vi: Any) -> tuple[Dim, ...] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    out: list[Dim] = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(str(d.dim_param))
        else:
            out.append(None)
    return tuple(out)


def _constant(a: dict[str, Any], onnx: Any) -> np.ndarray:
    if "value" in a:
        return onnx.numpy_helper.to_array(a["value"])
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in a:
            return np.array(a[key], dtype=dtype)
    raise CannotFold


def _elem_type(v: np.ndarray, onnx: Any) -> int:
    return onnx.helper.np_dtype_to_tensor_dtype(v.dtype)


def _topological(g: Any, consts: dict[str, Any], data_input: str) -> list[Any]:
    """The graph's nodes in an order where every input is produced first (Kahn)."""
    known = set(consts) | {i.name for i in g.input} | {""}
    pending = list(g.node)
    out: list[Any] = []
    while pending:
        rest = []
        for node in pending:
            if all(i in known for i in node.input):
                out.append(node)
                known.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            missing = next(i for i in rest[0].input if i not in known)
            name = rest[0].name or rest[0].op_type
            raise SpecError(f"node '{name}' ({rest[0].op_type}): input '{missing}' is never "
                            "produced (or the graph has a cycle)")
        pending = rest
    return out
