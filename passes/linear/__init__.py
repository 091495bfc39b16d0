"""Linear layers into ``aten::linear``: functional calls swapped, decomposed matmuls fused.

PyTorch keeps both passes in one file too (``fuse_linear.cpp``): its fusion
ends by swapping functional linears.
"""

from passes.linear.fuse_linear import fuse_linear
from passes.linear.swap_functional_linear import swap_functional_linear

__all__ = ["fuse_linear", "swap_functional_linear"]
