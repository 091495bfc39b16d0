"""Small models for the quantization-aware-training tests, each in a graph-mode and an eager-QAT spelling.

``Net`` (scripted, plain ``+`` and ``F.relu``) and ``EagerNet`` (QuantStub,
``FloatFunctional.add_relu``, fused with ``fuse_modules_qat``) have the same
parameter and buffer names, so one ``state_dict`` gives both the same float
weights: a Conv-BatchNorm-ReLU stem, a depthwise Conv-BatchNorm-ReLU and a
pointwise Conv-BatchNorm with a residual add and relu, a conv without
BatchNorm, max pooling and a linear.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.ao.quantization as tq
import torch.nn.functional as F
from torch import nn

__all__ = ["Net", "EagerNet", "float_state", "eager_qat", "graph_qat", "train_step", "fake_quant_scales", "INPUT"]

INPUT = (1, 8, 8)
_CHANNELS, _CLASSES = 4, 3


class Block(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.dw_bn = nn.BatchNorm2d(c)
        self.pw = nn.Conv2d(c, c, 1, bias=False)
        self.pw_bn = nn.BatchNorm2d(c)

    def forward(self, x):
        y = F.relu(self.dw_bn(self.dw(x)))
        y = self.pw_bn(self.pw(y))
        return F.relu(y + x)


class Net(nn.Module):
    def __init__(self, c: int = _CHANNELS):
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.stem_bn = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        self.b1 = Block(c)
        self.head = nn.Conv2d(c, 2 * c, 1)
        self.fc = nn.Linear(2 * c * 16, _CLASSES)

    def forward(self, x):
        x = self.relu(self.stem_bn(self.stem(x)))
        x = self.b1(x)
        x = F.max_pool2d(self.head(x), 2)
        return self.fc(torch.flatten(x, 1))


class EagerBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.dw_bn = nn.BatchNorm2d(c)
        self.dw_relu = nn.ReLU()
        self.pw = nn.Conv2d(c, c, 1, bias=False)
        self.pw_bn = nn.BatchNorm2d(c)
        self.add = nn.quantized.FloatFunctional()

    def forward(self, x):
        y = self.dw_relu(self.dw_bn(self.dw(x)))
        y = self.pw_bn(self.pw(y))
        return self.add.add_relu(y, x)


class EagerNet(nn.Module):
    FUSE = [["stem", "stem_bn", "relu"], ["b1.dw", "b1.dw_bn", "b1.dw_relu"], ["b1.pw", "b1.pw_bn"]]

    def __init__(self, c: int = _CHANNELS):
        super().__init__()
        self.quant = tq.QuantStub()
        self.dequant = tq.DeQuantStub()
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.stem_bn = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        self.b1 = EagerBlock(c)
        self.head = nn.Conv2d(c, 2 * c, 1)
        self.fc = nn.Linear(2 * c * 16, _CLASSES)

    def forward(self, x):
        x = self.relu(self.stem_bn(self.stem(self.quant(x))))
        x = self.b1(x)
        x = F.max_pool2d(self.head(x), 2)
        return self.dequant(self.fc(torch.flatten(x, 1)))


def float_state(seed: int = 0) -> dict:
    """Float weights with BatchNorm affine parameters away from their initial ones and one of them."""
    torch.manual_seed(seed)
    net = Net()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return copy.deepcopy(net.state_dict())


def eager_qat(state: dict, qconfig: Any) -> nn.Module:
    model = EagerNet()
    model.load_state_dict(state)
    model = tq.fuse_modules_qat(model.train(), EagerNet.FUSE)
    model.qconfig = qconfig
    return tq.prepare_qat(model)


def graph_qat(state: dict, qconfig: Any) -> torch.jit.ScriptModule:
    import qgraph

    model = Net()
    model.load_state_dict(state)
    return qgraph.prepare_qat_jit(torch.jit.script(model.train()), {"": qconfig})


def train_step(model: Any, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    optimizer.zero_grad()
    out = model(x)
    F.cross_entropy(out, y).backward()
    optimizer.step()
    return out.detach()


def fake_quant_scales(model: Any) -> list[float]:
    """The scale of every fake-quant of a model, sorted (eager and graph mode name them differently)."""
    from qgraph.ir import as_cpp, named_modules
    from qgraph.quant.qat_modules import is_fake_quant

    if isinstance(model, torch.jit.ScriptModule):
        scales = [m.getattr("scale") for _, m in named_modules(as_cpp(model)) if is_fake_quant(m)]
    else:
        scales = [m.scale for m in model.modules() if isinstance(m, tq.FakeQuantizeBase)]
    return sorted(v for s in scales for v in s.flatten().tolist())
