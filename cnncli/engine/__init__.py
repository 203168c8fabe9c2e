"""The NumPy/Numba engine: a trainable model built from any spec ``cnn shapes`` accepts.

>>> from cnncli.engine import build_model
>>> model = build_model("architectures/lenet5.yaml", seed=0)
>>> y = model.forward(x)                  # x: [N, C, H, W] float32
>>> dx = model.backward(dy)               # fills model.grads["C1.weight"], ...

Weights use PyTorch's layouts (conv OIHW, dense [out, in]) so reference data transfers
directly; activations are NCHW.
"""

from cnncli.engine.model import Model, build_model

__all__ = ["Model", "build_model"]
