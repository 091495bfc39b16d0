"""legalize_quantized: make a converted model's graphs run where PyTorch's kernels or IR conventions fail.

``legalize_quantized.py`` holds the pass and its rules in order;
``tuples.py``, ``layout.py`` and ``kernels.py`` the rewrites, by what they
fix: what does not load back, what the quantized memory layout breaks,
what a kernel computes wrong.
"""

from passes.legalize.legalize_quantized import legalize_quantized

__all__ = ["legalize_quantized"]
