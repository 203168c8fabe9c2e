"""ONNX in and out: ``cnn export`` writes a model as an ONNX graph, ``cnn shapes model.onnx``
reads one back into a spec.

``onnx`` and ``onnxruntime`` are an optional extra (``pip install -e ".[onnx]"``), imported
only by these commands: :func:`require_onnx` turns a missing package into a one-line error.
"""

from __future__ import annotations

from typing import Any

from cnncli.errors import CnnError

#: The opset we write: AveragePool-19 divides ceil-mode edge windows as our pooling does.
OPSET = 19
#: IR version 9 is what opset 19 came with, so older runtimes still load the file.
IR_VERSION = 9


def require_onnx() -> Any:
    """The ``onnx`` module, or a CnnError saying how to install it."""
    try:
        import onnx
    except ImportError:
        raise CnnError(
            "ONNX support needs the onnx package: pip install -e \".[onnx]\" "
            "(or pip install onnx onnxruntime)"
        ) from None
    return onnx


def require_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise CnnError(
            "checking an export needs onnxruntime: pip install -e \".[onnx]\" "
            "(or pip install onnxruntime)"
        ) from None
    return onnxruntime
