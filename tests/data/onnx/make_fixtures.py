"""Make the PyTorch-exported ONNX fixtures of tests/onnx (run by hand; the tests never need torch).

    python tests/data/onnx/make_fixtures.py

* ``lenet5_torch.onnx``: architectures/lenet5_modern.yaml as a torch module that flattens
  with ``x.view(x.size(0), -1)``, exported with a dynamic batch, so the graph computes the
  Reshape target from the input's shape (Shape -> Gather -> Unsqueeze -> Concat).
* ``tiny_resnet_torch.onnx``: a torchvision-style stem and two BasicBlocks (the first with
  a 1x1 stride-2 ``downsample`` projection), global average pooling, ``torch.flatten`` and a
  linear classifier, exported with the batchnorms kept (``do_constant_folding=False``
  leaves them unfused). tiny_resnet.yaml beside it is the same network written by hand.

Both use the legacy TorchScript exporter (``dynamo=False``), whose node names carry the
module paths (``/layer1/layer1.0/conv1/Conv``) that ``cnn shapes`` turns into layer names.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).parent


class LeNet5(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.C1 = nn.Conv2d(1, 6, 5, padding=2)
        self.S2 = nn.MaxPool2d(2)
        self.C3 = nn.Conv2d(6, 16, 5)
        self.S4 = nn.MaxPool2d(2)
        self.C5 = nn.Conv2d(16, 120, 5)
        self.F6 = nn.Linear(120, 84)
        self.output = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.S2(torch.relu(self.C1(x)))
        x = self.S4(torch.relu(self.C3(x)))
        x = torch.relu(self.C5(x))
        x = x.view(x.size(0), -1)
        return self.output(torch.relu(self.F6(x)))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                            nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(8, 16, 2), BasicBlock(16, 16, 1))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.avgpool(self.layer1(x))
        return self.fc(torch.flatten(x, 1))


def export(module: nn.Module, shape: tuple[int, ...], name: str, **kw) -> None:
    torch.manual_seed(0)
    module.eval()
    path = HERE / name
    torch.onnx.export(module, (torch.zeros(1, *shape),), str(path), dynamo=False,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, opset_version=17,
                      **kw)
    print(f"wrote {path} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    torch.manual_seed(0)
    export(LeNet5(), (1, 28, 28), "lenet5_torch.onnx")
    export(TinyResNet(), (3, 16, 16), "tiny_resnet_torch.onnx", do_constant_folding=False)
