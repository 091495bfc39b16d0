# RUN: qgraph opt --pass swap-conv-bn-qat --qconfig qat %s
# The BatchNorm call goes; the conv's slot holds a QAT ConvBn2d that trains
# with batch statistics and fake-quantizes its BN-scaled weight.
import torch
from torch import nn


class Model(nn.Module):
    QAT = True
    EXAMPLE = (torch.randn(2, 3, 6, 6),)

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


# CHECK-LABEL: === <root> : forward ===
# CHECK: ConvBn2d = prim::GetAttr[name="conv"]
# CHECK-NEXT: prim::CallMethod[name="forward"](%conv
# CHECK-NOT: name="bn"
# CHECK: aten::relu
# CHECK-LABEL: === conv : forward ===
# CHECK: aten::sqrt
# CHECK: prim::CallMethod[name="forward"](%weight_fake_quant
# CHECK: prim::CallMethod[name="_batch_norm"]
