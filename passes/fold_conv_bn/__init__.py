"""fold_conv_bn: eval-mode BatchNorm submodule calls folded into the convolution that feeds them."""

from passes.fold_conv_bn.batch_norm import BN_TRAINING
from passes.fold_conv_bn.fold_conv_bn import fold_conv_bn, fold_conv_bn_in_place

__all__ = ["fold_conv_bn", "fold_conv_bn_in_place", "BN_TRAINING"]
