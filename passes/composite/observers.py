"""PyTorch's ``insert_observers`` as stages: the graphs cleaned up, class types unshared, observers in.

``observer_preprocessing_stages`` is the clean-up (swap functional linear,
inline fork/wait, fuse linear, canonicalize traced convs, fold list
mutation), then ``unshare_qconfig_types_stage`` and
``insert_observers_stage``; prepare's pipeline splices them, and
``insert_observers`` runs them alone on a clone.
"""

from __future__ import annotations

from typing import Any

import torch

from passes.canonicalize_conv import canonicalize_conv
from passes.linear import fuse_linear, swap_functional_linear
from passes.observe import insert_observers_in_place
from passes.remove_list_mutation import remove_list_mutation
from passes.unshare_qconfig_types import unshare_qconfig_types
from qgraph.ir import CppModule, as_cpp, call_graph, clone_module, like
from qgraph.pipeline import Pipeline, Stage, call_tree_stage

__all__ = [
    "observer_preprocessing_stages",
    "unshare_qconfig_types_stage",
    "unshare_op_qconfig_types_stage",
    "insert_observers_stage",
    "insert_observers",
]


def _inline_fork_wait(method_name: str) -> Stage:
    def run(module: CppModule) -> None:
        # A forked call can hide further calls, so repeat until no fork is left.
        while True:
            calls = call_graph(module, method_name)
            graphs = [calls.nodes[key]["graph"] for key in calls.nodes]
            forked = [graph for graph in graphs if graph.findNode("prim::fork", True) is not None]
            if not forked:
                return
            for graph in forked:
                torch._C._jit_pass_inline_fork_wait(graph)

    return Stage("inline-fork-wait", run)


def observer_preprocessing_stages(method_name: str = "forward") -> list[Stage]:
    """The clean-up PyTorch's insert_observers does first, so that rules meet one spelling of each op.

    Every step is idempotent: a graph already cleaned up is left as it is.
    """

    def swap(module: CppModule) -> None:
        # Every method of every module, not only the reachable ones, as the reference does.
        swap_functional_linear(module)

    return [
        Stage("swap-functional-linear", swap),
        _inline_fork_wait(method_name),
        call_tree_stage("fuse-linear", lambda graph: fuse_linear(graph, swap_functional=False), method_name),
        call_tree_stage("canonicalize-conv", canonicalize_conv, method_name),
        call_tree_stage("remove-list-mutation", remove_list_mutation, method_name),
    ]


def unshare_qconfig_types_stage(qconfig_dict: Any, method_name: str = "forward") -> Stage:
    """Instances whose subtrees resolve to different qconfigs get class types of their own."""
    return Stage("unshare-qconfig-types", lambda module: unshare_qconfig_types(module, qconfig_dict, method_name))


def unshare_op_qconfig_types_stage(method_name: str, qconfig_dict: Any) -> Stage:
    """The same again on the cleaned-up graphs, for a QConfigMapping naming ops the clean-up makes (aten::linear)."""
    return Stage("unshare-op-qconfig-types", lambda module: unshare_qconfig_types(module, qconfig_dict, method_name))


def insert_observers_stage(method_name: str, qconfig_dict: Any, quant_type: Any) -> Stage:
    """Observers after every value quantization needs (graphs cleaned up, types unshared already)."""
    return Stage(
        "insert-observers", lambda module: insert_observers_in_place(module, method_name, qconfig_dict, quant_type)
    )


def insert_observers(module: Any, method_name: str, qconfig_dict: Any, inplace: bool, quant_type: Any) -> Any:
    """Observe every value of ``module.<method_name>`` (and what it calls) that quantization needs.

    Called alone, it does what PyTorch's pass of the same name does: the
    graphs are cleaned up first (``observer_preprocessing_stages``), then
    instances whose qconfigs differ get class types of their own, then the
    observers go in (``passes.observe.insert_observers`` has the
    rules).

    ``module`` is a ScriptModule or its ``._c`` and comes back as the same
    kind; ``qconfig_dict`` may hold QConfigs or scripted QConfigs
    (``qgraph.script_qconfig``); ``quant_type`` is a ``QuantType`` or
    ``"static"`` / ``"dynamic"``. The observers go into a clone with fresh
    class types, so the caller's graphs never change (nor the types that
    scripting hands to later instances of the same Python class); with
    ``inplace=False`` the clone has copies of the tensors, with
    ``inplace=True`` it shares the caller's, and a Python ScriptModule is
    re-pointed at it.
    """
    _check_method(as_cpp(module), method_name)
    root = clone_module(as_cpp(module), share_values=inplace)
    stages = [
        *observer_preprocessing_stages(method_name),
        unshare_qconfig_types_stage(qconfig_dict, method_name),
        insert_observers_stage(method_name, qconfig_dict, quant_type),
    ]
    root = Pipeline("insert-observers", stages).run(root)
    if isinstance(module, torch.jit.ScriptModule) and inplace:
        module._reconstruct(root)
        return module
    return like(root, module)


def _check_method(module: CppModule, method_name: str) -> None:
    if not module._has_method(method_name):
        raise ValueError(f"module {module._type().qualified_name()} has no method {method_name!r}")
