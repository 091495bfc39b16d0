# RUN: qgraph opt --pass insert-observers --qconfig default %s
# The input and the relu output are observed in the model's graph (observation
# passes the conv by, to the relu), the weight in the conv's.
import torch
from torch import nn


class Model(nn.Module):
    EXAMPLE = (torch.randn(1, 3, 6, 6),)

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.relu = nn.ReLU()

    def forward(self, x):
        return torch.flatten(self.relu(self.conv(x)), 1)


# CHECK-LABEL: === <root> : forward ===
# CHECK: prim::GetAttr[name="_observer_{{[0-9]+}}"]
# CHECK: prim::CallMethod[name="forward"](%conv
# CHECK: prim::CallMethod[name="forward"](%relu
# CHECK: prim::GetAttr[name="_observer_
# CHECK: aten::flatten
# CHECK-LABEL: === conv : forward ===
# CHECK: prim::GetAttr[name="weight"]
# CHECK-NEXT: prim::GetAttr[name="_observer_
