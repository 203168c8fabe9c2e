"""Residual blocks and LeNet-5 end to end against PyTorch float64 reference tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cnncli.engine import build_model
from cnncli.optim import make_optimizer
from cnncli.train.loop import loss_and_grad, train_step

GOLDEN = Path(__file__).parent.parent / "golden"
ATOL = 1e-8


def _load(name: str):
    return np.load(GOLDEN / name, allow_pickle=False)


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("residual_*.npz")), ids=lambda p: p.stem)
def test_residual_block(path):
    z = _load(path.name)
    n, c, h, w = z["x"].shape
    k = z["w1"].shape[0]
    s = int(z["stride"])
    shortcut = []
    if "ws" in z.files:
        shortcut = [{"conv": {"name": "proj", "filters": k, "kernel": 1, "stride": s}}]
    spec = {"name": "res", "input": [h, w, c], "layers": [{"residual": {
        "name": "block", "scale": float(z["lam"]), "shortcut": shortcut,
        "body": [{"conv": {"name": "c1", "filters": k, "kernel": 3, "stride": s, "padding": 1,
                           "activation": "relu"}},
                 {"conv": {"name": "c2", "filters": k, "kernel": 3, "padding": 1}}]}}]}
    model = build_model(spec, dtype=np.float64)
    names = {"block.c1.weight": "w1", "block.c1.bias": "b1", "block.c2.weight": "w2",
             "block.c2.bias": "b2"}
    if shortcut:
        names |= {"block.shortcut.proj.weight": "ws", "block.shortcut.proj.bias": "bs"}
    for ours, theirs in names.items():
        model.set(ours, z[theirs])
    y = model.forward(z["x"], training=True)
    np.testing.assert_allclose(y, z["y"], rtol=0, atol=ATOL)
    dx = model.backward(z["dy"])
    np.testing.assert_allclose(dx, z["dx"], rtol=0, atol=ATOL)
    for ours, theirs in names.items():
        np.testing.assert_allclose(model.grads[ours], z["d" + theirs], rtol=0, atol=ATOL,
                                   err_msg=ours)


LENET = {"name": "LeNet-5 (golden)", "input": [32, 32, 1], "layers": [
    {"conv": {"name": "conv1", "filters": 6, "kernel": 5, "activation": "tanh"}},
    {"pool": {"type": "avg", "size": 2}},
    {"conv": {"name": "conv2", "filters": 16, "kernel": 5, "activation": "tanh"}},
    {"pool": {"type": "avg", "size": 2}},
    {"conv": {"name": "conv3", "filters": 120, "kernel": 5, "activation": "tanh"}},
    "flatten",
    {"dense": {"name": "fc1", "units": 84, "activation": "tanh"}},
    {"dense": {"name": "fc2", "units": 10}},
]}
LENET_PARAMS = ["conv1", "conv2", "conv3", "fc1", "fc2"]


def _lenet(z):
    model = build_model(LENET, dtype=np.float64)
    for layer in LENET_PARAMS:
        model.set(f"{layer}.weight", z[f"{layer}_w"])
        model.set(f"{layer}.bias", z[f"{layer}_b"])
    return model


def test_lenet5_forward_loss_and_gradients():
    z = _load("lenet5_mnist.npz")
    model = _lenet(z)
    logits = model.forward(z["x"], training=True, logits=True)
    np.testing.assert_allclose(logits, z["logits"], rtol=0, atol=ATOL)
    loss, dlogits, _ = loss_and_grad("cross_entropy", logits, z["labels"])
    assert abs(loss - float(z["loss"])) < ATOL
    np.testing.assert_allclose(dlogits, z["dlogits"], rtol=0, atol=ATOL)
    dx = model.backward(dlogits)
    np.testing.assert_allclose(dx, z["dx"], rtol=0, atol=ATOL)
    for layer in LENET_PARAMS:
        for p, q in (("weight", "w"), ("bias", "b")):
            np.testing.assert_allclose(model.grads[f"{layer}.{p}"], z[f"d{layer}_{q}"],
                                       rtol=0, atol=ATOL, err_msg=f"{layer}.{p}")


def test_lenet5_three_sgd_steps_through_the_training_step():
    z = _load("lenet5_mnist.npz")
    model = _lenet(z)
    opt = make_optimizer("sgd", lr=float(z["lr"]), momentum=float(z["momentum"]),
                         dampening=float(z["dampening"]), weight_decay=float(z["weight_decay"]),
                         nesterov=bool(int(z["nesterov"])))
    losses = []
    for step in range(int(z["num_steps"])):
        loss, _ = train_step(model, opt, z["x"], z["labels"])
        losses.append(loss)
        for layer in LENET_PARAMS:
            for p, q in (("weight", "w"), ("bias", "b")):
                np.testing.assert_allclose(model.get(f"{layer}.{p}"),
                                           z[f"{layer}_{q}_steps"][step], rtol=0, atol=ATOL)
    out = model.forward(z["x"], training=False, logits=True)
    losses.append(loss_and_grad("cross_entropy", out, z["labels"])[0])
    np.testing.assert_allclose(losses, z["loss_steps"], rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", ["dense.npz", "dense_flatten.npz"])
def test_dense_layer_through_the_model(name):
    """The dense layer itself (with flatten before it where the input is NCHW)."""
    z = _load(name)
    x = z["x"]
    units = z["w"].shape[0]
    if x.ndim == 4:
        _, c, h, w = x.shape
        layers = ["flatten", {"dense": {"name": "fc", "units": units}}]
        shape = [h, w, c]
    else:
        layers = [{"dense": {"name": "fc", "units": units}}]
        shape = [1, 1, x.shape[1]]
        x = x.reshape(x.shape[0], x.shape[1], 1, 1)
    model = build_model({"name": "d", "input": shape, "layers": layers}, dtype=np.float64)
    model.set("fc.weight", z["w"])
    model.set("fc.bias", z["b"])
    y = model.forward(x, training=True)
    np.testing.assert_allclose(y, z["y"], rtol=0, atol=ATOL)
    dx = model.backward(z["dy"])
    np.testing.assert_allclose(dx.reshape(z["dx"].shape), z["dx"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(model.grads["fc.weight"], z["dw"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(model.grads["fc.bias"], z["db"], rtol=0, atol=ATOL)
