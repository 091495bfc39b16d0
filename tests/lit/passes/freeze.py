# RUN: qgraph opt --pass freeze --qconfig default %s
# The weights are prepacked from their attributes before freezing: the
# frozen forward reads packed params, and no weight is left to compare.
import torch
from torch import nn


class Model(nn.Module):
    EXAMPLE = (torch.randn(2, 5),)

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc(x)


# CHECK-LABEL: === <root> : forward ===
# CHECK: prim::GetAttr[name="_packed_params_0"]
# CHECK-NOT: quantized::linear_prepack
# CHECK: quantized::linear(
