"""qat: quantization-aware training, the graph edits of prepare (Conv-BatchNorm swap) and of convert.

``swap_conv_bn.py`` turns Conv-BatchNorm pairs into trainable QAT
``ConvBn{n}d`` modules; ``fold_trained_conv_bn.py`` folds them back for
convert with the trained statistics; ``settle_weight_fake_quants.py`` brings each
weight fake-quant up to date with the final weight and clamps the weight to
its range, as eager convert does.
"""

from passes.qat.fold_trained_conv_bn import fold_trained_conv_bn
from passes.qat.settle_weight_fake_quants import settle_weight_fake_quants
from passes.qat.swap_conv_bn import swap_conv_bn_for_qat

__all__ = ["swap_conv_bn_for_qat", "fold_trained_conv_bn", "settle_weight_fake_quants"]
