# RUN: qgraph opt --pass place-fake-quants --qconfig qat %s
# Fake-quants sit where prepare_jit's observers would: the input, the
# Conv-BatchNorm's relu output (not the value in between) and the linear
# output in the model's graph; the linear's weight inside the linear; the
# ConvBn2d keeps its own weight fake-quant. (On the CPU nothing moves.)
import torch
from torch import nn


class Model(nn.Module):
    QAT = True
    EXAMPLE = (torch.randn(2, 3, 6, 6),)

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        return self.fc(y.mean([2, 3]))


# CHECK-LABEL: === <root> : forward ===
# CHECK: prim::CallMethod[name="forward"](%_observer_{{[0-9]+}}, %x
# CHECK: prim::CallMethod[name="forward"](%conv
# CHECK-NEXT: aten::relu
# CHECK-NEXT: FusedMovingAvgObsFakeQuantize = prim::GetAttr[name="_observer_
# CHECK: prim::CallMethod[name="forward"](%fc
# CHECK-NEXT: prim::GetAttr[name="_observer_
# CHECK-LABEL: === conv : forward ===
# CHECK-NOT: _observer_
# CHECK: prim::CallMethod[name="forward"](%weight_fake_quant
# CHECK-LABEL: === fc : forward ===
# CHECK: prim::GetAttr[name="weight"]
# CHECK-NEXT: prim::GetAttr[name="_observer_
# CHECK: aten::linear
