"""Conv -> BatchNorm call pairs become one call of a QAT ``ConvBn{n}d`` (prepare for quantization-aware training).

Takes a script module whose method graphs call a ``torch.nn.Conv{1,2,3}d``
submodule and pass its output, and nothing else, to a
``torch.nn.BatchNorm{1,2,3}d`` submodule of the same dimensionality (the
pairs ``fold_conv_bn`` folds for inference). Leaves one call, to a
``qgraph.quant.qat_modules.ConvBn{n}d`` registered under the conv's name in
the conv's place; the BatchNorm is gone from its parent::

    before                                              after
    %conv = prim::GetAttr[name="conv"](%self)           %conv : ConvBn2d = prim::GetAttr[name="conv"](%self)
    %bn = prim::GetAttr[name="bn"](%self)               %y = prim::CallMethod[name="forward"](%conv, %x)
    %y = prim::CallMethod[name="forward"](%conv, %x)    return (%y)
    %z = prim::CallMethod[name="forward"](%bn, %y)
    return (%z)

The new module holds the conv's weight and bias, the BatchNorm's state in
its ``bn`` child and a fresh copy of the conv's qconfig weight observer as
``weight_fake_quant``: eager ``fuse_modules_qat`` + ``prepare_qat``'s
layout, and its arithmetic. It trains with batch statistics instead of being
folded with running ones.

A pair stays as it is where folding would leave it (another use of the conv
output or of either module, classes not exactly torch.nn's, no running
statistics) and where eager QAT refuses it too: a BatchNorm without affine
parameters, a conv without qconfig, a string ``padding`` ("same").
Hyper-parameters come from a scripted conv's attributes, or from the
``aten::_convolution`` of a traced conv and the ``aten::batch_norm`` of a
traced BatchNorm. Where a class type has several instances, its graph is
edited only when every instance can swap.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from qgraph.ir import (
    CppModule,
    Graph,
    Value,
    as_cpp,
    as_python,
    clone_module,
    erase_nodes,
    getattr_path,
    ivalue,
    method_graph,
    replace_children,
    replace_uses,
    walk,
)
from qgraph.pattern import Match
from qgraph.quant.conv_bn import (
    conv_bn_calls,
    is_conv_bn_pair,
    pair_submodules,
)
from qgraph.quant.qat_modules import build_conv_bn

__all__ = ["swap_conv_bn_for_qat"]

# aten::_convolution(input, weight, bias, stride, padding, dilation, transposed, output_padding, groups, ...)
_STRIDE, _PADDING, _DILATION, _TRANSPOSED, _GROUPS = 3, 4, 5, 6, 8
# aten::batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps, cudnn_enabled)
_TRAINING, _MOMENTUM, _EPS = 5, 6, 7


@dataclass
class _Swap:
    conv_path: str
    bn_path: str
    conv: SimpleNamespace
    bn: SimpleNamespace
    weight_observer: CppModule


def swap_conv_bn_for_qat(module: Any, qconfigs: dict) -> CppModule:
    """Swap every qualifying Conv-BatchNorm pair of ``module`` (edited in place; the new root is returned).

    ``qconfigs`` maps every submodule path to its scripted QConfig or None
    (``qgraph.quant.qconfig.resolve_qconfigs``).
    """
    root = as_cpp(module)
    calls = conv_bn_calls(root)
    swaps: list[_Swap] = []
    matches: list[Match] = []
    for method, match in calls.matches:
        planned = [
            _plan(match, path, instance, calls.module_uses, qconfigs) for path, instance in method.instances.items()
        ]
        if planned and all(p is not None for p in planned):
            swaps.extend(p for p in planned if p is not None)
            matches.append(match)
    if not swaps:
        return root
    for match in matches:
        _remove_batch_norm_call(match)
    replacements: dict[str, CppModule | None] = {}
    for swap in swaps:
        fused = build_conv_bn(swap.conv, swap.bn, swap.weight_observer)
        # A type of its own: later stages clean up graphs in place, and the
        # scripted class type is shared with every other use of the class.
        replacements[swap.conv_path] = clone_module(fused, share_values=True)
        replacements[swap.bn_path] = None
    return replace_children(root, replacements)


def _plan(match: Match, path: str, instance: CppModule, uses: dict, qconfigs: dict) -> _Swap | None:
    conv, bn = pair_submodules(match, instance)
    if not is_conv_bn_pair(conv, bn) or uses.get(conv, 0) != 1 or uses.get(bn, 0) != 1:
        return None
    conv_path = _join(path, getattr_path(match["conv"]))
    qconfig = qconfigs.get(conv_path)
    if qconfig is None:
        return None
    conv_fields, bn_fields = _conv_fields(conv), _batch_norm_fields(bn)
    if conv_fields is None or bn_fields is None:
        return None
    if bn_fields.running_mean is None or bn_fields.weight is None or bn_fields.bias is None:
        return None
    observer = as_cpp(copy.deepcopy(as_python(qconfig.weight)))
    return _Swap(conv_path, _join(path, getattr_path(match["batchnorm"])), conv_fields, bn_fields, observer)


def _join(path: str, parts: list[str] | None) -> str:
    return ".".join(p for p in [path, *(parts or [])] if p)


def _attribute(module: CppModule, name: str) -> Any:
    return module.getattr(name) if module.hasattr(name) else None


def _conv_fields(conv: CppModule) -> SimpleNamespace | None:
    weight, bias = _attribute(conv, "weight"), _attribute(conv, "bias")
    scripted = as_python(conv)
    if hasattr(scripted, "stride"):
        if isinstance(scripted.padding, str):
            return None
        return SimpleNamespace(
            weight=weight,
            bias=bias,
            stride=scripted.stride,
            padding=scripted.padding,
            dilation=scripted.dilation,
            groups=scripted.groups,
            padding_mode=scripted.padding_mode,
        )
    node = _only_op(method_graph(conv), "aten::_convolution", _STRIDE) if conv._has_method("forward") else None
    if node is None or _constant(node.inputsAt(_TRANSPOSED)):
        return None
    return SimpleNamespace(
        weight=weight,
        bias=bias,
        stride=_constant(node.inputsAt(_STRIDE)),
        padding=_constant(node.inputsAt(_PADDING)),
        dilation=_constant(node.inputsAt(_DILATION)),
        groups=_constant(node.inputsAt(_GROUPS)),
        padding_mode="zeros",
    )


def _batch_norm_fields(bn: CppModule) -> SimpleNamespace | None:
    weight = _attribute(bn, "weight")
    fields = SimpleNamespace(
        weight=weight,
        bias=_attribute(bn, "bias"),
        running_mean=_attribute(bn, "running_mean"),
        running_var=_attribute(bn, "running_var"),
        num_batches_tracked=_attribute(bn, "num_batches_tracked"),
        num_features=None if weight is None else weight.shape[0],
    )
    scripted = as_python(bn)
    if hasattr(scripted, "eps"):
        fields.eps, fields.momentum = scripted.eps, scripted.momentum
        return fields
    node = _only_op(method_graph(bn), "aten::batch_norm", _TRAINING) if bn._has_method("forward") else None
    if node is None:
        return None
    fields.eps, fields.momentum = _constant(node.inputsAt(_EPS)), _constant(node.inputsAt(_MOMENTUM))
    return fields


def _only_op(graph: Graph, kind: str, first_constant: int) -> Any:
    """The one ``kind`` node of a traced forward whose other nodes only read attributes and constants."""
    ops = [n for n in walk(graph) if n.kind() not in ("prim::GetAttr", "prim::Constant", "prim::ListConstruct")]
    found = [n for n in ops if n.kind() == kind]
    if len(found) != 1 or any(n.kind() != kind for n in ops if n.kind().startswith("aten::")):
        return None
    node = found[0]
    constant_args = list(node.inputs())[first_constant:]
    if not all(v.node().kind() in ("prim::Constant", "prim::ListConstruct") for v in constant_args):
        return None
    return node


def _constant(value: Value) -> Any:
    node = value.node()
    if node.kind() == "prim::ListConstruct":
        return [ivalue(v) for v in node.inputs()]
    return ivalue(value)


def _remove_batch_norm_call(match: Match) -> None:
    replace_uses(match["bn_out"], match["conv_out"])
    erase_nodes([match.node("bn_out")])
    _erase_unused_reads(match["batchnorm"])


def _erase_unused_reads(value: Value) -> None:
    node = value.node()
    while node.kind() == "prim::GetAttr" and not node.output().uses():
        parent = node.input()
        erase_nodes([node])
        node = parent.node()
