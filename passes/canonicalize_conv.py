"""Replace traced ``aten::_convolution`` with the specific conv op.

Tracing an ``nn.Conv*d`` / ``nn.ConvTranspose*d`` records the internal
``aten::_convolution`` (13 arguments; 12 in graphs saved by old releases),
while quantization patterns speak of ``aten::conv{1,2,3}d`` and
``aten::conv_transpose{1,2,3}d``. The op is chosen by two facts the trace
froze into constants: ``transposed``, and the spatial rank ``d``, read as
the length of ``stride``, ``padding``, ``dilation`` and ``output_padding``
(all four must have length ``d``)::

    %r = aten::_convolution(%x, %w, %b, [2, 2], [1, 1], [1, 1], False, [0, 0],
                            1, False, False, True, True)

becomes::

    %r = aten::conv2d(%x, %w, %b, [2, 2], [1, 1], [1, 1], 1)

and a transposed one ``aten::conv_transpose2d(%x, %w, %b, %stride, %padding,
%output_padding, %groups, %dilation)``. The ``benchmark``, ``deterministic``,
``cudnn_enabled`` and ``allow_tf32`` flags only pick a backend and are
dropped; so is ``output_padding`` of a plain conv, which ``_convolution``
ignores when ``transposed`` is false.

Tracing builds those int lists with ``prim::ListConstruct``; like the
reference, the pass first runs constant propagation over the whole graph so
that they become ``int[]`` constants (this also folds any other constant
expression, which keeps the graph identical to the reference's). A
``_convolution`` whose lists or ``transposed`` flag are still not constants
afterwards is left as it is.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from qgraph.ir import Graph
from qgraph.pattern import Match, Rewrite, rewrite

__all__ = ["CANONICALIZE_CONV", "canonicalize_conv"]

_SHAPE_ARGS = ("stride", "padding", "dilation", "output_padding")


def _is_conv(spatial_dims: int, transposed: bool) -> Callable[[Match], bool]:
    def check(match: Match) -> bool:
        if match.constant("transposed", default=None) is not transposed:
            return False
        for name in _SHAPE_ARGS:
            value = match.constant(name, default=None)
            if not isinstance(value, list) or len(value) != spatial_dims:
                return False
        return True

    check.__name__ = f"is_conv(dims={spatial_dims}, transposed={transposed})"
    return check


# Graphs saved before ``allow_tf32`` existed call the 12-argument overload.
_FLAGS = {
    "": "%benchmark, %deterministic, %cudnn_enabled",
    "_with_tf32_flag": "%benchmark, %deterministic, %cudnn_enabled, %allow_tf32",
}

_INPUTS = "%a, %w, %b, %stride, %padding, %dilation, %transposed, %output_padding, %groups, {flags}"

_ARGUMENTS = {
    False: "%a, %w, %b, %stride, %padding, %dilation, %groups",
    True: "%a, %w, %b, %stride, %padding, %output_padding, %groups, %dilation",
}


def _rewrite(op: str, spatial_dims: int, transposed: bool, suffix: str, flags: str) -> Rewrite:
    inputs = _INPUTS.format(flags=flags)
    return Rewrite(
        name=f"_convolution_to_{op}{suffix}",
        pattern=f"""graph({inputs}):
            %r = aten::_convolution({inputs})
            return (%r)""",
        replacement=f"""graph({inputs}):
            %r = aten::{op}({_ARGUMENTS[transposed]})
            return (%r)""",
        filters=(_is_conv(spatial_dims, transposed),),
    )


# The filters are disjoint, so the order only follows the reference's.
CANONICALIZE_CONV = [
    _rewrite(op, spatial_dims, transposed, suffix, flags)
    for op, spatial_dims, transposed in (
        ("conv1d", 1, False),
        ("conv2d", 2, False),
        ("conv3d", 3, False),
        ("conv_transpose1d", 1, True),
        ("conv_transpose2d", 2, True),
        ("conv_transpose3d", 3, True),
    )
    for suffix, flags in reversed(_FLAGS.items())
]


def canonicalize_conv(graph: Graph) -> int:
    """Rewrite ``aten::_convolution`` in ``graph`` into ``aten::conv*d`` / ``aten::conv_transpose*d``.

    Propagates constants first (see the module docstring), works in place and
    returns the number of convolutions rewritten.
    """
    if not isinstance(graph, Graph):
        raise TypeError(f"canonicalize_conv expects a torch._C.Graph, got {type(graph).__name__}")
    torch._C._jit_pass_constant_propagation(graph)
    return rewrite(graph, CANONICALIZE_CONV)
