# RUN: qgraph opt --pass fold-conv-bn %s
# The BatchNorm call goes; the conv's weight and bias absorb it.
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x))


# CHECK-LABEL: === <root> : forward ===
# CHECK: prim::CallMethod[name="forward"](%conv
# CHECK-NOT: prim::CallMethod
# CHECK-LABEL: === conv : forward ===
# CHECK: prim::GetAttr[name="bias"]
# CHECK: aten::conv2d
