# RUN: qgraph opt --pass unshare-op-qconfig-types --qconfig helpers.cli_qconfigs:SECOND_LINEAR_FLOAT %s
# An op entry for an op the clean-up made (a matmul fused into aten::linear): the instance it
# names gets a class type of its own, the other keeps the shared one.
import torch
from torch import nn


class MatmulLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 4))

    def forward(self, x):
        return torch.matmul(x, self.weight.t())


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = MatmulLinear()
        self.second = MatmulLinear()

    def forward(self, x):
        return self.second(self.first(x))


# CHECK-LABEL: === <root> : forward ===
# CHECK: %second : [[SECOND:[^ ]*]] = prim::GetAttr[name="second"]
# CHECK-NOT: [[SECOND]] = prim::GetAttr[name="first"]
# CHECK: prim::CallMethod[name="forward"](%first
# CHECK-LABEL: === first : forward ===
# CHECK: aten::linear
# CHECK-LABEL: === second : forward ===
# CHECK: aten::linear
