"""``view`` and ``mean`` on quantized values that the quantized memory layout breaks.

Quantized conv, batch/group/instance/layer norm, pooling and 4-/5-D cat
leave their output channels-last:

- ``aten::view`` (``view_as``) of such a value raises "view size is not
  compatible with input tensor's size and stride". It becomes
  ``aten::reshape`` (``reshape_as``), which is the same view wherever
  ``view`` works; float values keep ``view`` and its aliasing.
- ``aten::mean`` that drops the reduced dims of a channels-last 1x1 map
  raises "required rank 4 tensor to use channels_last format". The mean
  keeps the dims and a squeeze drops them (the same kernel on the same
  data, so the same bits wherever the original runs)::

      %m = aten::mean(%x_q, %dims, %false, %dtype)
    becomes
      %k = aten::mean(%x_q, %dims, %true, %dtype)
      %m = aten::squeeze(%k, %dims)

  ``aten::mean(%x_q, %dtype)`` (all dims) becomes a keepdim mean over
  every dim followed by a reshape to a scalar.

Both tables are built for one graph: their filters read which values of it
are quantized (``qgraph.quant.quantized_values``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch

from qgraph.ir import Graph, Node, Value, insert_scripted
from qgraph.pattern import Match, Rewrite

__all__ = ["view_rewrites", "mean_rewrites"]


def _is_quantized(name: str, quantized: set[Value]) -> Callable[[Match], bool]:
    def check(match: Match) -> bool:
        return match[name] in quantized

    check.__name__ = f"is_quantized({name})"
    return check


def _is_int_list(name: str) -> Callable[[Match], bool]:
    def check(match: Match) -> bool:
        type_ = match[name].type()
        return type_.kind() == "ListType" and type_.getElementType().kind() == "IntType"

    check.__name__ = f"is_int_list({name})"
    return check


def _is_false(match: Match) -> bool:
    return match.constant("keepdim", default=None) is False


def _mean_over_all_dims(x: torch.Tensor, dtype: Optional[torch.dtype]) -> torch.Tensor:
    dims = [d for d in range(x.dim())]
    return torch.mean(x, dims, True, dtype=dtype).reshape([])


def _mean_all_keepdim(graph: Graph, match: Match, before: Node) -> list[Value]:
    return insert_scripted(graph, _mean_over_all_dims, [match["x"], match["dtype"]], before=before)


def view_rewrites(quantized: set[Value]) -> list[Rewrite]:
    """``view`` / ``view_as`` of a value in ``quantized`` to ``reshape`` / ``reshape_as``."""
    x_is_quantized = _is_quantized("x", quantized)
    return [
        Rewrite(
            name="view_of_quantized_to_reshape",
            pattern="""graph(%x, %size):
                %y = aten::view(%x, %size)
                return (%y)""",
            replacement="""graph(%x, %size):
                %y = aten::reshape(%x, %size)
                return (%y)""",
            filters=(x_is_quantized, _is_int_list("size")),
        ),
        Rewrite(
            name="view_as_of_quantized_to_reshape_as",
            pattern="""graph(%x, %other):
                %y = aten::view_as(%x, %other)
                return (%y)""",
            replacement="""graph(%x, %other):
                %y = aten::reshape_as(%x, %other)
                return (%y)""",
            filters=(x_is_quantized,),
        ),
    ]


def mean_rewrites(quantized: set[Value]) -> list[Rewrite]:
    """A ``mean`` of a value in ``quantized`` that drops dims: keep them, then squeeze or reshape."""
    x_is_quantized = _is_quantized("x", quantized)
    return [
        Rewrite(
            name="quantized_mean_keepdim_then_squeeze",
            pattern="""graph(%x, %dims, %keepdim, %dtype):
                %y = aten::mean(%x, %dims, %keepdim, %dtype)
                return (%y)""",
            replacement="""graph(%x, %dims, %keepdim, %dtype):
                %true : bool = prim::Constant[value=1]()
                %kept = aten::mean(%x, %dims, %true, %dtype)
                %y = aten::squeeze(%kept, %dims)
                return (%y)""",
            filters=(x_is_quantized, _is_int_list("dims"), _is_false),
        ),
        Rewrite(
            name="quantized_mean_all_keepdim_then_reshape",
            pattern="""graph(%x, %dtype):
                %y = aten::mean(%x, %dtype)
                return (%y)""",
            replacement=_mean_all_keepdim,
            filters=(x_is_quantized,),
        ),
    ]
