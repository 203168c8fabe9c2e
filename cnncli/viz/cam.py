"""Where in an image the evidence for a class lies: Grad-CAM, HiResCAM and saliency.

All three come from one forward and one backward pass of our own engine, the backward
starting from the class score (its logit, before any softmax):

* ``gradcam`` (Selvaraju et al. 2017): ReLU(sum_k a_k A_k), A_k the layer's feature maps
  and a_k the spatial mean of d score / d A_k.
* ``hirescam`` (Draelos & Carin 2020): ReLU(sum_k dA_k * A_k), the gradient times the
  activation at each position, without the mean. Grad-CAM's mean assumes a head that
  averages over positions (global pooling, as in ResNet and GoogLeNet); a head that flattens
  the maps into dense layers (LeNet-5, AlexNet, VGG) weighs every position differently, and
  then HiResCAM shows what the score actually used.
* ``saliency`` (Simonyan et al. 2014): |d score / d input|, the largest over colour channels.

The class map lives on the layer's grid; :func:`upsample` places each cell at the centre of
its receptive field (from the layer's jump, the grid centred on the input) and interpolates
bilinearly between centres, so the heat map lines up with the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cnncli.errors import CnnError
from cnncli.layers.base import Node, suggest
from cnncli.viz.probe import class_gradients

METHODS = ("gradcam", "hirescam", "saliency")


@dataclass
class ClassMap:
    method: str
    layer: str | None  # None for saliency (the input)
    layer_shape: tuple[int, ...] | None
    cls: int
    label: str
    probability: float
    top: list[dict[str, Any]]
    map: np.ndarray  # >= 0, on the layer's grid (saliency: the input's)
    heat: np.ndarray  # the map at input resolution, divided by its maximum: [0, 1]
    weights: np.ndarray | None  # gradcam: a_k per channel
    box: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1 in input pixels
    share: float | None = None  # the heat map's share of its mass inside the box

    def summary(self) -> dict[str, Any]:
        peak = _argmax(self.map)
        heat_peak = _argmax(self.heat)
        return {
            "method": self.method, "layer": self.layer,
            "layer_shape": list(self.layer_shape) if self.layer_shape else None,
            "class": {"index": self.cls, "label": self.label, "probability": self.probability},
            "top": self.top, "map_shape": list(self.map.shape),
            "map": self.map.tolist(), "map_max": float(self.map.max()),
            "argmax": {"map": peak, "input": heat_peak},
            "weights": None if self.weights is None else self.weights.tolist(),
            "box": list(self.box) if self.box else None, "box_share": self.share,
        }


def _argmax(a: np.ndarray) -> list[int] | None:
    """[row, col] of the largest value (the first), or None for an all-zero map."""
    if not (a > 0).any():
        return None
    return [int(v) for v in np.unravel_index(int(a.argmax()), a.shape)]


def resolve_class(given: str | None, classes: list[str], probs: np.ndarray) -> int:
    """A class by label (first) or index; default: the predicted class."""
    if given is None:
        return int(probs.argmax())
    if given in classes:
        return classes.index(given)
    if given.lstrip("-").isdigit() and 0 <= int(given) < len(classes):
        return int(given)
    shown = ", ".join(classes[:12]) + (" ..." if len(classes) > 12 else "")
    raise CnnError(f"--class {given}: not a class label or index (0-{len(classes) - 1}) of "
                   f"this model{suggest(given, classes)}; labels: {shown}")


def parse_box(text: str, input_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """``X0,Y0,X1,Y1`` in input pixels (X1, Y1 exclusive), inside the network's input."""
    h, w = input_hw
    try:
        x0, y0, x1, y1 = (int(v) for v in text.split(","))
    except ValueError:
        raise CnnError(f"--box {text}: expected X0,Y0,X1,Y1 (four integers, pixels of the "
                       f"{w} x {h} network input)") from None
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise CnnError(f"--box {text}: must satisfy 0 <= X0 < X1 <= {w} and 0 <= Y0 < Y1 <= {h} "
                       f"(the network input is {w} x {h})")
    return x0, y0, x1, y1


def box_share(heat: np.ndarray, box: tuple[int, int, int, int]) -> float | None:
    """The share of the map's total inside the box (None when the map is all zero)."""
    total = float(heat.sum())
    if total <= 0:
        return None
    x0, y0, x1, y1 = box
    return float(heat[y0:y1, x0:x1].sum()) / total


def _centres(n_in: int, n_out: int, jump: float) -> np.ndarray:
    """For each input pixel, its position on the layer's grid (in cells, clamped)."""
    first = (n_in - 1 - (n_out - 1) * jump) / 2.0  # the grid centred on the input
    return np.clip((np.arange(n_in) - first) / jump, 0, n_out - 1)


def upsample(cam: np.ndarray, node: Node, input_hw: tuple[int, int]) -> np.ndarray:
    """``cam`` [h, w] at input resolution, each cell at its receptive field's centre."""
    h, w = cam.shape
    jh, jw = node.rf.jump if node.rf is not None else (input_hw[0] / h, input_hw[1] / w)
    uy = _centres(input_hw[0], h, float(jh))
    ux = _centres(input_hw[1], w, float(jw))
    rows = np.stack([np.interp(ux, np.arange(w), r) for r in cam])  # [h, W]
    return np.stack([np.interp(uy, np.arange(h), col) for col in rows.T], axis=1)  # [H, W]


def class_map(model: Any, x: np.ndarray, classes: list[str], node: Node | None,
              method: str = "gradcam", cls: str | None = None,
              box: tuple[int, int, int, int] | None = None, top_k: int = 3) -> ClassMap:
    """The class map of one normalised image ``x`` ``[1, C, H, W]`` for class ``cls``
    (label or index; default: the predicted class). ``node`` is the layer for
    gradcam/hirescam (ignored for saliency)."""
    from cnncli.ops.activations import forward as act_forward

    if method not in METHODS:
        raise CnnError(f"--method must be one of {', '.join(METHODS)}, not '{method}'")
    if x.shape[0] != 1:
        raise ValueError("class_map takes one image")
    path = None if method == "saliency" else node.path
    logits0 = model.forward(x, training=False, logits=True)
    model.release()
    probs, _ = act_forward("softmax", logits0.astype(np.float64))
    probs = probs[0]
    k = resolve_class(cls, classes, probs)
    a, g, dx, _ = class_gradients(model, x, path, k)
    input_hw = tuple(int(v) for v in x.shape[2:])
    weights = None
    if method == "saliency":
        cam = np.abs(np.asarray(dx[0], dtype=np.float64)).max(axis=0)
        heat = cam
    else:
        a64, g64 = np.asarray(a[0], dtype=np.float64), np.asarray(g[0], dtype=np.float64)
        if method == "gradcam":
            weights = g64.mean(axis=(1, 2))
            cam = np.maximum(np.tensordot(weights, a64, axes=1), 0.0)
        else:
            cam = np.maximum((g64 * a64).sum(axis=0), 0.0)
        heat = upsample(cam, node, input_hw)
    peak = heat.max()
    heat = heat / peak if peak > 0 else np.zeros_like(heat)
    order = np.argsort(-probs, kind="stable")[:top_k]
    top = [{"index": int(i), "label": classes[i], "probability": float(probs[i])} for i in order]
    return ClassMap(method, path, None if path is None else tuple(node.out_shape), k,
                    classes[k], float(probs[k]), top, cam, heat, weights, box,
                    None if box is None else box_share(heat, box))
