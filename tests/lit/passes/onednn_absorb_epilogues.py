# RUN: qgraph opt --lowering onednn --qconfig onednn --pass onednn-absorb-epilogues %s
# The residual add and its relu move into the conv's island: no requantization between them.
import torch
from torch import nn


class Model(nn.Module):
    EXAMPLE = (torch.randn(2, 4, 8, 8),)

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = torch.relu(self.conv(x) + x)
        return self.fc(torch.flatten(self.pool(y), 1))


# CHECK-LABEL: === <root> : forward ===
# CHECK: %[[CONV:[0-9]+]] : Tensor = aten::conv2d
# CHECK-NOT: aten::quantize_per_tensor
# CHECK: aten::add(%[[CONV]]
# CHECK-NEXT: aten::relu
# CHECK-NEXT: aten::quantize_per_tensor
