"""Configurations the command-line tests name with ``--qconfig MODULE:ATTRIBUTE``."""

import torch.nn.functional as F
from torch import nn
from torch.ao.quantization import MinMaxObserver, QConfig, QConfigMapping, get_default_qconfig

# Only the convolutions are quantized.
CONV_ONLY = QConfigMapping().set_object_type(nn.Conv2d, get_default_qconfig("x86"))
# x86's weights with MinMax activations: calibrates in a fraction of the histogram observer's time.
MINMAX = QConfig(activation=MinMaxObserver.with_args(reduce_range=True), weight=get_default_qconfig("x86").weight)
# The first F.linear of ``second`` stays float; everything else is quantized.
SECOND_LINEAR_FLOAT = (
    QConfigMapping()
    .set_global(get_default_qconfig("x86"))
    .set_module_name_object_type_order("second", F.linear, 0, None)
)
