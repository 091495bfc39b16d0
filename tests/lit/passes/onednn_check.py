# RUN: qgraph opt --lowering onednn --qconfig onednn --pass onednn-check %s
# The ops exist and compute exactly here: the graph is left as it was.
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
# CHECK: aten::quantize_per_tensor
# CHECK: aten::conv2d
# CHECK: aten::linear
