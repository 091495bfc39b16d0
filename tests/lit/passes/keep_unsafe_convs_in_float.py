# RUN: qgraph opt --pass keep-unsafe-convs-in-float --qconfig fbgemm %s
# A grouped conv on fbgemm's broken groupwise path (12 channels, 2 per group)
# is tagged to stay float, standing for quantized::conv2d; the stem conv is not.
import torch
from torch import nn


class Model(nn.Module):
    EXAMPLE = (torch.randn(1, 3, 6, 6),)

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 1)
        self.grouped = nn.Conv2d(12, 12, 3, padding=1, groups=6)

    def forward(self, x):
        return self.grouped(self.stem(x))


# CHECK-LABEL: === <root> : forward ===
# CHECK: aten::conv2d(
# CHECK: aten::conv2d[qgraph_float_category="kept in float by a safety rule"
# CHECK-SAME: 2 channels per group and 12 channels
# CHECK-SAME: qgraph_float_stands_for="quantized::conv2d"
