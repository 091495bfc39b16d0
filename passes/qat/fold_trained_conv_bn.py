"""QAT ``ConvBn{n}d`` modules folded with their trained statistics (convert of a QAT model).

Takes a module tree prepared for quantization-aware training (``swap_conv_bn``
put ``qgraph.quant.qat_modules.ConvBn{n}d`` modules in it). Each one's
BatchNorm is folded into its ``weight`` and ``bias`` with the running
statistics training left (``torch.nn.utils.fuse_conv_bn_weights``, as eager
convert folds ``ConvBn{n}d``), and every call of its ``forward`` becomes a
call of its ``folded_forward``: the conv with its weight fake-quantized,
which is the shape observer insertion leaves for a conv::

    before                                                 after
    %y = prim::CallMethod[name="forward"](%conv, %x)       %y = prim::CallMethod[name="folded_forward"](%conv, %x)

    ConvBn2d.folded_forward:
      %fq = prim::GetAttr[name="weight_fake_quant"](%self)  ->  prim::GetAttr[name="_observer_weight_fake_quant"](%self)

Convert tells observers by the ``_observer_`` prefix of their attribute
name, so the weight fake-quant is registered a second time under such a
name, which ``folded_forward`` reads (``weight_fake_quant`` stays for the
training ``forward``, which nothing calls any more).
"""

from __future__ import annotations

from typing import Any

import torch

from qgraph.ir import CppModule, as_cpp, as_python, method_graph, named_modules, register_submodule, walk
from qgraph.quant.observed_values import is_qat_conv_bn_call
from qgraph.quant.observers import OBSERVER_PREFIX
from qgraph.quant.qat_modules import FOLDED_FORWARD, WEIGHT_FAKE_QUANT, is_conv_bn_module

__all__ = ["fold_trained_conv_bn", "WEIGHT_OBSERVER_ALIAS"]

WEIGHT_OBSERVER_ALIAS = f"{OBSERVER_PREFIX}{WEIGHT_FAKE_QUANT}"


def fold_trained_conv_bn(module: Any) -> int:
    """Fold every QAT ``ConvBn{n}d`` of ``module`` in place; returns how many were folded."""
    root = as_cpp(module)
    fused = [sub for _, sub in named_modules(root) if is_conv_bn_module(sub)]
    aliased: set[str] = set()
    for conv_bn in fused:
        _fold_weights(conv_bn)
        type_name = conv_bn._type().qualified_name()
        if conv_bn.hasattr(WEIGHT_OBSERVER_ALIAS):
            conv_bn.setattr(WEIGHT_OBSERVER_ALIAS, conv_bn.getattr(WEIGHT_FAKE_QUANT))
            continue
        register_submodule(conv_bn, WEIGHT_OBSERVER_ALIAS, conv_bn.getattr(WEIGHT_FAKE_QUANT))
        if type_name not in aliased:
            aliased.add(type_name)
            for node in walk(method_graph(conv_bn, FOLDED_FORWARD)):
                if node.kind() == "prim::GetAttr" and node.s("name") == WEIGHT_FAKE_QUANT:
                    node.s_("name", WEIGHT_OBSERVER_ALIAS)
    if fused:
        _call_folded_forward(root)
    return len(fused)


def _fold_weights(conv_bn: CppModule) -> None:
    module = as_python(conv_bn)
    bn = module.bn
    with torch.no_grad():
        weight, bias = torch.nn.utils.fuse_conv_bn_weights(
            module.weight, module.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
        )
    conv_bn.setattr("weight", weight.detach())
    conv_bn.setattr("bias", bias.detach())


def _call_folded_forward(root: CppModule) -> None:
    seen: set[str] = set()
    for _, module in named_modules(root):
        type_name = module._type().qualified_name()
        if type_name in seen:
            continue
        seen.add(type_name)
        for name in module._method_names():
            for node in walk(method_graph(module, name)):
                if is_qat_conv_bn_call(node):
                    node.s_("name", FOLDED_FORWARD)
