# RUN: qgraph opt --pass swap-functional-linear %s
# A call of a function named linear is aten::linear.
import torch
import torch.nn.functional as F
from torch import nn


def linear(x, weight, bias):
    return F.linear(x, weight, bias)


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 2))
        self.bias = nn.Parameter(torch.randn(3))

    def forward(self, x):
        return linear(x, self.weight, self.bias)


# CHECK-LABEL: === <root> : forward ===
# CHECK-NOT: prim::CallFunction
# CHECK: aten::linear
