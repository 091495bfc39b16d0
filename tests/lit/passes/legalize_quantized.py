# RUN: qgraph opt --pass legalize-quantized --qconfig default %s
# A tuple of quantized outputs is dequantized per element, so the model loads back.
import torch
from torch import nn


class Model(nn.Module):
    EXAMPLE = (torch.randn(1, 3, 6, 6),)

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3)
        self.b = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.a(x), self.b(x)


# CHECK-LABEL: === <root> : forward ===
# CHECK: %[[A:.*]] : Tensor = aten::dequantize
# CHECK: %[[B:.*]] : Tensor = aten::dequantize
# CHECK: prim::TupleConstruct(%[[A]], %[[B]])
