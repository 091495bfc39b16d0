# RUN: qgraph opt --pass fold-trained-conv-bn --qconfig qat %s
# After one training-mode batch: the Conv-BatchNorm call becomes a call of
# folded_forward, a plain conv whose weight goes through the fake-quant,
# now also known under an observer name for convert.
import torch
from torch import nn


class Model(nn.Module):
    QAT = True
    EXAMPLE = (torch.randn(2, 3, 6, 6),)

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x))


# CHECK-LABEL: === <root> : forward ===
# CHECK: prim::CallMethod[name="folded_forward"](%conv
# CHECK-LABEL: === conv : folded_forward ===
# CHECK: %[[FQ:.+]] : {{.*}}FakeQuantize = prim::GetAttr[name="_observer_weight_fake_quant"]
# CHECK-NEXT: %weight : Tensor = prim::GetAttr[name="weight"]
# CHECK-NEXT: prim::CallMethod[name="forward"](%[[FQ]], %weight)
# CHECK-NOT: batch_norm
# CHECK: prim::CallMethod[name="_conv"]
# CHECK-LABEL: === conv : freeze_bn_stats ===
