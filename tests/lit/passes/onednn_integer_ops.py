# RUN: qgraph opt --lowering onednn --qconfig onednn --pass onednn-integer-ops %s
# The global average pool runs on the integers, rounded once into its output's.
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
# CHECK-NOT: aten::adaptive_avg_pool2d
# CHECK: aten::permute(%y.2.quant
# CHECK: aten::mean
# CHECK: aten::round_
# CHECK-NOT: aten::adaptive_avg_pool2d
