# RUN: qgraph opt --pass fold-prepacking --qconfig default %s
# With no prepack left after freezing, folding finds nothing: one packed
# params attribute per linear, no prepack op.
import torch
from torch import nn


class Model(nn.Module):
    EXAMPLE = (torch.randn(2, 5),)

    def __init__(self):
        super().__init__()
        self.first = nn.Linear(5, 4)
        self.second = nn.Linear(4, 3)

    def forward(self, x):
        return self.second(self.first(x))


# CHECK-LABEL: === <root> : forward ===
# CHECK-NOT: quantized::linear_prepack
# CHECK: prim::GetAttr[name="_packed_params_0"]
# CHECK: quantized::linear(
# CHECK: prim::GetAttr[name="_packed_params_1"]
# CHECK: quantized::linear(
