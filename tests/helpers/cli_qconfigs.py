"""Configurations the command-line tests name with ``--qconfig MODULE:ATTRIBUTE``."""

from torch import nn
from torch.ao.quantization import QConfigMapping, get_default_qconfig

# Only the convolutions are quantized.
CONV_ONLY = QConfigMapping().set_object_type(nn.Conv2d, get_default_qconfig("x86"))
