"""The graph clean-up that observer insertion needs first, step by step.

PyTorch's observer-insertion pass cleans up the graphs it is about to
observe before it decides anything, so that patterns and observation rules
meet one spelling of each op; ``passes.insert_observers`` does the same when
called alone, and ``qgraph.prepare`` runs the same steps as pipeline stages
of their own (so each can be inspected) before it inserts observers:

1. ``swap-functional-linear``: calls of a function named ``linear`` become
   ``aten::linear``, in every method of every module;
2. ``inline-fork-wait``: ``prim::fork`` subgraphs are inlined;
3. ``fuse-linear``: ``addmm`` / ``matmul`` with a transposed weight become
   ``aten::linear``;
4. ``canonicalize-conv``: traced ``aten::_convolution`` becomes
   ``aten::conv{1,2,3}d`` / ``aten::conv_transpose{1,2,3}d``;
5. ``remove-list-mutation``: ``append`` to a fresh list folds into its
   ``prim::ListConstruct``, so a list built by appends is observed like a
   list literal::

       %y = prim::ListConstruct()
       %1 = aten::append(%y, %x)
       %z = aten::stack(%y, %0)

   becomes::

       %y = prim::ListConstruct(%x)
       %z = aten::stack(%y, %0)

Steps 2-5 apply to the methods reachable from the observed method, as in
the reference. Every step is idempotent: a graph already cleaned up is left
as it is.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from passes._remove_list_mutation import remove_list_mutation
from passes.canonicalize_conv import canonicalize_conv
from passes.fuse_linear import fuse_linear
from passes.swap_functional_linear import swap_functional_linear
from qgraph.ir import CppModule, call_graph

__all__ = ["PREPROCESSING", "preprocess"]

Step = Callable[[CppModule, str], None]


def _called_graphs(module: CppModule, method_name: str) -> list[torch._C.Graph]:
    graphs = call_graph(module, method_name)
    return [graphs.nodes[key]["graph"] for key in graphs.nodes]


def _each_called_graph(graph_pass) -> Step:
    def run(module: CppModule, method_name: str) -> None:
        for graph in _called_graphs(module, method_name):
            graph_pass(graph)

    return run


def _swap_functional_linear_everywhere(module: CppModule, method_name: str) -> None:
    # Every method, not only the reachable ones, as the reference does.
    swap_functional_linear(module)


def _inline_fork_wait(module: CppModule, method_name: str) -> None:
    # A forked call can hide further calls, so repeat until no fork is left.
    while True:
        forked = [g for g in _called_graphs(module, method_name) if g.findNode("prim::fork", True) is not None]
        if not forked:
            return
        for graph in forked:
            torch._C._jit_pass_inline_fork_wait(graph)


# (stage name, step), in the order the reference runs them.
PREPROCESSING: list[tuple[str, Step]] = [
    ("swap-functional-linear", _swap_functional_linear_everywhere),
    ("inline-fork-wait", _inline_fork_wait),
    ("fuse-linear", _each_called_graph(fuse_linear)),
    ("canonicalize-conv", _each_called_graph(canonicalize_conv)),
    ("remove-list-mutation", _each_called_graph(remove_list_mutation)),
]


def preprocess(module: CppModule, method_name: str) -> None:
    """Run every step of ``PREPROCESSING`` on ``module.<method_name>`` (and what it calls), in place."""
    for _, step in PREPROCESSING:
        step(module, method_name)
