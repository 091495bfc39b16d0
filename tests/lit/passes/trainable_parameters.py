# RUN: qgraph opt --pass trainable-parameters --qconfig qat-default %s
# The graphs stay as observer insertion left them; only the parameter
# slots change (each an nn.Parameter leaf, which graph text does not show).
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


# CHECK-LABEL: === <root> : forward ===
# CHECK: FakeQuantize = prim::GetAttr[name="_observer_
# CHECK: prim::CallMethod[name="forward"](%fc
# CHECK-LABEL: === fc : forward ===
# CHECK: prim::GetAttr[name="weight"]
# CHECK-NEXT: FakeQuantize = prim::GetAttr[name="_observer_
