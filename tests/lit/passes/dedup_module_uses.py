# RUN: qgraph opt --pass dedup-module-uses %s
# The second call of one ReLU instance goes to a copy of it, relu_0.
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.relu(x) - 1)


# CHECK-LABEL: === <root> : forward ===
# CHECK-DAG: %[[COPY:.*]] : {{.*}}ReLU = prim::GetAttr[name="relu_0"](%self)
# CHECK-DAG: %[[FIRST:.*]] : {{.*}}ReLU = prim::GetAttr[name="relu"](%self)
# CHECK: prim::CallMethod[name="forward"](%[[FIRST]], %x
# CHECK: prim::CallMethod[name="forward"](%[[COPY]],
