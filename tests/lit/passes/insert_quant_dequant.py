# RUN: qgraph opt --pass insert-quant-dequant --qconfig default %s
# Each observer becomes a quantize / dequantize pair reading qparams attributes.
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
# CHECK-NOT: _observer_
# CHECK: prim::GetAttr[name="x{{.*}}_scale_0"]
# CHECK: aten::quantize_per_tensor
# CHECK: aten::dequantize
# CHECK-LABEL: === fc : forward ===
# CHECK: aten::quantize_per_tensor
# CHECK: aten::dequantize
# CHECK: aten::linear
