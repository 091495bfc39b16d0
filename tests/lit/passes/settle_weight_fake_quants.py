# RUN: qgraph opt --pass settle-weight-fake-quants --qconfig qat %s
# The graphs stay as they are: the weight fake-quant runs once more on the
# final weight and the weight is clamped to its range (values, not graph).
import torch
from torch import nn


class Model(nn.Module):
    QAT = True
    EXAMPLE = (torch.randn(2, 4),)

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x)


# CHECK-LABEL: === fc : forward ===
# CHECK: %weight{{.*}} = prim::GetAttr[name="weight"]
# CHECK: prim::CallMethod[name="forward"](%_observer_{{[0-9]+}}, %weight
# CHECK: aten::linear
