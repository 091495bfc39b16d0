# RUN: qgraph opt --lowering onednn --qconfig onednn --pass onednn-module-state %s
# State methods that leave the packed weights out of a saved model and unset them on load.
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


# CHECK-LABEL: === <root> : __getstate__ ===
# CHECK: prim::GetAttr[name="_qgraph_lowering"]
# CHECK-NOT: _onednn_packed
# CHECK-LABEL: === <root> : __setstate__ ===
# CHECK: prim::SetAttr[name="_qgraph_lowering"]
# CHECK: prim::SetAttr[name="_onednn_packed_0"]
# CHECK: prim::SetAttr[name="_onednn_packed_1"]
