"""Fold eval-mode BatchNorm submodule calls into the convolution that feeds them.

Takes a script module whose method graphs call a ``torch.nn.Conv{1,2,3}d``
submodule and pass its output, and nothing else, to a
``torch.nn.BatchNorm{1,2,3}d`` submodule of the same dimensionality. Leaves
the conv call alone, removes the BatchNorm call (its uses now read the conv
output) and rewrites the conv's weight and bias so that the conv computes
what the pair computed::

    before                                              after
    %conv = prim::GetAttr[name="conv"](%self)           %conv = prim::GetAttr[name="conv"](%self)
    %bn = prim::GetAttr[name="bn"](%self)               %y = prim::CallMethod[name="forward"](%conv, %x)
    %y = prim::CallMethod[name="forward"](%conv, %x)    return (%y)
    %z = prim::CallMethod[name="forward"](%bn, %y)
    return (%z)

with the same float operations, in the same order, as PyTorch's own
folding, so the results agree bit for bit (``batch_norm.py``).

A conv without bias gets one: a ``bias`` attribute (``Optional[Tensor]``) is
added to its class type when the type has none (traced convs), and the
convolution in the conv's ``forward`` reads it instead of the constant None.
(PyTorch registers it as a parameter; the Python bindings can only add plain
attributes, so it does not show in ``named_parameters``.) Missing BatchNorm
affine parameters count as ones and zeros. The BatchNorm submodule stays an
attribute of its parent; only its call goes away.

Where a class type has several instances (two blocks of one class, scripted),
their method graph is one graph: it is rewritten once, and only when every
instance can fold; each instance's conv is then folded with its own
BatchNorm's statistics.

A pair stays as it is when:
- the conv output has another use, or anything sits between the two calls;
- the classes are not exactly torch.nn's (a user module named ``Conv2d`` or a
  subclass of ``nn.Conv2d`` may compute something else);
- the BatchNorm is in training mode (its ``training`` flag, or the flag a
  traced ``aten::batch_norm`` recorded): it normalises with batch statistics,
  which no fixed weight reproduces. PyTorch folds it anyway;
- the conv instance is used anywhere else (called twice, its weight read):
  folding would change that other use. PyTorch folds it anyway;
- the BatchNorm has no running statistics (``track_running_stats=False``) or
  its parameters cannot be read.

Dead traced code: tracing a forward that calls a conv and a BatchNorm but
discards the result leaves a BatchNorm ``forward`` that computes nothing and
returns None (PyTorch's folding reads past the end of its match list there
and crashes the process). Such a pair, whose BatchNorm call returns an unused
value, is removed from the graph: both calls go, the weights stay.

PyTorch folds Conv2d/3d only; qgraph folds Conv1d+BatchNorm1d too.

``fold_conv_bn`` folds a fresh clone (new class types, so the caller's
model and its graphs stay as they were) and returns it, as PyTorch's pass
does. ``fold_conv_bn_in_place`` edits the module it is given, for a pipeline
that cloned already; TorchScript compiles a method on its first run from a
copy of its graph and keeps that copy, so a module that already ran
(``torch.jit.trace`` runs the traced module to check it) goes on running its
old graphs there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from passes.fold_conv_bn.batch_norm import batch_norm_parameters, folded_weight_and_bias, tensor_attr
from passes.fold_conv_bn.edits import (
    convolutions_without_bias,
    ensure_bias_attribute,
    remove_batch_norm_call,
    remove_dead_pair,
)
from qgraph.ir import CppModule, Graph, as_cpp, clone_module, like, method_graph, walk
from qgraph.pattern import Match
from qgraph.quant.conv_bn import (
    conv_bn_calls,
    is_conv_bn_pair,
    pair_submodules,
)

__all__ = ["fold_conv_bn", "fold_conv_bn_in_place"]

# Matches of CONV_BN_CALLS are found with the pattern but applied here
# rather than by qgraph.pattern.rewrite: the conv call node must survive as
# it is (a replacement would be a new node), and whether a match may fold
# depends on every instance of the graph's class type and on uses in other
# graphs.


@dataclass
class _Fold:
    conv: CppModule
    weight: torch.Tensor
    bias: torch.Tensor


def fold_conv_bn(module: Any) -> Any:
    """A copy of ``module`` with Conv{1,2,3}d -> BatchNorm{1,2,3}d submodule calls folded.

    ``module`` is a ``torch.jit.ScriptModule`` or its ``._c``; the result is a
    new module of the same kind, and ``module`` itself is left as it was (as
    PyTorch's own folding pass does). Every method graph reachable from the
    root's methods is visited once per class type.
    """
    _check_module(module)
    return like(fold_conv_bn_in_place(clone_module(as_cpp(module))), module)


def _check_module(module: Any) -> None:
    if not isinstance(module, torch.jit.ScriptModule | CppModule):
        raise TypeError(f"fold_conv_bn expects a TorchScript module, got {type(module).__name__}")


def fold_conv_bn_in_place(module: Any) -> Any:
    """``fold_conv_bn`` without the copy: ``module`` itself is folded, and returned.

    For pipelines that cloned the caller's model already (``qgraph.prepare``,
    ``qgraph.fuse_conv_bn_jit``). A module that already ran keeps running the
    graphs it compiled on its first run, so fold one that never ran (a fresh
    clone).
    """
    _check_module(module)
    calls = conv_bn_calls(as_cpp(module))
    methods = calls.methods

    folds: list[_Fold] = []
    to_fold: list[Match] = []
    to_drop: list[Match] = []
    for method, match in calls.matches:
        pairs = [pair_submodules(match, instance) for instance in method.instances.values()]
        if not all(is_conv_bn_pair(conv, bn) for conv, bn in pairs):
            continue
        if _is_dead_pair(match, pairs):
            to_drop.append(match)
            continue
        planned = [_plan_fold(conv, bn, calls.module_uses) for conv, bn in pairs]
        if all(p is not None for p in planned):
            folds.extend(p for p in planned if p is not None)
            to_fold.append(match)

    # All new weights are computed before any is written: a BatchNorm or conv
    # read by one fold must not see another fold's result.
    for fold in folds:
        key = (fold.conv._type().qualified_name(), "forward")
        ensure_bias_attribute(fold.conv, list(methods[key].instances.values()) if key in methods else [])
    for fold in folds:
        fold.conv.setattr("weight", fold.weight)
        fold.conv.setattr("bias", fold.bias)
    for match in to_fold:
        remove_batch_norm_call(match)
    for match in to_drop:
        remove_dead_pair(match)
    return module


def _plan_fold(conv: CppModule, bn: CppModule, module_uses: dict[CppModule, int]) -> _Fold | None:
    if module_uses.get(conv, 0) != 1:
        return None  # the matched call is not its only use
    weight = tensor_attr(conv, "weight")
    if weight is None:
        return None
    if conv.hasattr("bias"):
        bias = conv.getattr("bias")
        if bias is not None and not isinstance(bias, torch.Tensor):
            return None
    else:
        if not convolutions_without_bias(method_graph(conv)):
            return None  # no place to read a new bias from
        bias = None
    parameters = batch_norm_parameters(bn)
    if parameters is None or parameters.running_mean.shape != (weight.shape[0],):
        return None
    new_weight, new_bias = folded_weight_and_bias(weight, bias, parameters)
    return _Fold(conv, new_weight, new_bias)


def _is_dead_pair(match: Match, pairs: list[tuple[Any, Any]]) -> bool:
    """A BatchNorm call whose result nobody reads, to a forward that computes nothing (traced dead code)."""
    if match["bn_out"].uses():
        return False
    return all(_computes_nothing(method_graph(bn)) for _, bn in pairs)


def _computes_nothing(graph: Graph) -> bool:
    return all(node.kind() in ("prim::Constant", "prim::GetAttr") for node in walk(graph))
