"""An ONNX graph as a cnncli spec, so ``cnn shapes`` reports it with our arithmetic.

The graph is translated into the same spec dict a YAML file gives (one source of truth for
shapes, parameters, MACs and receptive fields) and then loaded as usual:

* a chain of single-input nodes is a list of layers; where the data flow forks, the node
  that merges the branches again says what block it is: ``Add`` a residual (an empty
  branch is the identity shortcut, a ``Mul`` by a constant on it the scale), ``Concat``
  a parallel block that concatenates, ``Sum`` one that adds;
* an activation named like the conv, dense or residual before it (same module) is fused
  into it, as cnn export writes them; otherwise it is a layer of its own. A ``Flatten``
  named like the dense after it is the dense's implicit flatten;
* layer names come from the node names (PyTorch's ``/layer1/layer1.0/conv1/Conv`` is
  ``layer1.0.conv1``), relative to their block;
* element-wise Sub/Div/Mul/Add by constants right at the input (normalisation) are
  preprocessing, left out with a note.

Anything that cannot be expressed is a SpecError naming the node and its operator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnncli.errors import SpecError
from cnncli.layers.base import Shape
from cnncli.onnxio import require_onnx
from cnncli.onnxio.graph import Graph

ACTIVATIONS = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "LeakyRelu": "leaky_relu",
               "Elu": "elu", "Softmax": "softmax", "Clip": None}
POOLS = {"MaxPool": "max", "AveragePool": "avg", "LpPool": "l2"}
MERGES = ("Add", "Sum", "Concat")
PREPROCESS = ("Sub", "Div", "Mul", "Add")
#: Graph names exporters use for every model (the file name says more).
GENERIC_GRAPH_NAMES = ("", "main_graph", "torch_jit", "torch-jit-export", "tf2onnx", "graph")


@dataclass
class Single:
    node: Any


@dataclass
class Merge:
    node: Any
    branches: list[list[Any]] = field(default_factory=list)


def load_onnx_spec(path: str | Path, input_shape: Shape | None = None) -> Any:
    """Read an ONNX file into a :class:`~cnncli.spec.Spec` (``spec.text`` is its YAML)."""
    from cnncli.onnxio.specyaml import dump_spec
    from cnncli.spec import spec_from_dict

    path = Path(path)
    data, dense_inputs = _translate(read_model(path), str(path), input_shape)
    try:
        spec = spec_from_dict(data, input_shape=input_shape)
    except SpecError as exc:
        raise exc.located(file=str(path)) from None
    spec.file, spec.text = str(path), dump_spec(data)
    spec.onnx_dense_inputs = dense_inputs  # type: ignore[attr-defined]  (weight_warnings)
    return spec


def weight_warnings(spec: Any, report: dict[str, Any]) -> list[str]:
    """Dense layers whose input, at the reported size, is not what their ONNX weight takes
    (``--input`` other than the model's own): the report follows our rules, the model
    itself would not run there."""
    expected = getattr(spec, "onnx_dense_inputs", {})
    out = []
    for row in report["layers"]:
        n_in = expected.get(row["name"])
        got = int(np.prod(row["input"]))
        if row["type"] == "dense" and n_in is not None and n_in != got:
            size = "x".join(str(d) for d in report["input"])
            out.append(f"{spec.file}: layer '{row['name']}': receives {got:,} units at input "
                       f"{size} but the model's weight takes {n_in:,}: the report follows the "
                       "spec's rules, the ONNX model itself runs only where it gets "
                       f"{n_in:,}")
    return out


def read_model(path: Path) -> Any:
    from cnncli.fileio import read_file

    onnx = require_onnx()
    if not path.exists():
        raise SpecError("no such file", file=str(path))
    if path.is_dir():
        raise SpecError("is a directory, not an ONNX model", file=str(path))
    # a regular file only (a FIFO or /dev/zero would hang onnx.load), 2 GiB at most
    # (protobuf's own limit)
    data = read_file(path, limit=2 << 30, what="ONNX model")
    try:
        return onnx.load_model_from_string(data)
    except Exception as exc:  # noqa: BLE001 - protobuf raises its own DecodeError, OSError...
        raise SpecError(f"not a readable ONNX model ({type(exc).__name__}: {exc})",
                        file=str(path)) from None


def onnx_spec_dict(path: str | Path, input_shape: Shape | None = None) -> dict[str, Any]:
    """The spec dict (``name``, ``description``, ``input``, ``layers``) of an ONNX file."""
    path = Path(path)
    return model_spec_dict(read_model(path), str(path), input_shape)


def model_spec_dict(model: Any, file: str, input_shape: Shape | None = None) -> dict[str, Any]:
    """The spec dict of a loaded ``onnx.ModelProto`` (``file`` names it in messages)."""
    return _translate(model, file, input_shape)[0]


def _translate(model: Any, file: str, input_shape: Shape | None
               ) -> tuple[dict[str, Any], dict[str, int]]:
    """(spec dict, dense layer path -> the input units its ONNX weight takes)."""
    onnx = require_onnx()
    model = _fix_input(model, onnx, file, input_shape)
    _infer_shapes(model, onnx)
    graph = Graph(model, onnx, file)
    dims = graph.shape(graph.input)
    _, c, h, w = dims  # checked by _fix_input
    tr = _Translator(graph)
    layers = tr.translate(tr.chain(graph.input, graph.output), "")
    if not layers:
        raise SpecError("the graph has no layers cnncli can report", file=file)
    description = f"Imported from {Path(file).name} (ONNX opset {graph.opset})."
    if tr.skipped:
        ops = ", ".join(f"{n.op_type} ('{n.name}')" if n.name else n.op_type for n in tr.skipped)
        description += (f" The input preprocessing ({ops}, element-wise by constants) is "
                        "not a layer and is left out.")
    name = model.graph.name
    if name in GENERIC_GRAPH_NAMES:
        name = Path(file).stem
    data = {"name": name, "description": description, "input": [h, w, c], "layers": layers}
    return data, tr.dense_inputs


def _infer_shapes(model: Any, onnx: Any) -> None:
    """Add ONNX's inferred shapes to ``model.graph.value_info``, in place.

    Inference runs on a copy whose large initializers are declared as inputs instead (only
    their shapes matter), so a 100 MB model is not serialised twice for it. Where inference
    fails the shapes are simply missing; the layers' own rules still give ours.
    """
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    g = light.graph
    g.node.extend(model.graph.node)
    g.input.extend(model.graph.input)
    g.output.extend(model.graph.output)
    declared = {i.name for i in model.graph.input}
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL or \
                int(np.prod(init.dims, dtype=np.int64)) > 64:
            if init.name not in declared:
                g.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type,
                                                                  list(init.dims)))
        else:
            g.initializer.append(init)
    try:
        inferred = onnx.shape_inference.infer_shapes(light, data_prop=True)
    except Exception:  # noqa: BLE001, S110 - shapes then come from our own rules only
        return
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)


def _fix_input(model: Any, onnx: Any, file: str, input_shape: Shape | None) -> Any:
    """Check the input is N x C x H x W; with ``--input`` set C, H, W to it."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs) or "none"
        raise SpecError(f"expected one input tensor, found {len(inputs)} ({names})", file=file)
    vi = inputs[0]
    t = vi.type.tensor_type
    dims = t.shape.dim if t.HasField("shape") else []
    if len(dims) != 4:
        raise SpecError(f"input '{vi.name}' has {len(dims)} dimensions; cnncli reads images "
                        "as N x C x H x W", file=file)
    shown = "x".join(d.dim_param or str(d.dim_value) if (d.dim_param or d.dim_value) else "?"
                     for d in dims)
    if input_shape is not None:
        h, w, c = input_shape
        if dims[1].HasField("dim_value") and dims[1].dim_value != c:
            raise SpecError(f"input '{vi.name}' ({shown}) has {dims[1].dim_value} channels, "
                            f"--input gives {c}", file=file)
        model = type(model).FromString(model.SerializeToString())
        dims = model.graph.input[[i.name for i in model.graph.input].index(vi.name)] \
            .type.tensor_type.shape.dim
        for d, v in zip(list(dims)[1:], (c, h, w)):
            d.Clear()
            d.dim_value = v
    elif not all(d.HasField("dim_value") for d in list(dims)[1:]):
        raise SpecError(f"input '{vi.name}' has the symbolic size {shown}; give its size with "
                        "--input HxWxC", file=file)
    if not (dims[0].HasField("dim_value") or dims[0].HasField("dim_param")):
        dims[0].dim_param = "N"
    return model


def derived_name(name: str) -> str:
    """A node's layer name: ``/layer1/layer1.0/conv1/Conv`` -> ``layer1.0.conv1``,
    ``C1/tanh`` -> ``C1`` (cnn export's helper nodes), ``conv1`` -> ``conv1``."""
    parts = [p for p in name.strip("/").split("/") if p]
    if not name.startswith("/") and len(parts) <= 1:
        return parts[0] if parts else ""
    # PyTorch (leading '/') and cnn export's helpers: the last part is the operator. PyTorch
    # qualifies a child by its parent's attribute name: /layer1/layer1.0/downsample/downsample.0
    path = ""
    for seg in parts[:-1]:
        prefix, _, last = seg.rpartition(".")
        if prefix and (path == prefix or path.endswith("." + prefix)):
            path = f"{path}.{last}"
        else:
            path = f"{path}.{seg}" if path else seg
    return path


class _Translator:
    def __init__(self, graph: Graph) -> None:
        self.g = graph
        self.visited: set[int] = set()
        self.paths: set[str] = set()
        self.skipped: list[Any] = []  # the input preprocessing left out
        self.dense_inputs: dict[str, int] = {}  # dense path -> input units of its weight
        self.outer: dict[str, str] = {}  # a shortcut's or branch's scope -> its block's path
        self.patterns: dict[int, dict[str, Any]] = {}  # recognised multi-node layers

    # -- structure -----------------------------------------------------------------------------
    def chain(self, src: str, dst: str) -> list[Any]:
        """The items (nodes and merges) that compute ``dst`` from ``src``, in order."""
        g = self.g
        items: list[Any] = []
        t = dst
        while t != src:
            node = g.producer.get(t)
            if node is None or not g.reached(t):
                raise g.error(f"tensor '{t}' does not come from the input '{g.input}'")
            if id(node) in self.visited:
                raise g.node_error(node, "its output feeds branches that never merge again in "
                                   "one Add, Sum or Concat; cnncli's blocks cannot express it")
            self.visited.add(id(node))
            ins = g.data_inputs(node)
            if len(ins) == 1:
                items.append(Single(node))
                t = ins[0]
            elif len(ins) == 2 and node.op_type == "Mul" and self._even_lrn(node):
                items.append(Single(node))
                t = self.patterns[id(node)]["input"]
            elif len(ins) >= 2 and node.op_type in MERGES:
                fork = g.common_dominator(ins)
                items.append(Merge(node, [self.chain(fork, i) for i in ins]))
                t = fork
            elif not ins:
                raise g.node_error(node, "computes from constants only and cannot be folded")
            else:
                raise g.node_error(node, f"combines {len(ins)} tensors; cnncli's blocks merge "
                                   "branches with Add (residual), Sum or Concat (parallel) only")
        items.reverse()
        return items

    def _even_lrn(self, node: Any) -> bool:
        """cnn export's even-size LRN, x * (k + alpha/n * window_sum(x^2))^-beta: a Mul of x
        and Pow <- Add <- Mul <- Reshape <- Conv(ones, n x 1) <- Reshape <- Pow(x, 2)."""
        g = self.g
        ins = g.data_inputs(node)
        for x, t in (ins, ins[::-1]):
            seq: list[Any] = []
            while t != x and len(seq) < 7:
                p = g.producer.get(t)
                if p is None or len(g.data_inputs(p)) != 1 or id(p) in self.visited:
                    break
                seq.append(p)
                t = g.data_inputs(p)[0]
            seq.reverse()
            if t != x or [p.op_type for p in seq] != \
                    ["Pow", "Reshape", "Conv", "Reshape", "Mul", "Add", "Pow"]:
                continue
            consts = [g.const(p, 1) for p in seq]
            if any(c is None or c.dtype == object for c in consts):
                continue
            two, _, ones, _, alpha, k, minus_beta = consts
            n = ones.shape[2] if ones.ndim == 4 else 0
            if two.size != 1 or float(two.reshape(())) != 2.0 or ones.shape != (1, 1, n, 1) or \
                    not (ones == 1).all() or n % 2 or \
                    list(g.attr(seq[2], "pads", [])) != [n // 2, 0, n // 2 - 1, 0]:
                continue
            self.visited.update(id(p) for p in seq)
            self.patterns[id(node)] = {
                "input": x, "size": int(n), "alpha": _f32(float(alpha.reshape(())) * n),
                "beta": _f32(-float(minus_beta.reshape(()))), "k": _f32(float(k.reshape(())))}
            return True
        return False

    # -- names ---------------------------------------------------------------------------------
    def name(self, node: Any, scope: str, kind: str) -> str:
        """A unique layer name in ``scope``, from the node's name made relative to the scope
        (or to the block whose shortcut or branch the scope is)."""
        d = derived_name(node.name)
        rel = d
        for outer in (scope, self.outer.get(scope)):
            if outer and d.startswith(outer + "."):
                rel = d[len(outer) + 1:]
                break

        def full(n: str) -> str:
            return f"{scope}.{n}" if scope else n

        if rel and full(rel) not in self.paths:
            chosen = rel
        else:
            base, k = (f"{rel}_", 2) if rel else (kind, 1)
            while full(f"{base}{k}") in self.paths:
                k += 1
            chosen = f"{base}{k}"
        self.paths.add(full(chosen))
        return chosen

    @staticmethod
    def same_layer(a: Any, b: Any) -> bool:
        """Whether node ``b`` belongs to the layer of node ``a`` (same module, or unnamed)."""
        if not b.name:
            return True
        nb = derived_name(b.name)
        return bool(nb) and nb == derived_name(a.name)

    # -- translation ---------------------------------------------------------------------------
    def translate(self, items: list[Any], scope: str) -> list[dict[str, Any] | str]:
        out: list[dict[str, Any] | str] = []
        i = 0
        at_input = scope == ""
        while i < len(items):
            item = items[i]
            nxt = items[i + 1:]
            if isinstance(item, Merge):
                entry, used = self.merge(item, nxt, scope)
                out.append(entry)
                i += 1 + used
                at_input = False
                continue
            node = item.node
            if at_input and node.op_type in PREPROCESS and self._is_preprocess(node):
                self.skipped.append(node)
                i += 1
                continue
            at_input = False
            entry, used = self.single(node, nxt, scope)
            if entry is not None:
                out.append(_without_defaults(entry))
            i += 1 + used
        return out

    def _is_preprocess(self, node: Any) -> bool:
        value = self.g.const(node, 1)
        if value is None or value.dtype == object:
            return False
        c = self.g.shape(self.g.input)[1]
        return value.size in (1, c) and value.ndim <= 4

    def merge(self, item: Merge, rest: list[Any], scope: str) -> tuple[dict[str, Any], int]:
        node, g = item.node, self.g
        op = node.op_type
        if op == "Concat":
            axis = g.attr(node, "axis")
            rank = g.rank(node.output[0]) or 4
            if axis not in (1, 1 - rank):
                raise g.node_error(node, f"concatenates along axis {axis}; cnncli's parallel "
                                   "blocks concatenate channels (axis 1)")
        if op in ("Concat", "Sum"):
            name = self.name(node, scope, "parallel")
            path = f"{scope}.{name}" if scope else name
            for k in range(len(item.branches)):
                self.outer[f"{path}.branch{k + 1}"] = path
            branches = [self.translate(b, f"{path}.branch{k + 1}")
                        for k, b in enumerate(item.branches)]
            merge = "concat" if op == "Concat" else "add"
            return {"parallel": {"name": name, "branches": branches, "merge": merge}}, 0
        # Add: a residual block
        if len(item.branches) != 2:
            raise g.node_error(node, "adds more than two tensors")
        body, short = item.branches
        if self._shortcut_like(body) and not self._shortcut_like(short):
            body, short = short, body
        scale = 1.0
        if short and isinstance(short[-1], Single) and short[-1].node.op_type == "Mul":
            value = g.const(short[-1].node, 1)
            if value is None:
                value = g.const(short[-1].node, 0)
            if value is not None and value.dtype != object and value.size == 1:
                scale = _f32(float(value.reshape(())))
                short = short[:-1]
        name = self.name(node, scope, "residual")
        path = f"{scope}.{name}" if scope else name
        self.outer[f"{path}.shortcut"] = path
        params: dict[str, Any] = {"name": name,
                                  "body": self.translate(body, path),
                                  "shortcut": self.translate(short, f"{path}.shortcut")}
        if scale != 1.0:
            params["scale"] = scale
        used = 0
        act = None
        if rest and isinstance(rest[0], Single):
            after = rest[0].node
            own = derived_name(node.name)
            inside = bool(own) and derived_name(after.name).startswith(own + ".")
            if (self.same_layer(node, after) or inside) and self._only_consumer(node, after):
                act = self.activation(after)
                used = 1 if act is not None else 0
        params["activation"] = _act_value(act) if act is not None else "none"
        return {"residual": params}, used

    def _shortcut_like(self, branch: list[Any]) -> bool:
        """Empty, a lone Mul (the scale), or named shortcut/downsample."""
        if not branch:
            return True
        if len(branch) == 1 and isinstance(branch[0], Single) and \
                branch[0].node.op_type == "Mul":
            return True
        first = branch[0]
        if isinstance(first, Single):
            parts = derived_name(first.node.name).split(".")
            return any(p in ("shortcut", "downsample") for p in parts)
        return False

    def _only_consumer(self, node: Any, after: Any) -> bool:
        return self.g.consumers.get(node.output[0], []) == [after]

    # -- activations ---------------------------------------------------------------------------
    def activation(self, node: Any) -> tuple[str, dict[str, float]] | None:
        """(type, hyperparameters) for an activation node, None for any other node."""
        op, g = node.op_type, self.g
        if op not in ACTIVATIONS:
            return None
        if op == "LeakyRelu":
            return "leaky_relu", {"slope": float(g.attr(node, "alpha", 0.01))}
        if op == "Elu":
            return "elu", {"alpha": float(g.attr(node, "alpha", 1.0))}
        if op == "Softmax":
            rank = g.rank(node.input[0])
            default = -1 if g.opset >= 13 else 1
            axis = g.attr(node, "axis", default)
            if (rank is None and axis != 1) or (rank is not None and axis % rank != 1) or \
                    (rank != 2 and g.opset < 13):
                raise g.node_error(node, f"softmax over axis {axis} of a rank-{rank} tensor; "
                                   "cnncli's softmax runs over the channels (axis 1)")
            return "softmax", {}
        if op == "Clip":
            lo, hi = self._clip_bounds(node)
            if lo == 0.0 and hi == 6.0:
                return "relu6", {}
            if lo == 0.0 and hi is None:
                return "relu", {}
            raise g.node_error(node, f"clips to [{lo}, {hi}]; only relu6 (0, 6) and relu (0, "
                               "none) are in cnncli's vocabulary")
        return ACTIVATIONS[op], {}

    def _clip_bounds(self, node: Any) -> tuple[float | None, float | None]:
        g = self.g
        if g.opset < 11:
            lo, hi = g.attr(node, "min"), g.attr(node, "max")
        else:
            a, b = g.const(node, 1), g.const(node, 2)
            for k, v in ((1, a), (2, b)):
                if v is None and k < len(node.input) and node.input[k]:
                    raise g.node_error(node, "its bounds are not constants")
            lo = None if a is None else float(a.reshape(()))
            hi = None if b is None else float(b.reshape(()))
        if hi is not None and not np.isfinite(hi):
            hi = None
        return (None if lo is None else float(lo)), (None if hi is None else float(hi))

    def fuse_activation(self, node: Any, rest: list[Any]) -> tuple[Any, int]:
        """The activation right after ``node`` if it belongs to the same layer."""
        if rest and isinstance(rest[0], Single):
            after = rest[0].node
            if self.same_layer(node, after) and self._only_consumer(node, after):
                act = self.activation(after)
                if act is not None:
                    return _act_value(act), 1
        return None, 0

    # -- single nodes --------------------------------------------------------------------------
    def single(self, node: Any, rest: list[Any], scope: str) -> tuple[Any, int]:
        op, g = node.op_type, self.g
        for k, name in enumerate(node.output[1:], 1):
            if name and g.consumers.get(name):
                raise g.node_error(node, f"its output {k + 1} ('{name}') is used; cnncli layers "
                                   "have one output")
        act = self.activation(node)
        if act is not None:
            kind, hp = act
            return {kind: {"name": self.name(node, scope, kind), **hp}}, 0
        handler = getattr(self, f"op_{op}", None)
        if handler is None:
            raise g.node_error(node, "this operator has no equivalent in cnncli's layer "
                               "vocabulary")
        return handler(node, rest, scope)

    def op_Identity(self, node: Any, rest: list[Any], scope: str) -> tuple[Any, int]:
        return None, 0

    def op_Dropout(self, node: Any, rest: list[Any], scope: str) -> tuple[Any, int]:
        ratio = self.g.const(node, 1)
        rate = float(ratio.reshape(())) if ratio is not None else \
            float(self.g.attr(node, "ratio", 0.5))
        return {"dropout": {"name": self.name(node, scope, "dropout"), "rate": rate}}, 0

    def _weight(self, node: Any, index: int, what: str) -> np.ndarray:
        w = self.g.const(node, index)
        if w is None or w.dtype == object:
            raise self.g.node_error(node, f"its {what} is not a constant (an initializer)")
        return w

    def _spatial(self, node: Any, kernel: list[int], dilation: list[int], transpose: bool = False
                 ) -> list[int]:
        """Symmetric [ph, pw] from pads / auto_pad, or an error naming the node."""
        g = self.g
        if len(kernel) != 2:
            raise g.node_error(node, f"works on {len(kernel)}-D data; cnncli's layers are 2-D")
        auto = g.attr(node, "auto_pad", "NOTSET")
        strides = list(g.attr(node, "strides", [1, 1]))
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            if transpose:
                raise g.node_error(node, "auto_pad SAME on a transposed convolution; give pads")
            shape = g.shape(node.input[0])
            if shape is None or any(not isinstance(d, int) for d in shape[2:]):
                raise g.node_error(node, f"auto_pad {auto} on an input of unknown size")
            pads = []
            for size, k, s, d in zip(shape[2:], kernel, strides, dilation):
                total = max(0, (-(-size // s) - 1) * s + d * (k - 1) + 1 - size)
                pads.append((total // 2, total - total // 2))
            if any(a != b for a, b in pads):
                raise g.node_error(node, f"auto_pad {auto} pads {pads} unequally; cnncli pads "
                                   "both sides of an axis equally")
            return [pads[0][0], pads[1][0]]
        if auto == "VALID":
            return [0, 0]
        pads = list(g.attr(node, "pads", [0, 0, 0, 0]))
        if pads[:2] != pads[2:]:
            raise g.node_error(node, f"pads {pads} are not symmetric; cnncli pads both sides "
                               "of an axis equally")
        return pads[:2]

    def op_Conv(self, node: Any, rest: list[Any], scope: str) -> tuple[Any, int]:
        g = self.g
        w = self._weight(node, 1, "weight")
        if w.ndim != 4:
            raise g.node_error(node, f"has a {w.ndim}-D weight; cnncli's conv is 2-D")
        k, _, kh, kw = w.shape
        dilation = list(g.attr(node, "dilations", [1, 1]))
        pad = self._spatial(node, list(g.attr(node, "kernel_shape", [kh, kw])), dilation)
        params: dict[str, Any] = {
            "name": self.name(node, scope, "conv"), "filters": int(k), "kernel": _pair([kh, kw]),
            "stride": _pair(g.attr(node, "strides", [1, 1])), "padding": _pair(pad),
        }
        if dilation != [1, 1]:
            params["dilation"] = _pair(dilation)
        if g.attr(node, "group", 1) != 1:
            params["groups"] = int(g.attr(node, "group"))
        params["bias"] = len(node.input) > 2 and bool(node.input[2])
        act, used = self.fuse_activation(node, rest)
        if act is not None:
            params["activation"] = act
        return {"conv": params}, used

    def op_ConvTranspose(self, node: Any, rest: list[Any], scope: str) -> tuple[Any, int]:
        g = self.g
        w = self._weight(node, 1, "weight")
        if w.ndim != 4:
            raise g.node_error(node, f"has a {w.ndim}-D weight; cnncli's deconv is 2-D")
        if g.attr(node, "output_shape") is not None:
            raise g.node_error(node, "sets output_shape; cnncli needs explicit pads")
        c, kg, kh, kw = w.shape
        group = int(g.attr(node, "group", 1))
        dilation = list(g.attr(node, "dilations", [1, 1]))
        pad = self._spatial(node, [kh, kw], dilation, transpose=True)
        params: dict[str, Any] = {
            "name": self.name(node, scope, "deconv"), "filters": int(kg * group),
            "kernel": _pair([kh, kw]), "stride": _pair(g.attr(node, "strides", [1, 1])),
            "padding": _pair(pad),
        }
        op = list(g.attr(node, "output_padding", [0, 0]))
        if op != [0, 0]:
            params["output_padding"] = _pair(op)
        if dilation != [1, 1]:
            params["dilation"] = _pair(dilation)
        if group != 1:
            params["groups"] = group
        params["bias"] = len(node.input) > 2 and bool(node.input[2])
        act, used = self.fuse_activation(node, rest)
        if act is not None:
            params["activation"] = act
        return {"deconv": params}, used

    def _pool_params(self, node: Any) -> dict[str, Any]:
        g = self.g
        op = node.op_type
        kernel = list(g.attr(node, "kernel_shape"))
        if list(g.attr(node, "dilations", [1] * len(kernel))) != [1] * len(kernel):
            raise g.node_error(node, "dilated pooling is not in cnncli's vocabulary")
        pad = self._spatial(node, kernel, [1, 1])
        if op == "LpPool" and int(g.attr(node, "p", 2)) != 2:
            raise g.node_error(node, f"p = {g.attr(node, 'p')}; cnncli's L2 pooling is p = 2")
        if op == "AveragePool" and pad != [0, 0] and not g.attr(node, "count_include_pad", 0):
            raise g.node_error(node, "averages without counting the padding "
                               "(count_include_pad=0); cnncli's average pooling counts it")
        params: dict[str, Any] = {"type": POOLS[op], "size": _pair(kernel),
                                  "stride": _pair(g.attr(node, "strides", [1, 1]))}
        if pad != [0, 0]:
            params["padding"] = _pair(pad)
        if g.attr(node, "ceil_mode", 0):
            params["ceil"] = True
        return params

    def op_MaxPool(self, node: Any, rest: list[Any], scope: str) -> tuple[Any, int]:
        params = self._pool_params(node)
        return {"pool": {"name": self.name(node, scope, "pool"), **params}}, 0

    op_AveragePool = op_MaxPool
    op_LpPool = op_MaxPool

    def _global(self, node: Any, rest: list[Any], scope: str, mode: str) -> tuple[Any, int]:
        g = self.g
        nxt = rest[0].node if rest and isinstance(rest[0], Single) else None
        if nxt is not None and self._is_flatten(nxt) and self._only_consumer(node, nxt):
            name = self.name(node, scope, "global_pool")
            used = 1 if self.same_layer(node, nxt) else 0
            return {"global_pool": {"name": name, "type": mode}}, used
        shape = g.shape(node.input[0])
        if shape is None or not all(isinstance(d, int) for d in shape[2:]):
            raise g.node_error(node, "global pooling of a map of unknown size")
        # no flatten after it: ONNX keeps N x C x 1 x 1, which is a pool over the whole map
        return {"pool": {"name": self.name(node, scope, "pool"), "type": mode,
                         "size": _pair(list(shape[2:])), "stride": 1}}, 0

    def op_GlobalAveragePool(self, node: Any, rest: list[Any], scope: str) -> tuple[Any, int]:
        return self._global(node, rest, scope, "avg")

    def op_GlobalMaxPool(self, node: Any, rest: list[Any], scope: str) -> tuple[Any, int]:
        return self._global(node, rest, scope, "max")

    def op_BatchNormalization(self, node: Any, rest: list[Any], scope: str) -> tuple[Any, int]:
        g = self.g
        if g.attr(node, "training_mode", 0):
            raise g.node_error(node, "is in training mode")
        for k in range(1, 5):
            self._weight(node, k, "statistics")
        momentum = round(1.0 - float(g.attr(node, "momentum", 0.9)), 9)
        params = {"name": self.name(node, scope, "batchnorm"),
                  "eps": float(g.attr(node, "epsilon", 1e-5))}
        if momentum != 0.1:
            params["momentum"] = momentum
        return {"batchnorm": params}, 0

    def op_LRN(self, node: Any, rest: list[Any], scope: str) -> tuple[Any, int]:
        size = int(self.g.attr(node, "size"))
        if size % 2 == 0:
            raise self.g.node_error(
                node, f"even size {size}: ONNX's window is channels c-{size // 2 - 1}..c+"
                f"{size // 2}, cnncli's c-{size // 2}..c+{size // 2 - 1}")
        return self._lrn(node, scope), 0

    def _lrn(self, node: Any, scope: str) -> dict[str, Any]:
        g = self.g
        return {"lrn": {"name": self.name(node, scope, "lrn"), "size": int(g.attr(node, "size")),
                        "alpha": float(g.attr(node, "alpha", 1e-4)),
                        "beta": float(g.attr(node, "beta", 0.75)),
                        "k": float(g.attr(node, "bias", 1.0)), "convention": "torch"}}

    def _is_flatten(self, node: Any) -> bool:
        if node.op_type == "Flatten":
            return self.g.attr(node, "axis", 1) == 1
        if node.op_type in ("Reshape", "Squeeze"):
            return self._vector_target(node)
        return False

    def _vector_target(self, node: Any) -> bool:
        """Whether a Reshape/Squeeze makes [N, ...] into [N, rest] (a flatten)."""
        g = self.g
        shape = g.shape(node.input[0])
        if shape is None or any(not isinstance(d, int) for d in shape[1:]):
            return False
        units = int(np.prod(shape[1:]))
        if node.op_type == "Squeeze":
            axes = g.const(node, 1)
            axes = g.attr(node, "axes") if axes is None else axes.reshape(-1).tolist()
            spatial = list(range(2, len(shape)))
            return axes is not None and sorted(a % len(shape) for a in axes) == spatial and \
                all(d == 1 for d in shape[2:])
        target = g.const(node, 1)
        if target is None or target.ndim != 1 or len(target) != 2:
            return False
        a, b = target.tolist()
        batch = shape[0]
        first = a == 0 or (a == batch and a != -1) or (a == -1 and b == units)
        return bool(first and (b == units or (b == -1 and a != -1)))

    def op_Flatten(self, node: Any, rest: list[Any], scope: str) -> tuple[Any, int]:
        if not self._is_flatten(node):
            what = f"axis {self.g.attr(node, 'axis', 1)}" if node.op_type == "Flatten" \
                else "a shape other than [batch, units]"
            raise self.g.node_error(node, f"reshapes to {what}; cnncli flattens each "
                                    "image to one vector")
        nxt = rest[0].node if rest and isinstance(rest[0], Single) else None
        if nxt is not None and nxt.op_type in ("Gemm", "MatMul") and node.name and \
                self.same_layer(nxt, node) and self.g.rank(node.input[0]) == 4:
            return None, 0  # the dense layer's implicit flatten
        return {"flatten": {"name": self.name(node, scope, "flatten")}}, 0

    op_Squeeze = op_Flatten

    def op_Reshape(self, node: Any, rest: list[Any], scope: str) -> tuple[Any, int]:
        depth = self._depth_pool(node, rest, scope)
        if depth is not None:
            return depth, 2
        return self.op_Flatten(node, rest, scope)

    def _depth_pool(self, node: Any, rest: list[Any], scope: str) -> dict[str, Any] | None:
        """cnn export's pooling over depth: Reshape [N,1,C,HW], pool (F x 1), Reshape back."""
        g = self.g
        if len(rest) < 2 or not all(isinstance(r, Single) for r in rest[:2]):
            return None
        pool, back = rest[0].node, rest[1].node
        shape, target = g.shape(node.input[0]), g.const(node, 1)
        if pool.op_type not in POOLS or back.op_type != "Reshape" or shape is None or \
                len(shape) != 4 or target is None or target.dtype == object:
            return None
        _, c, h, w = shape
        if target.tolist() not in ([0, 1, c, h * w], [0, 1, c, -1]):
            return None
        kernel = list(g.attr(pool, "kernel_shape"))
        strides = list(g.attr(pool, "strides", [1, 1]))
        if kernel[1] != 1 or strides[1] != 1 or any(g.attr(pool, "pads", [0] * 4)) or \
                g.attr(pool, "ceil_mode", 0):
            return None
        out = g.const(back, 1)
        c2 = (c - kernel[0]) // strides[0] + 1
        if out is None or out.dtype == object or out.tolist() not in (
                [0, c2, h, w], [-1, c2, h, w]):
            return None
        return {"pool": {"name": self.name(pool, scope, "pool"), "type": POOLS[pool.op_type],
                         "size": int(kernel[0]), "stride": int(strides[0]), "over": "depth"}}

    def _dense(self, node: Any, rest: list[Any], scope: str, w: np.ndarray, bias: bool,
               used: int) -> tuple[Any, int]:
        name = self.name(node, scope, "dense")
        self.dense_inputs[f"{scope}.{name}" if scope else name] = int(w.shape[1])
        params: dict[str, Any] = {"name": name, "units": int(w.shape[0]), "bias": bias}
        act, more = self.fuse_activation(node, rest[used:])
        if act is None and used:  # MatMul + Add: the activation is named like either
            act, more = self.fuse_activation(rest[0].node, rest[used:])
        if act is not None:
            params["activation"] = act
        return {"dense": params}, used + more

    def op_Gemm(self, node: Any, rest: list[Any], scope: str) -> tuple[Any, int]:
        g = self.g
        w = self._weight(node, 1, "weight")
        if g.attr(node, "transA", 0) or w.ndim != 2:
            raise g.node_error(node, "is not x @ W (+ b) with a 2-D constant W")
        if g.attr(node, "alpha", 1.0) != 1.0 or g.attr(node, "beta", 1.0) != 1.0:
            raise g.node_error(node, "scales by alpha/beta other than 1")
        if not g.attr(node, "transB", 0):
            w = w.T
        bias = len(node.input) > 2 and bool(node.input[2])
        return self._dense(node, rest, scope, w, bias, 0)

    def op_MatMul(self, node: Any, rest: list[Any], scope: str) -> tuple[Any, int]:
        g = self.g
        w = self._weight(node, 1, "weight")
        if w.ndim != 2 or g.rank(node.input[0]) not in (2, None):
            raise g.node_error(node, "is not a 2-D x @ W with a constant W")
        used = 0
        if rest and isinstance(rest[0], Single) and rest[0].node.op_type == "Add" and \
                self._only_consumer(node, rest[0].node):
            b = g.const(rest[0].node, 1)
            if b is None:
                b = g.const(rest[0].node, 0)
            if b is not None and b.dtype != object and b.size == w.shape[1]:
                used = 1
        return self._dense(node, rest, scope, w.T, bool(used), used)

    def op_Mul(self, node: Any, rest: list[Any], scope: str) -> tuple[Any, int]:
        if id(node) in self.patterns:  # an even-size LRN (_even_lrn)
            p = self.patterns[id(node)]
            return {"lrn": {"name": self.name(node, scope, "lrn"), "size": p["size"],
                            "alpha": p["alpha"], "beta": p["beta"], "k": p["k"],
                            "convention": "torch"}}, 0
        raise self.g.node_error(node, "multiplying by a constant is supported only as a "
                                "residual shortcut's scale (or input normalisation)")

    def op_Add(self, node: Any, rest: list[Any], scope: str) -> tuple[Any, int]:
        raise self.g.node_error(node, "adding a constant is supported only as a MatMul's bias "
                                "(or input normalisation)")

    op_Sub = op_Add
    op_Div = op_Mul


#: Parameters equal to the layer's default are left out of the spec (stride 1, bias true).
_DEFAULTS = {"conv": {"stride": 1, "padding": 0, "bias": True},
             "deconv": {"stride": 1, "padding": 0, "bias": True},
             "dense": {"bias": True}}


def _without_defaults(entry: dict[str, Any]) -> dict[str, Any]:
    ((kind, params),) = entry.items()
    defaults = dict(_DEFAULTS.get(kind, {}))
    if kind == "pool":
        defaults["stride"] = params.get("size")  # a pool's stride defaults to its size
    return {kind: {k: v for k, v in params.items() if k not in defaults or defaults[k] != v}}


def _f32(v: float) -> float:
    """The shortest decimal that reads back as the same float32 (0.1, not 0.100000001)."""
    return float(str(np.float32(v)))


def _pair(v: Any) -> int | list[int]:
    a, b = (int(x) for x in v)
    return a if a == b else [a, b]


def _act_value(act: tuple[str, dict[str, float]]) -> Any:
    kind, hp = act
    return {kind: hp} if hp else kind
