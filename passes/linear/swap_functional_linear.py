"""Turn calls of a scripted function named ``linear`` into ``aten::linear``.

Scripting a call to a Python function compiles it as a ``prim::CallFunction``
whose first input is a ``Function``-typed ``prim::Constant``; the function's
qualified name lives in that value's type. Quantization recognises linear
layers by ``aten::linear``, so a three-argument call of a function whose name
(the last component of its qualified name) is ``linear`` is replaced by the
aten op::

    %fn : Function = prim::Constant[name="linear"]()
    %y = prim::CallFunction(%fn, %x, %w, %b)

becomes::

    %y = aten::linear(%x, %w, %b)

The rule is the reference's and is deliberately blunt: the callee's body is
not inspected, so any function called ``linear`` taking three arguments is
assumed to compute ``F.linear``. Names that merely end in the letters
``linear`` (``my_linear``, ``bilinear``) are not matched. The function
constant is left in place for DCE to remove. Graphs are rewritten in place;
nested blocks are included. Given a module instead of a graph, the pass
rewrites every method of every module in its tree, as PyTorch's pass of the
same name does for a module.
"""

from __future__ import annotations

from typing import Any

import torch

from qgraph.ir import CppModule, Graph, as_cpp
from qgraph.pattern import Match, Rewrite, rewrite
from qgraph.pipeline import method_graphs

__all__ = ["SWAP_FUNCTIONAL_LINEAR", "swap_functional_linear"]


def _calls_function_named_linear(match: Match) -> bool:
    callee = match["fn"].type()
    if callee.kind() != "FunctionType":
        return False
    return str(callee).rsplit(".", 1)[-1] == "linear"


SWAP_FUNCTIONAL_LINEAR = [
    Rewrite(
        name="call_linear_to_aten_linear",
        pattern="""graph(%fn, %input, %weight, %bias):
            %res = prim::CallFunction(%fn, %input, %weight, %bias)
            return (%res)""",
        replacement="""graph(%fn, %input, %weight, %bias):
            %res = aten::linear(%input, %weight, %bias)
            return (%res)""",
        filters=(_calls_function_named_linear,),
    ),
]


def swap_functional_linear(graph: Graph | Any) -> int:
    """Replace calls of functions named ``linear`` in ``graph`` with ``aten::linear``.

    Works in place on one graph, or on every method graph of a script module
    (a ``torch.jit.ScriptModule`` or its ``._c``) and its submodules, and
    returns the number of calls replaced.
    """
    if isinstance(graph, Graph):
        return rewrite(graph, SWAP_FUNCTIONAL_LINEAR)
    if isinstance(graph, torch.jit.ScriptModule | CppModule):
        return _swap_in_module_tree(as_cpp(graph))
    raise TypeError(f"swap_functional_linear expects a torch._C.Graph or a script module, got {type(graph).__name__}")


def _swap_in_module_tree(root: CppModule) -> int:
    # Instances of one class type share their method graphs: each is rewritten once.
    return sum(rewrite(graph, SWAP_FUNCTIONAL_LINEAR) for _, _, graph in method_graphs(root, distinct=True))
