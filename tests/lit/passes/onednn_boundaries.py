# RUN: qgraph opt --lowering onednn --qconfig onednn --pass onednn-boundaries %s
# The model input is quantized in arithmetic, the float output comes straight from the linear.
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
# CHECK-NOT: aten::quantize_per_tensor
# CHECK: aten::round_
# CHECK: aten::clamp_
# CHECK: onednn::qconv2d_pointwise
# CHECK: %[[OUT:.+]] : Tensor = onednn::qlinear_pointwise
# CHECK-NOT: aten::dequantize
# CHECK: return (%[[OUT]])
