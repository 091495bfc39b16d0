"""Dynamic quantization of LSTM / GRU modules and their cells.

Takes a script module (scripted or traced) holding ``nn.LSTM``, ``nn.GRU``,
``nn.LSTMCell``, ``nn.GRUCell`` or ``nn.RNNCell`` instances and a
``qconfig_dict``. Every such instance whose effective qconfig has a weight
observer of dtype ``torch.qint8`` (int8) or ``torch.float16`` (fp16) gets its
weights quantized and prepacked once, here, and stored as attributes of the
instance; the float RNN op in its graph becomes the dynamic quantized kernel
that eager ``torch.ao.quantization.quantize_dynamic`` runs, fed from those
attributes. Outputs equal eager's bit for bit, because the weights go through
the same steps: a fresh weight observer per weight, ``calculate_qparams``,
quantize, ``linear_prepack`` (int8) or ``linear_prepack_fp16`` (fp16).

Graph shapes (scripted ``nn.LSTM`` with 2 layers, its ``forward__0`` method)::

    %_flat_weights : Tensor[] = prim::GetAttr[name="_flat_weights"](%self)
    %out, %h, %c = aten::lstm(%input, %hx, %_flat_weights, %true, %layers,
                              %dropout, %training, %bidirectional, %batch_first)

becomes::

    %cell0 = prim::GetAttr[name="_packed_cell_params_0"](%self)
    %cell1 = prim::GetAttr[name="_packed_cell_params_1"](%self)
    %params : __torch__.torch.classes.rnn.CellParamsBase[] = prim::ListConstruct(%cell0, %cell1)
    %out, %h, %c = aten::quantized_lstm(%input, %hx, %params, %true, %layers,
                                        %dropout, %training, %bidirectional,
                                        %batch_first, %dtype, %use_dynamic)

with one cell-params object per layer and direction, as eager's
``_all_weight_values`` holds them (freezing folds single packed objects, not
lists of them).

Traced modules pass the weights as a ``prim::ListConstruct`` of
``prim::GetAttr`` values instead of ``_flat_weights``; both forms are found
through the ``prim::GetAttr`` chain from ``%self``, so an RNN op inlined into
a parent's graph is rewritten too. ``aten::gru`` becomes
``aten::quantized_gru``; the packed-sequence overloads (``.data``) are
rewritten the same way. Cells (``aten::lstm_cell``, ``aten::gru_cell``,
``aten::rnn_tanh_cell``, ``aten::rnn_relu_cell``) become
``quantized::quantized_{lstm,gru,rnn_tanh,rnn_relu}_cell_dynamic`` reading
``_packed_weight_ih`` / ``_packed_weight_hh``. Tracing records a cell as its
decomposition (``aten::linear`` on ``weight_ih`` and ``weight_hh``, then the
gates); there each such ``aten::linear`` becomes
``quantized::linear_dynamic(%x, %packed, reduce_range=True)`` (fp16:
``quantized::linear_dynamic_fp16``), which is what the cell kernel computes.

Beyond eager: an RNN without biases (eager asserts ``bias=True``) is
quantized with bias-free packed weights. What cannot be quantized stays float
and says why: ``rnn_float_reasons(module)`` lists ``(path, reason)`` for every
RNN instance left float (no qconfig, unsupported weight dtype, ``proj_size >
0``, ``nn.RNN``, an op whose weights or flags this pass cannot read). The
reason is a ``str`` attribute ``_rnn_float_reason`` of that instance, so it
travels with clones and saved models; freezing drops it with the other
unused attributes, so read it before freezing. For convert's float-op
report, the RNN op left float is also tagged (``qgraph.quant.float_ops``:
node attributes, which survive inlining and freezing) with every reason but
"no qconfig", which the report reads from the ``qconfig_dict`` like for any
other op; the end of convert turns the tags into the model's float-op
records.

The files: ``table.py`` the ops, ``plans.py`` what happens to each
instance, ``sites.py`` reading each op and deciding, ``build.py`` the
replacements.

The module is changed in place. When instances that share a class type end
up quantized differently (int8, fp16, float), they first get class types of
their own, which replaces the root's C++ module: use the returned module.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

from passes.rnn.build import bound_table
from passes.rnn.plans import Plan, record_float, rnn_plans
from passes.rnn.sites import Context, decide, join, sites_in
from passes.rnn.table import FLOAT_REASON_ATTR, RNN_KINDS, RNN_MODULE_CLASSES
from qgraph.ir import (
    CppModule,
    NodeIndex,
    as_cpp,
    erase_dead,
    is_instance_of,
    like,
    method_graph,
    named_modules,
    resolve_path,
    unshare_types,
)
from qgraph.pattern import rewrite
from qgraph.quant.float_ops import UNSUPPORTED_OP, tag_float_op

__all__ = ["quantize_rnn", "rnn_float_reasons", "is_rnn_module", "RNN_MODULE_CLASSES"]


def _paths_by_type(root: CppModule) -> dict[str, list[str]]:
    found: dict[str, list[str]] = defaultdict(list)
    for path, module in named_modules(root):
        found[module._type().qualified_name()].append(path)
    return found


def _types_to_unshare(root: CppModule, plans: dict[str, Plan]) -> list[str]:
    """Instances that must get a class type of their own before rewriting.

    A class type's graphs are rewritten once for all its instances, so the
    instances of one type must all be quantized the same way (or all left
    float): RNN instances by their own plan, and modules whose graphs hold an
    inlined RNN op by the plans of the RNNs their ops read.
    """
    paths: set[str] = set()
    instances = _paths_by_type(root)
    for type_paths in instances.values():
        if len(type_paths) < 2:
            continue
        modes = {plans[p].mode if p in plans else "float" for p in type_paths}
        if any(p in plans for p in type_paths) and len(modes) > 1:
            paths.update(type_paths)
        representative = resolve_path(root, type_paths[0])
        for method in representative._method_names():
            for _, site in sites_in(method_graph(representative, method)):
                if not site.suffix:
                    continue  # the RNN's own graph: covered by its own plan
                owner_modes = set()
                for host in type_paths:
                    owner = join(host, site.suffix)
                    plan = plans.get(owner)
                    owner_modes.add(plan.mode if plan is not None else "float")
                if len(owner_modes) > 1:
                    paths.update(type_paths)
    return sorted(paths)


def quantize_rnn(module: Any, qconfig_dict: dict, *, unshare: bool = True) -> Any:
    """Quantize the LSTM / GRU modules and cells of ``module`` dynamically, in place.

    ``module`` is a ScriptModule or its ``._c``; the result is the same kind
    (the same object for a scripted ``RecursiveScriptModule``). Run it on a
    clone that has not executed yet: a method that already ran keeps the
    plan its executor compiled. ``qconfig_dict`` maps dotted module paths to
    QConfigs (longest prefix wins, None turns quantization off); an RNN
    instance is quantized when its weight observer's dtype is ``torch.qint8``
    or ``torch.float16``. Before / after, in an ``nn.GRUCell``'s graph::

        %h = aten::gru_cell(%input, %hx, %weight_ih, %weight_hh, %bias_ih, %bias_hh)

        %packed_ih = prim::GetAttr[name="_packed_weight_ih"](%self)
        %packed_hh = prim::GetAttr[name="_packed_weight_hh"](%self)
        %h = quantized::quantized_gru_cell_dynamic(%input, %hx, %packed_ih, %packed_hh,
                                                   %bias_ih, %bias_hh)

    ``unshare=False`` is for a pipeline that ran ``unshare_qconfig_types``
    with the same ``qconfig_dict`` first: instances that kept one class type
    then have the same qconfig everywhere below them, so the same plans, and
    there is nothing left to unshare.
    """
    root = as_cpp(module)
    plans = rnn_plans(root, qconfig_dict)
    if not plans:
        return module
    shared = _types_to_unshare(root, plans) if unshare else []
    if shared:
        root = unshare_types(root, shared)
    for path, plan in plans.items():
        if plan.dtype is None:
            record_float(root, path, str(plan.reason))
    instances = _paths_by_type(root)
    slots: set[tuple[str, str]] = set()
    for type_paths in instances.values():
        representative = resolve_path(root, type_paths[0])
        ctx = Context(root, type_paths, plans, slots)
        table = bound_table(ctx)
        for method in representative._method_names():
            graph = method_graph(representative, method)
            index = NodeIndex(graph)
            if not index.of_kind(*RNN_KINDS):
                continue
            for node, decision in decide(ctx, index):
                if decision.site is not None:
                    ctx.sites[node] = decision.site
                    continue
                reason = str(decision.reason)
                for owner in decision.record_on:
                    record_float(root, owner, reason)
                if decision.tag:
                    tag_float_op(node, UNSUPPORTED_OP, reason)
            if rewrite(graph, table, index):
                erase_dead(graph)
    if isinstance(module, torch.jit.RecursiveScriptModule):
        if root is not module._c:
            module._reconstruct(root)
        return module
    return like(root, module)


def rnn_float_reasons(module: Any, qconfig_dict: dict | None = None) -> list[tuple[str, str]]:
    """``(path, reason)`` for every RNN instance left in float.

    Without ``qconfig_dict``: the reasons ``quantize_rnn`` recorded on
    ``module`` (read them before freezing, which drops them). With it: the
    reasons ``quantize_rnn`` would give for ``module`` (any unfrozen form of
    the model, the float one included), without changing anything; reasons
    found only while rewriting (an op whose weights cannot be read) are
    recorded but not foreseen.
    """
    root = as_cpp(module)
    if qconfig_dict is not None:
        return [(path, str(plan.reason)) for path, plan in rnn_plans(root, qconfig_dict).items() if plan.dtype is None]
    return [
        (path, sub.getattr(FLOAT_REASON_ATTR)) for path, sub in named_modules(root) if sub.hasattr(FLOAT_REASON_ATTR)
    ]


def is_rnn_module(module: Any) -> bool:
    """Whether a script module is an RNN whose graphs belong to this pass."""
    return is_instance_of(as_cpp(module), *RNN_MODULE_CLASSES)
