"""The replacements of RNN ops: the dynamic quantized kernels, fed from packed weights stored on the owner.

Each owner instance gets its packed weights once (``_packed_cell_params_<k>``
per layer and direction for a fused op, ``_packed_weight_ih`` /
``_packed_weight_hh`` for a cell), read through a ``prim::GetAttr`` chain
from ``%self``. The table's filter only admits the ops ``sites.decide``
said to rewrite.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from passes.rnn.plans import cell_params, no_bias, prepack
from passes.rnn.sites import Context, Site, weight_tensors
from passes.rnn.table import PACKED_CELL_PARAMS, PACKED_WEIGHT, QUANTIZED_CELL, QUANTIZED_FUSED, TABLE, RnnOp
from qgraph.ir import (
    Graph,
    Node,
    Value,
    getattr_path,
    insert_constant,
    insert_getattr,
    insert_op,
    register_attribute,
    resolve_path,
)
from qgraph.pattern import Match, Rewrite

__all__ = ["bound_table"]


def _set_packed(ctx: Context, owner: str, name: str, make: Callable[[], Any]) -> None:
    """Register ``make()`` as attribute ``name`` of the instance at ``owner``, once."""
    if (owner, name) in ctx.packed:
        return
    module = resolve_path(ctx.root, owner)
    # Instances sharing a class type share its attribute slots: a slot this
    # pass added for a sibling is expected, any other one is the user's.
    slot = (module._type().qualified_name(), name)
    if module.hasattr(name) and slot not in ctx.slots:
        raise ValueError(f"module {owner!r} already has an attribute {name!r}; cannot store packed weights there")
    value = make()
    register_attribute(module, name, value)
    ctx.slots.add(slot)
    ctx.packed[(owner, name)] = value


def _insert_getattr(graph: Graph, base: Value, names: list[str], owner_types: list[Any], before: Node) -> Value:
    value = base
    for name, type_ in zip(names, owner_types):
        value = insert_getattr(graph, value, name, type_, before=before).output()
    return value


def _attr_value(ctx: Context, graph: Graph, site: Site, name: str, before: Node) -> Value:
    """``self.<suffix>.<name>`` read in ``graph`` before ``before``."""
    owner = resolve_path(ctx.root, ctx.owners(site)[0])
    path = [*site.suffix, name]
    types = []
    module = resolve_path(ctx.root, ctx.hosts[0])
    for part in site.suffix:
        module = module.getattr(part)
        types.append(module._type())
    types.append(torch._C._jit_try_infer_type(owner.getattr(name)).type())
    self_value = next(graph.inputs())
    return _insert_getattr(graph, self_value, path, types, before)


def _build_fused(ctx: Context, op: RnnOp, graph: Graph, match: Match, before: Node) -> list[Value]:
    site = ctx.sites[match.anchor]
    layers = match.constant("num_layers")
    directions = 2 if match.constant("bidirectional") else 1
    has_biases = match.constant("has_biases")
    per_cell = 4 if has_biases else 2
    for owner in ctx.owners(site):
        plan = ctx.plans[owner]
        weights = weight_tensors(ctx.root, owner, site, match[op.params])
        for k in range(layers * directions):
            group = weights[k * per_cell : (k + 1) * per_cell]
            w_ih, w_hh = group[0], group[1]
            b_ih, b_hh = (group[2], group[3]) if has_biases else (None, None)
            make = functools.partial(cell_params, w_ih, w_hh, b_ih, b_hh, plan)
            _set_packed(ctx, owner, f"{PACKED_CELL_PARAMS}_{k}", make)
    # One attribute per cell, listed in the graph: freezing folds single
    # packed objects but cannot inspect a list of them.
    cells = [_attr_value(ctx, graph, site, f"{PACKED_CELL_PARAMS}_{k}", before) for k in range(layers * directions)]
    params = insert_op(
        graph, "prim::ListConstruct", cells, before=before, output_types=[torch._C.ListType(cells[0].type())]
    ).output()
    family = "lstm" if op.name.startswith("lstm") else "gru"
    inputs = match.inputs()
    at = [v.debugName() for v in match.pattern.inputs].index(op.params)
    inputs[at] = params
    # The quantized kernels insist on biases; bias-free weights were packed
    # without one, so the flag only says the cell params are complete.
    inputs[at + 1] = insert_constant(graph, True, before=before)
    if family == "lstm":
        dtype = ctx.plans[ctx.owners(site)[0]].dtype
        inputs += [insert_constant(graph, dtype, before=before), insert_constant(graph, True, before=before)]
    node = insert_op(graph, QUANTIZED_FUSED[family], inputs, before=before, n_outputs=len(match.outputs()))
    return list(node.outputs())


def _build_cell(ctx: Context, op: RnnOp, graph: Graph, match: Match, before: Node) -> list[Value]:
    site = ctx.sites[match.anchor]
    for owner in ctx.owners(site):
        plan = ctx.plans[owner]
        module = resolve_path(ctx.root, owner)
        for weight_name, attr in PACKED_WEIGHT.items():
            bias_name = "bias_" + weight_name.removeprefix("weight_")

            def make(module=module, weight_name=weight_name, bias_name=bias_name, plan=plan):
                bias = module.getattr(bias_name) if module.hasattr(bias_name) else None
                return prepack(module.getattr(weight_name), bias, plan)

            _set_packed(ctx, owner, attr, make)
    packed_ih = _attr_value(ctx, graph, site, PACKED_WEIGHT["weight_ih"], before)
    packed_hh = _attr_value(ctx, graph, site, PACKED_WEIGHT["weight_hh"], before)
    biases = []
    for name in ("b_ih", "b_hh"):
        value = match[name]
        if value.type().kind() == "NoneType":
            value = insert_constant(graph, no_bias(), before=before)
        biases.append(value)
    inputs = [match["input"], match["hx"], packed_ih, packed_hh, *biases]
    node = insert_op(graph, QUANTIZED_CELL[op.name], inputs, before=before, n_outputs=len(match.outputs()))
    return list(node.outputs())


def _build_traced_cell_linear(ctx: Context, op: RnnOp, graph: Graph, match: Match, before: Node) -> list[Value]:
    site = ctx.sites[match.anchor]
    weight_name = (getattr_path(match["weight"]) or [""])[-1]
    attr = PACKED_WEIGHT[weight_name]
    bias_name = "bias_" + weight_name.removeprefix("weight_")
    for owner in ctx.owners(site):
        plan = ctx.plans[owner]
        module = resolve_path(ctx.root, owner)

        def make(module=module, plan=plan):
            bias = module.getattr(bias_name) if module.hasattr(bias_name) else None
            return prepack(module.getattr(weight_name), bias, plan)

        _set_packed(ctx, owner, attr, make)
    packed = _attr_value(ctx, graph, site, attr, before)
    if ctx.plans[ctx.owners(site)[0]].dtype == torch.float16:
        node = insert_op(graph, "quantized::linear_dynamic_fp16", [match["input"], packed], before=before)
    else:
        # The dynamic cell kernels quantize activations with reduce_range=True.
        reduce_range = insert_constant(graph, True, before=before)
        node = insert_op(graph, "quantized::linear_dynamic", [match["input"], packed, reduce_range], before=before)
    return [node.output()]


def _builder_for(op: RnnOp) -> Callable[..., list[Value]]:
    if op.name == "traced_cell_linear":
        return _build_traced_cell_linear
    return _build_fused if op.params == "params" else _build_cell


def bound_table(ctx: Context) -> list[Rewrite]:
    """The table's rewrites for the instances of ``ctx``, each admitting the ops ``ctx.sites`` holds for it."""
    return [
        Rewrite(
            name=op.name,
            pattern=op.pattern,
            replacement=functools.partial(_builder_for(op), ctx, op),
            filters=(functools.partial(_decided, ctx, op),),
        )
        for op in TABLE
    ]


def _decided(ctx: Context, op: RnnOp, match: Match) -> bool:
    site = ctx.sites.get(match.anchor)
    return site is not None and site.op is op
