# RUN: qgraph opt --pass quantize-rnn --dynamic --qconfig dynamic %s
# An LSTM runs aten::quantized_lstm over packed cell params stored on the LSTM.
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 8)

    def forward(self, x):
        out, _ = self.lstm(x)
        return out


# CHECK-LABEL: === lstm : forward__0 ===
# CHECK: prim::GetAttr[name="_packed_cell_params_0"]
# CHECK: aten::quantized_lstm
# CHECK-NOT: aten::lstm(
