"""A model as an ONNX graph: every layer type in our vocabulary as standard ONNX operators.

The graph is what ``Model.forward(x, training=False)`` computes, NCHW float32 with a
symbolic batch size ``N``. Node names are the layers' dotted paths (helper nodes get
``<path>/<what>``), so ``cnn shapes`` on the file gives back the same layer names.

Conventions that differ between cnncli and ONNX, and how they are bridged:

* average pooling counts the zero padding (``count_include_pad=1``; ONNX's default is 0).
  From AveragePool-19 on, onnxruntime divides a ceil-mode window that hangs past the padded
  input by the part inside, as we (and PyTorch) do;
* L2 pooling is ``LpPool`` with ``p=2``; pooling over depth is Reshape + pool + Reshape;
* LRN: ONNX divides alpha by the size (PyTorch's convention), so the textbook alpha is
  multiplied by the size. For an even size ONNX centres the window one channel later than
  we do (c-n/2+1..c+n/2 against c-n/2..c+n/2-1), and onnxruntime refuses even sizes, so
  an even LRN is written out: Pow, a conv of ones over the channels, Mul, Add, Pow, Mul;
* relu6 is ``Clip(0, 6)``, the residual scale a ``Mul``, and dropout (the identity at
  inference) is left out;
* ``Sum`` is a parallel block's add merge, ``Add`` a residual's (the importer tells them
  apart by that).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cnncli.errors import CnnError
from cnncli.layers.base import Node
from cnncli.onnxio import IR_VERSION, OPSET, require_onnx

#: Metadata keys written into the model (``model.metadata_props``).
META_CLASSES = "cnncli.classes"
META_SPEC = "cnncli.spec"
META_NORMALIZER = "cnncli.normalizer"
META_NORMALIZED = "cnncli.normalized_in_graph"
INPUT_NAME = "input"


class _Graph:
    """Collects nodes and initializers with unique tensor names."""

    def __init__(self, onnx: Any) -> None:
        self.onnx = onnx
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.used: set[str] = {INPUT_NAME}

    def name(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name

    def const(self, base: str, value: Any, dtype: Any = np.float32) -> str:
        name = self.name(base)
        arr = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        self.inits.append(self.onnx.numpy_helper.from_array(arr, name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str, **attrs: Any) -> str:
        out = self.name(f"{name}:out")
        self.nodes.append(
            self.onnx.helper.make_node(op_type, inputs, [out], name=self.name(name), **attrs)
        )
        return out


class _Exporter:
    """Walks the resolved node tree and emits ONNX nodes with the model's arrays."""

    def __init__(self, model: Any, graph: _Graph) -> None:
        self.model = model
        self.g = graph
        self.handlers: dict[str, Callable[[Node, str], str]] = {
            "conv": self.conv,
            "deconv": self.deconv,
            "pool": self.pool,
            "global_pool": self.global_pool,
            "flatten": self.flatten,
            "dense": self.dense,
            "dropout": lambda node, x: x,  # the identity at inference
            "batchnorm": self.batchnorm,
            "lrn": self.lrn,
            "residual": self.residual,
            "parallel": self.parallel,
            "repeat": self.sequence,
            "sequential": self.sequence,
        }
        for act in ACTIVATION_OPS:
            self.handlers[act] = self.activation_layer

    # -- walking ---------------------------------------------------------------------------
    def run(self, nodes: list[Node], x: str) -> str:
        for node in nodes:
            handler = self.handlers.get(node.type)
            if handler is None:
                raise CnnError(
                    f"layer '{node.path}': layer type '{node.type}' cannot be exported to ONNX"
                )
            x = handler(node, x)
        return x

    def state(self, node: Node, key: str) -> np.ndarray:
        return np.asarray(self.model.state[node.path][key], dtype=np.float32)

    def fused(self, node: Node, x: str) -> str:
        """The activation fused into a conv/deconv/dense/residual, if any."""
        act = node.layer.cfg.get("activation")
        if act is None:
            return x
        return self.act(act, x, f"{node.path}/{act[0]}")

    def act(self, act: tuple[str, dict[str, float]], x: str, name: str) -> str:
        kind, hp = act
        if kind == "relu6":
            lo, hi = self.g.const(f"{name}/min", 0.0), self.g.const(f"{name}/max", 6.0)
            return self.g.op("Clip", [x, lo, hi], name)
        if kind == "leaky_relu":
            return self.g.op("LeakyRelu", [x], name, alpha=float(hp["slope"]))
        if kind == "elu":
            return self.g.op("Elu", [x], name, alpha=float(hp["alpha"]))
        if kind == "softmax":  # over channels: axis 1 of NCHW or of [N, units]
            return self.g.op("Softmax", [x], name, axis=1)
        return self.g.op(ACTIVATION_OPS[kind], [x], name)

    # -- layers ----------------------------------------------------------------------------
    def conv(self, node: Node, x: str) -> str:
        layer = node.layer
        inputs = [x, self.g.const(f"{node.path}.weight", self.state(node, "weight"))]
        if "bias" in node.params:
            inputs.append(self.g.const(f"{node.path}.bias", self.state(node, "bias")))
        (kh, kw), (ph, pw) = layer.kernel, layer.pad
        y = self.g.op("Conv", inputs, node.path, kernel_shape=[kh, kw],
                      strides=list(layer.stride), pads=[ph, pw, ph, pw],
                      dilations=list(layer.dilation), group=layer.groups)
        return self.fused(node, y)

    def deconv(self, node: Node, x: str) -> str:
        layer = node.layer
        inputs = [x, self.g.const(f"{node.path}.weight", self.state(node, "weight"))]
        if "bias" in node.params:
            inputs.append(self.g.const(f"{node.path}.bias", self.state(node, "bias")))
        ph, pw = layer.padding
        y = self.g.op("ConvTranspose", inputs, node.path, kernel_shape=list(layer.kernel),
                      strides=list(layer.stride), pads=[ph, pw, ph, pw],
                      output_padding=list(layer.output_padding),
                      dilations=list(layer.dilation), group=layer.groups)
        return self.fused(node, y)

    def _pool_op(self, mode: str, x: str, name: str, **attrs: Any) -> str:
        if mode == "max":
            return self.g.op("MaxPool", [x], name, **attrs)
        if mode == "avg":
            return self.g.op("AveragePool", [x], name, count_include_pad=1, **attrs)
        return self.g.op("LpPool", [x], name, p=2, **attrs)

    def pool(self, node: Node, x: str) -> str:
        layer = node.layer
        if layer.over == "depth":
            # [N, C, H, W] -> [N, 1, C, H*W], pool (F x 1) windows down the channels, back.
            h, w, c = node.in_shape
            shape = self.g.const(f"{node.path}/to_channels", [0, 1, c, h * w], np.int64)
            y = self.g.op("Reshape", [x, shape], f"{node.path}/reshape")
            y = self._pool_op(layer.mode, y, node.path, kernel_shape=[layer.size[0], 1],
                              strides=[layer.stride[0], 1])
            h2, w2, c2 = node.out_shape
            back = self.g.const(f"{node.path}/to_map", [0, c2, h2, w2], np.int64)
            return self.g.op("Reshape", [y, back], f"{node.path}/unshape")
        ph, pw = layer.padding
        return self._pool_op(layer.mode, x, node.path, kernel_shape=list(layer.size),
                             strides=list(layer.stride), pads=[ph, pw, ph, pw],
                             ceil_mode=int(layer.ceil))

    def global_pool(self, node: Node, x: str) -> str:
        op = "GlobalAveragePool" if node.layer.mode == "avg" else "GlobalMaxPool"
        y = self.g.op(op, [x], node.path)
        return self.g.op("Flatten", [y], f"{node.path}/flatten", axis=1)  # ours is a vector

    def flatten(self, node: Node, x: str) -> str:
        return self.g.op("Flatten", [x], node.path, axis=1)

    def dense(self, node: Node, x: str) -> str:
        if len(node.in_shape) == 3:  # the implicit C-major flatten
            x = self.g.op("Flatten", [x], f"{node.path}/flatten", axis=1)
        inputs = [x, self.g.const(f"{node.path}.weight", self.state(node, "weight"))]
        if "bias" in node.params:
            inputs.append(self.g.const(f"{node.path}.bias", self.state(node, "bias")))
        y = self.g.op("Gemm", inputs, node.path, transB=1)
        return self.fused(node, y)

    def batchnorm(self, node: Node, x: str) -> str:
        names = [
            self.g.const(f"{node.path}.{k}", self.state(node, k))
            for k in ("weight", "bias", "running_mean", "running_var")
        ]
        # ONNX's momentum weighs the running value; ours (PyTorch's) weighs the new batch.
        return self.g.op("BatchNormalization", [x, *names], node.path,
                         epsilon=float(node.layer.eps),
                         momentum=float(round(1.0 - node.layer.momentum, 12)))

    def lrn(self, node: Node, x: str) -> str:
        layer, g = node.layer, self.g
        n = layer.size
        alpha = layer.alpha * n if layer.convention == "textbook" else layer.alpha
        if n % 2:
            return g.op("LRN", [x], node.path, size=n, alpha=float(alpha),
                        beta=float(layer.beta), bias=float(layer.k))
        # ONNX's window for an even n is c-n/2+1..c+n/2 (and onnxruntime refuses even sizes):
        # x * (k + alpha/n * window_sum(x^2))^-beta, the window sum a conv of ones over
        # the channels with our window c-n/2..c+n/2-1 (pads n/2 before, n/2-1 after).
        h, w, c = node.in_shape
        p = node.path
        sq = g.op("Pow", [x, g.const(f"{p}/two", 2.0)], f"{p}/square")
        sq = g.op("Reshape", [sq, g.const(f"{p}/to_channels", [0, 1, c, h * w], np.int64)],
                  f"{p}/reshape")
        ones = g.const(f"{p}/ones", np.ones((1, 1, n, 1)))
        total = g.op("Conv", [sq, ones], f"{p}/window", kernel_shape=[n, 1],
                     pads=[n // 2, 0, n // 2 - 1, 0])
        total = g.op("Reshape", [total, g.const(f"{p}/to_map", [0, c, h, w], np.int64)],
                     f"{p}/unshape")
        base = g.op("Mul", [total, g.const(f"{p}/alpha", alpha / n)], f"{p}/alpha")
        base = g.op("Add", [base, g.const(f"{p}/k", layer.k)], f"{p}/k")
        scale = g.op("Pow", [base, g.const(f"{p}/minus_beta", -layer.beta)], f"{p}/pow")
        return g.op("Mul", [x, scale], p)

    def activation_layer(self, node: Node, x: str) -> str:
        return self.act(node.layer.activation(), x, node.path)

    def residual(self, node: Node, x: str) -> str:
        body = self.run(node.children["body"], x)
        short = self.run(node.children["shortcut"], x)
        scale = node.layer.scale
        if scale != 1.0:
            short = self.g.op("Mul", [short, self.g.const(f"{node.path}/scale", scale)],
                              f"{node.path}/scale")
        y = self.g.op("Add", [body, short], node.path)
        return self.fused(node, y)

    def parallel(self, node: Node, x: str) -> str:
        outs = [self.run(nodes, x) for nodes in node.children.values()]
        if node.layer.merge == "concat":
            return self.g.op("Concat", outs, node.path, axis=1)
        return self.g.op("Sum", outs, node.path)

    def sequence(self, node: Node, x: str) -> str:
        return self.run(node.children["layers"], x)


#: Our activation names and their ONNX operators (relu6 becomes Clip).
ACTIVATION_OPS = {
    "relu": "Relu",
    "relu6": "Clip",
    "leaky_relu": "LeakyRelu",
    "sigmoid": "Sigmoid",
    "tanh": "Tanh",
    "elu": "Elu",
    "softmax": "Softmax",
}


def exportable_types() -> set[str]:
    """Every layer type the exporter handles (the tests check it covers the vocabulary)."""
    return set(_Exporter(None, None).handlers)  # type: ignore[arg-type]


def to_onnx(
    model: Any,
    *,
    normalizer: Any = None,
    classes: list[str] | None = None,
    spec_text: str | None = None,
    opset: int = OPSET,
) -> Any:
    """The model as an ``onnx.ModelProto``, checked with ``onnx.checker``.

    ``normalizer`` (a :class:`~cnncli.data.dataset.Normalizer`) becomes the graph's first
    nodes, ``(x - mean) / std`` per channel, so the graph takes images as the data loader
    reads them (before normalisation). ``classes`` and ``spec_text`` go into the metadata.
    """
    onnx = require_onnx()
    helper = onnx.helper
    if opset < OPSET:
        raise CnnError(f"--opset must be {OPSET} or later (AveragePool-19's ceil-mode edges)")
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise CnnError(f"--opset {opset}: the installed onnx {onnx.__version__} knows opsets "
                       f"up to {newest}")
    network = model.network
    g = _Graph(onnx)
    c, h, w = model.input_shape
    x = INPUT_NAME
    if normalizer is not None:
        mean = np.asarray(normalizer.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(normalizer.std, dtype=np.float32).reshape(1, -1, 1, 1)
        if mean.shape[1] != c:
            raise CnnError(f"normalisation has {mean.shape[1]} channels, the network {c}")
        x = g.op("Sub", [x, g.const("normalize/mean", mean)], "normalize/sub")
        x = g.op("Div", [x, g.const("normalize/std", std)], "normalize/div")
    y = _Exporter(model, g).run(network.nodes, x)
    out_shape = network.output
    out_name = "probabilities" if model.softmax_head else "output"
    dims = ["N", out_shape[-1], *out_shape[:2]] if len(out_shape) == 3 else ["N", *out_shape]
    producer = next((n for n in g.nodes if y in n.output), None)
    if producer is None:  # nothing but dropout: the graph is the identity
        y = g.op("Identity", [y], "output")
        producer = g.nodes[-1]
    producer.output[0] = out_name  # the graph output, under a readable name
    graph = helper.make_graph(
        g.nodes,
        network.spec.name,
        [helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.FLOAT, ["N", c, h, w])],
        [helper.make_tensor_value_info(out_name, onnx.TensorProto.FLOAT, dims)],
        initializer=g.inits,
    )
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="cnncli",
        doc_string=f"{network.spec.name}, exported by cnncli",
    )
    # the oldest IR version that carries this opset, so older runtimes still load the file
    proto.ir_version = max(IR_VERSION, helper.find_min_ir_version_for(list(proto.opset_import)))
    meta = {
        "cnncli.input": "x".join(str(v) for v in network.input),
        META_NORMALIZED: "true" if normalizer is not None else "false",
    }
    if classes is not None:
        meta[META_CLASSES] = json.dumps(list(classes))
    if normalizer is not None:
        meta[META_NORMALIZER] = json.dumps(normalizer.to_dict())
    if spec_text is not None:
        meta[META_SPEC] = spec_text
    helper.set_model_props(proto, meta)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise CnnError(f"the exported graph does not pass onnx.checker: {exc}") from None
    return proto


def load_source(source: str | Path, *, input_shape: Any = None, seed: int = 0
                ) -> tuple[Any, dict[str, Any], list[Path]]:
    """(model, metadata, input files) from a run folder, a checkpoint or a spec.

    A run folder or ``.npz`` checkpoint gives its trained weights, class names and
    normalisation; a spec gives fresh weights from ``seed`` (no normalisation).
    """
    from cnncli.spec import load_spec

    path = Path(source)
    if path.is_dir() or path.suffix.lower() == ".npz":
        if input_shape is not None:
            raise CnnError(f"{path}: --input is for a spec; a checkpoint's input size is fixed")
        from cnncli.data.dataset import Normalizer
        from cnncli.train.predict import load_trained

        model, meta, ckpt = load_trained(path)
        info = {
            "normalizer": Normalizer.from_dict(meta["normalizer"]),
            "classes": list(meta["classes"]),
            "spec_text": meta["spec_text"],
        }
        return model, info, [ckpt.resolve()]
    from cnncli.engine.model import build_model

    spec = load_spec(path, input_shape=input_shape)
    model = build_model(spec, input_shape=input_shape, seed=seed)
    info = {"normalizer": None, "classes": None, "spec_text": spec.text}
    return model, info, [path.resolve()]


def export(source: str | Path, out: str | Path, *, input_shape: Any = None, seed: int = 0,
           normalize: bool = True, opset: int = OPSET) -> dict[str, Any]:
    """Write ``source`` (run folder, checkpoint or spec) to ``out`` as ONNX, atomically.

    Returns a summary: the file, opset, parameter count, input and output names and shapes.
    """
    from cnncli.fileio import atomic_write

    out = Path(out)
    if out.is_dir():
        raise CnnError(f"{out}: is a folder; give the .onnx file to write")
    model, info, inputs = load_source(source, input_shape=input_shape, seed=seed)
    target = out.resolve()
    for p in inputs:
        if target == p:
            raise CnnError(f"{out}: is the input {source}; choose another --out")
    if out.exists() and out.suffix.lower() != ".onnx":
        raise CnnError(f"{out}: exists and is not an .onnx file; refusing to replace it")
    proto = to_onnx(model, normalizer=info["normalizer"] if normalize else None,
                    classes=info["classes"], spec_text=info["spec_text"], opset=opset)
    data = proto.SerializeToString()
    atomic_write(out, lambda f: f.write(data), what="ONNX model")
    graph = proto.graph
    return {
        "file": str(out),
        "bytes": len(data),
        "opset": opset,
        "nodes": len(graph.node),
        "params": model.num_params,
        "input": {"name": INPUT_NAME, "shape": ["N", *model.input_shape]},
        "output": {"name": graph.output[0].name,
                   "shape": [d.dim_param or d.dim_value
                             for d in graph.output[0].type.tensor_type.shape.dim]},
        "normalized": info["normalizer"] is not None and normalize,
        "classes": info["classes"],
    }


def run_onnxruntime(proto: Any, x: np.ndarray) -> np.ndarray:
    """The graph's output for ``x`` [N, C, H, W] float32, by onnxruntime on the CPU."""
    from cnncli.onnxio import require_onnxruntime

    ort = require_onnxruntime()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # its shape-inference warnings about ceil-mode pools
    session = ort.InferenceSession(proto.SerializeToString(), opts,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})[0]
