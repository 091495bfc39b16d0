# RUN: qgraph opt --pass unshare-qconfig-types --qconfig default --qconfig second=none %s
# Two instances of one class with different qconfigs get class types of their own.
from torch import nn


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.conv(x)


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = Block()
        self.second = Block()

    def forward(self, x):
        return self.second(self.first(x))


# CHECK-LABEL: === <root> : forward ===
# CHECK: %second : [[SECOND:[^ ]*]] = prim::GetAttr[name="second"]
# CHECK-NOT: [[SECOND]] = prim::GetAttr[name="first"]
# CHECK: prim::CallMethod[name="forward"](%first
