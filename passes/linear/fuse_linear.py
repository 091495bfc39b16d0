"""Fuse decomposed linear layers back into ``aten::linear``.

Older code, hand-written layers and some traces spell a linear layer as a
matrix product with a transposed weight. Quantization only knows
``aten::linear``, so these forms are folded into it:

    %wt = aten::t(%w)
    %y = aten::addmm(%b, %x, %wt, 1, 1)            ->  %y = aten::linear(%x, %w, %b)

    %wt = aten::t(%w)
    %m = aten::matmul(%x, %wt)
    %y = aten::add_(%m, %b, 1)                      ->  %y = aten::linear(%x, %w, %b)

    %wt = aten::t(%w)
    %y = aten::matmul(%x, %wt)                      ->  %none : Tensor? = prim::Constant()
                                                        %y = aten::linear(%x, %w, %none)

Rules, all the reference's:

- The weight must come from ``aten::t``; a matmul with any other weight is
  left alone (``aten::t`` only accepts tensors of at most two dimensions, so
  a 3-D weight never qualifies). The input may have any rank ``matmul``
  accepts (1-D, 2-D, batched); ``addmm`` itself only takes 2-D operands.
- ``alpha`` and ``beta`` must be the integer constant 1 (``1.0`` does not
  count, as in the reference).
- Only the in-place ``add_`` is folded as a bias, and only when the matmul
  result has no other use. Scripted ``x @ w.t() + b`` therefore becomes
  ``linear(x, w, None)`` followed by ``aten::add``, exactly as in the
  reference, so the quantized model keeps the reference's bits. Pass
  ``fuse_add=True`` to fold the out-of-place ``aten::add`` as well.
- The bias must be a tensor: ``matmul(...).add_(1.0)`` keeps its scalar add
  (the reference would build ``aten::linear`` with a float bias, which fails
  when run).
- When ``aten::t(w)`` has other users it stays, and the linear reads
  ``aten::t(aten::t(w))``, as in the reference. A ``linear`` whose weight is
  such a double transpose gets the plain weight.
- Like the reference's pass, calls of a function named ``linear`` are also
  swapped for ``aten::linear`` (``swap_functional_linear.py``), last.

The linear takes the source range of the op it replaces (the matmul for the
matmul + add_ form), so error messages still point at the user's line.
"""

from __future__ import annotations

from collections.abc import Callable

from passes.linear.swap_functional_linear import SWAP_FUNCTIONAL_LINEAR
from qgraph.ir import Graph, tensor_sizes
from qgraph.pattern import Match, Rewrite, rewrite

__all__ = ["FUSE_LINEAR", "FUSE_ADD", "fuse_linear"]


def _int_constant(name: str, expected: int) -> Callable[[Match], bool]:
    def check(match: Match) -> bool:
        value = match.constant(name, default=None)
        return type(value) is int and value == expected

    check.__name__ = f"int_constant({name}={expected})"
    return check


def _weight_is_transposed(match: Match) -> bool:
    return match["weight_t"].node().kind() == "aten::t"


def _bias_is_tensor(match: Match) -> bool:
    return match["bias"].type().kind() == "TensorType"


def _add_keeps_product_shape(match: Match) -> bool:
    # An out-of-place add may broadcast the product up to the bias's shape;
    # aten::linear cannot. Traced graphs record both shapes; where they are
    # unknown (scripted) the caller's fuse_add=True vouches for the bias.
    product = tensor_sizes(match["output"].type())
    result = tensor_sizes(match["res"].type())
    return product is None or result is None or product == result


_alpha_is_one = _int_constant("alpha", 1)
_beta_is_one = _int_constant("beta", 1)

_LINEAR = """graph(%input, %weight, %bias{extra}):
            %res = aten::linear(%input, %weight, %bias)
            return (%res)"""

_LINEAR_OF_TRANSPOSE = """graph(%input, %weight_t, %bias{extra}):
            %weight = aten::t(%weight_t)
            %res = aten::linear(%input, %weight, %bias)
            return (%res)"""


def _matmul_add_rewrites(add: str) -> list[Rewrite]:
    """matmul + bias add, for ``add`` in (``add_``, ``add``); the linear keeps the matmul's source range."""
    bias_filters = (_bias_is_tensor,) if add == "add_" else (_bias_is_tensor, _add_keeps_product_shape)
    return [
        Rewrite(
            name=f"matmul_{add}_to_linear",
            pattern=f"""graph(%input, %weight, %bias, %alpha):
                %weight_t = aten::t(%weight)
                %output = aten::matmul(%input, %weight_t)
                %res = aten::{add}(%output, %bias, %alpha)
                return (%res)""",
            replacement=_LINEAR.format(extra=", %alpha"),
            filters=(_alpha_is_one, *bias_filters),
            source="output",
        ),
        # aten::t(w) has other users, so it must stay; t(t(w)) is the weight.
        Rewrite(
            name=f"matmul_{add}_to_linear_shared_transpose",
            pattern=f"""graph(%input, %weight_t, %bias, %alpha):
                %output = aten::matmul(%input, %weight_t)
                %res = aten::{add}(%output, %bias, %alpha)
                return (%res)""",
            replacement=_LINEAR_OF_TRANSPOSE.format(extra=", %alpha"),
            filters=(_weight_is_transposed, _alpha_is_one, *bias_filters),
            source="output",
        ),
    ]


_ADDMM = [
    Rewrite(
        name="addmm_to_linear",
        pattern="""graph(%input, %weight, %bias, %beta, %alpha):
            %weight_t = aten::t(%weight)
            %res = aten::addmm(%bias, %input, %weight_t, %beta, %alpha)
            return (%res)""",
        replacement=_LINEAR.format(extra=", %beta, %alpha"),
        filters=(_beta_is_one, _alpha_is_one),
    ),
    Rewrite(
        name="addmm_to_linear_shared_transpose",
        pattern="""graph(%input, %weight_t, %bias, %beta, %alpha):
            %res = aten::addmm(%bias, %input, %weight_t, %beta, %alpha)
            return (%res)""",
        replacement=_LINEAR_OF_TRANSPOSE.format(extra=", %beta, %alpha"),
        filters=(_weight_is_transposed, _beta_is_one, _alpha_is_one),
    ),
]

_MATMUL = [
    Rewrite(
        name="matmul_to_linear",
        pattern="""graph(%input, %weight):
            %weight_t = aten::t(%weight)
            %res = aten::matmul(%input, %weight_t)
            return (%res)""",
        replacement="""graph(%input, %weight):
            %bias : Tensor? = prim::Constant()
            %res = aten::linear(%input, %weight, %bias)
            return (%res)""",
    ),
    Rewrite(
        name="matmul_to_linear_shared_transpose",
        pattern="""graph(%input, %weight_t):
            %res = aten::matmul(%input, %weight_t)
            return (%res)""",
        replacement="""graph(%input, %weight_t):
            %weight = aten::t(%weight_t)
            %bias : Tensor? = prim::Constant()
            %res = aten::linear(%input, %weight, %bias)
            return (%res)""",
        filters=(_weight_is_transposed,),
    ),
]

_DOUBLE_TRANSPOSE = [
    Rewrite(
        name="linear_drop_double_transpose",
        pattern="""graph(%input, %weight, %bias):
            %weight_t1 = aten::t(%weight)
            %weight_t2 = aten::t(%weight_t1)
            %res = aten::linear(%input, %weight_t2, %bias)
            return (%res)""",
        replacement=_LINEAR.format(extra=""),
    ),
]

# Order is meaning: bias-carrying forms claim their matmul before the bare
# matmul rule turns it into a bias-less linear.
FUSE_LINEAR = _ADDMM + _matmul_add_rewrites("add_") + _MATMUL + _DOUBLE_TRANSPOSE

# With fuse_add=True the out-of-place add is folded too; it goes with the
# in-place one, before the bare matmul rule.
FUSE_ADD = _ADDMM + _matmul_add_rewrites("add_") + _matmul_add_rewrites("add") + _MATMUL + _DOUBLE_TRANSPOSE


def fuse_linear(graph: Graph, *, fuse_add: bool = False, swap_functional: bool = True) -> int:
    """Rewrite ``addmm`` / ``matmul`` (+ bias ``add_``) with a transposed weight into ``aten::linear``.

    Works in place on ``graph`` (nested blocks included) and returns the
    number of rewrites made. ``fuse_add=True`` also folds an out-of-place
    ``aten::add`` of a tensor bias (``x @ w.t() + b``); the reference leaves
    that add separate, so the default keeps its graph. With ``fuse_add`` the
    add is folded only if it does not broadcast the product to a larger
    shape, which ``aten::linear`` cannot do: checked where the graph records
    shapes (traced graphs), assumed of the caller's bias elsewhere.
    ``swap_functional=False`` leaves calls of functions named ``linear``
    alone, for a pipeline that swapped them in a step of its own.
    """
    if not isinstance(graph, Graph):
        raise TypeError(f"fuse_linear expects a torch._C.Graph, got {type(graph).__name__}")
    table = FUSE_ADD if fuse_add else FUSE_LINEAR
    return rewrite(graph, table + SWAP_FUNCTIONAL_LINEAR if swap_functional else table)
