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
report, the RNN op left float is also tagged (``tag_float_op`` of
``passes.legalize_quantized``: node attributes, which survive inlining and
freezing) with every reason but "no qconfig", which the report reads from
the ``qconfig_dict`` like for any other op; the legalize-quantized stage at
the end of convert turns the tags into the model's float-op records.

The module is changed in place. When instances that share a class type end
up quantized differently (int8, fp16, float), they first get class types of
their own, which replaces the root's C++ module: use the returned module.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.ao.nn.quantized.modules.utils import _quantize_weight
from torch.ao.quantization.qconfig import default_dynamic_qconfig

from qgraph.ir import (
    NodeIndex,
    as_cpp,
    erase_dead,
    getattr_path,
    insert_constant,
    insert_getattr,
    insert_op,
    is_constant,
    is_instance_of,
    like,
    method_graph,
    named_modules,
    register_attribute,
    resolve_path,
    unshare_types,
)
from qgraph.pattern import Match, Rewrite, compile_pattern, match_at, rewrite
from qgraph.quant.float_ops import UNSUPPORTED_OP, tag_float_op
from qgraph.quant.observers import fresh_observer, observer_dtype
from qgraph.quant.qconfig import resolve_qconfigs

__all__ = ["quantize_rnn", "rnn_float_reasons", "is_rnn_module", "RNN_MODULE_CLASSES"]

nn = torch.nn

# Classes whose instances this pass owns; the observer-insertion pass leaves
# their graphs alone (a traced cell's ``aten::linear`` is the cell's math).
RNN_MODULE_CLASSES = (nn.LSTM, nn.GRU, nn.LSTMCell, nn.GRUCell, nn.RNNCell, nn.RNN)

FLOAT_REASON_ATTR = "_rnn_float_reason"
PACKED_CELL_PARAMS = "_packed_cell_params"
PACKED_WEIGHT = {"weight_ih": "_packed_weight_ih", "weight_hh": "_packed_weight_hh"}

_SUPPORTED_DTYPES = (torch.qint8, torch.float16)
_NO_QCONFIG_REASON = "no qconfig applies to this module"


# --- the pattern table -----------------------------------------------------
#
# One entry per float RNN op overload. ``params`` is the input holding the
# weights; ``owner`` is the module class the weights must belong to. The
# builders are bound to the graph being rewritten when the table is used.

_FUSED_ARGS = "%has_biases, %num_layers, %dropout, %train, %bidirectional"


@dataclass(frozen=True)
class _RnnOp:
    name: str
    overload: str
    pattern: str
    owner: tuple[type, ...]
    params: str


_TABLE: tuple[_RnnOp, ...] = (
    _RnnOp(
        name="lstm",
        overload="aten::lstm.input",
        pattern=f"""graph(%input, %hx, %params, {_FUSED_ARGS}, %batch_first):
            %out, %h, %c = aten::lstm(%input, %hx, %params, {_FUSED_ARGS}, %batch_first)
            return (%out, %h, %c)""",
        owner=(nn.LSTM,),
        params="params",
    ),
    _RnnOp(
        name="lstm_packed_sequence",
        overload="aten::lstm.data",
        pattern=f"""graph(%data, %batch_sizes, %hx, %params, {_FUSED_ARGS}):
            %out, %h, %c = aten::lstm(%data, %batch_sizes, %hx, %params, {_FUSED_ARGS})
            return (%out, %h, %c)""",
        owner=(nn.LSTM,),
        params="params",
    ),
    _RnnOp(
        name="gru",
        overload="aten::gru.input",
        pattern=f"""graph(%input, %hx, %params, {_FUSED_ARGS}, %batch_first):
            %out, %h = aten::gru(%input, %hx, %params, {_FUSED_ARGS}, %batch_first)
            return (%out, %h)""",
        owner=(nn.GRU,),
        params="params",
    ),
    _RnnOp(
        name="gru_packed_sequence",
        overload="aten::gru.data",
        pattern=f"""graph(%data, %batch_sizes, %hx, %params, {_FUSED_ARGS}):
            %out, %h = aten::gru(%data, %batch_sizes, %hx, %params, {_FUSED_ARGS})
            return (%out, %h)""",
        owner=(nn.GRU,),
        params="params",
    ),
    _RnnOp(
        name="lstm_cell",
        overload="aten::lstm_cell",
        pattern="""graph(%input, %hx, %w_ih, %w_hh, %b_ih, %b_hh):
            %h, %c = aten::lstm_cell(%input, %hx, %w_ih, %w_hh, %b_ih, %b_hh)
            return (%h, %c)""",
        owner=(nn.LSTMCell,),
        params="w_ih",
    ),
    *(
        _RnnOp(
            name=name,
            overload=f"aten::{name}",
            pattern=f"""graph(%input, %hx, %w_ih, %w_hh, %b_ih, %b_hh):
                %h = aten::{name}(%input, %hx, %w_ih, %w_hh, %b_ih, %b_hh)
                return (%h)""",
            owner=owner,
            params="w_ih",
        )
        for name, owner in (
            ("gru_cell", (nn.GRUCell,)),
            ("rnn_tanh_cell", (nn.RNNCell,)),
            ("rnn_relu_cell", (nn.RNNCell,)),
        )
    ),
    # Last: a traced cell's decomposition. Only linears on a cell's own
    # weight_ih / weight_hh match (see _linear_of_traced_cell).
    _RnnOp(
        name="traced_cell_linear",
        overload="aten::linear",
        pattern="""graph(%input, %weight, %bias):
            %out = aten::linear(%input, %weight, %bias)
            return (%out)""",
        owner=(nn.LSTMCell, nn.GRUCell, nn.RNNCell),
        params="weight",
    ),
)

_QUANTIZED_FUSED = {"lstm": "aten::quantized_lstm", "gru": "aten::quantized_gru"}
_QUANTIZED_CELL = {
    "lstm_cell": "quantized::quantized_lstm_cell_dynamic",
    "gru_cell": "quantized::quantized_gru_cell_dynamic",
    "rnn_tanh_cell": "quantized::quantized_rnn_tanh_cell_dynamic",
    "rnn_relu_cell": "quantized::quantized_rnn_relu_cell_dynamic",
}


# --- per-instance decisions ------------------------------------------------


@dataclass
class _Plan:
    """What happens to one RNN instance: quantized to ``dtype``, or float for ``reason``."""

    dtype: torch.dtype | None
    weight_observer: Any = None
    reason: str | None = None

    @property
    def mode(self) -> str:
        if self.dtype is not None:
            return str(self.dtype)
        # A float op is tagged with its reason, so instances sharing a graph must share the reason.
        return "float" if not _is_tagged(self.reason) else f"float: {self.reason}"


def _is_tagged(reason: str | None) -> bool:
    """Whether the RNN op left float for ``reason`` carries it as a tag (see the module docstring)."""
    return reason is not None and reason != _NO_QCONFIG_REASON


def _plan_for(module: torch._C.ScriptModule, qconfig: Any) -> _Plan:
    if is_instance_of(module, nn.RNN):
        return _Plan(None, reason="nn.RNN has no dynamic quantized kernel (eager quantize_dynamic leaves it float)")
    if qconfig is None:
        return _Plan(None, reason=_NO_QCONFIG_REASON)
    # Eager falls back to the default dynamic weight observer when the
    # qconfig has none; so does this pass.
    observer = qconfig.weight if qconfig.weight is not None else default_dynamic_qconfig.weight
    dtype = observer_dtype(observer)
    if dtype not in _SUPPORTED_DTYPES:
        return _Plan(
            None,
            reason=f"weight observer dtype {dtype} is not supported by the dynamic RNN kernels "
            "(torch.qint8 or torch.float16)",
        )
    if is_instance_of(module, nn.LSTM) and module.hasattr("weight_hr_l0"):
        return _Plan(None, reason="LSTM with proj_size > 0: the quantized LSTM kernels have no projection")
    return _Plan(dtype, weight_observer=observer)


def _quantized_weight(weight: torch.Tensor, plan: _Plan) -> torch.Tensor:
    """The weight as eager's dynamic RNN modules quantize it (int8) or keep it (fp16)."""
    if plan.dtype == torch.float16:
        return weight.float()
    observer = fresh_observer(plan.weight_observer)
    observer(weight)
    return _quantize_weight(weight.float(), observer)


def _prepack(weight: torch.Tensor, bias: torch.Tensor | None, plan: _Plan) -> Any:
    quantized = _quantized_weight(weight, plan)
    if plan.dtype == torch.float16:
        return torch.ops.quantized.linear_prepack_fp16(quantized, bias)
    return torch.ops.quantized.linear_prepack(quantized, bias)


def _no_bias() -> torch.Tensor:
    # The CPU kernels add the bias inside the packed linear; the cell params'
    # own bias tensors are only carried along, so an empty one stands in.
    return torch.zeros(0)


def _cell_params(w_ih, w_hh, b_ih, b_hh, plan: _Plan) -> Any:
    packed_ih = _prepack(w_ih, b_ih, plan)
    packed_hh = _prepack(w_hh, b_hh, plan)
    if plan.dtype == torch.float16:
        return torch.ops.quantized.make_quantized_cell_params_fp16(packed_ih, packed_hh)
    b_ih = _no_bias() if b_ih is None else b_ih
    b_hh = _no_bias() if b_hh is None else b_hh
    # reduce_range=True: what eager's dynamic LSTM/GRU (module version 2) uses.
    return torch.ops.quantized.make_quantized_cell_params_dynamic(packed_ih, packed_hh, b_ih, b_hh, True)


# --- reading an RNN op -----------------------------------------------------


@dataclass
class _Site:
    """An RNN op found in a graph: its weights' owner, relative to ``%self``."""

    op: _RnnOp
    suffix: tuple[str, ...]
    reason: str | None = None  # why it cannot be rewritten, if it cannot


def _chain(value: torch._C.Value) -> list[str] | None:
    return getattr_path(value)


def _weights_suffix(value: torch._C.Value) -> tuple[tuple[str, ...], list[list[str]]] | None:
    """Owner path of the weights in ``value`` and each weight's attribute chain."""
    chain = _chain(value)
    if chain:
        return tuple(chain[:-1]), [chain]
    node = value.node()
    if node.kind() != "prim::ListConstruct":
        return None
    chains = [_chain(v) for v in node.inputs()]
    if not chains or any(not c for c in chains):
        return None
    owners = {tuple(c[:-1]) for c in chains}
    if len(owners) != 1:
        return None
    return owners.pop(), chains


def _site_of(op: _RnnOp, match: Match) -> _Site | None:
    if op.name == "traced_cell_linear":
        return _traced_cell_site(op, match)
    found = _weights_suffix(match[op.params])
    if found is None:
        return None  # weights not read from a module attribute: not a module's RNN
    suffix, _ = found
    site = _Site(op, suffix)
    if op.params == "params":
        flags = ("has_biases", "num_layers", "bidirectional")
        loose = [name for name in flags if not is_constant(match[name])]
        if loose:
            site.reason = f"{op.overload} with non-constant {', '.join(loose)}"
    else:
        w_hh = _chain(match["w_hh"])
        if _chain(match["w_ih"])[-1:] != ["weight_ih"] or w_hh is None or w_hh != [*suffix, "weight_hh"]:
            site.reason = f"{op.overload} whose weights are not the cell's weight_ih / weight_hh"
    return site


def _traced_cell_site(op: _RnnOp, match: Match) -> _Site | None:
    weight = _chain(match["weight"])
    if not weight or weight[-1] not in PACKED_WEIGHT:
        return None
    suffix = tuple(weight[:-1])
    bias_name = "bias_" + weight[-1].removeprefix("weight_")
    bias = match["bias"]
    if bias.type().kind() != "NoneType" and _chain(bias) != [*suffix, bias_name]:
        return _Site(op, suffix, reason=f"traced cell linear on {weight[-1]} with a bias other than {bias_name}")
    return _Site(op, suffix)


def _overload_is(overload: str) -> Callable[[Match], bool]:
    def check(match: Match) -> bool:
        return match.anchor.schema().split("(", 1)[0] == overload

    check.__name__ = f"overload_is({overload})"
    return check


# --- rewriting one class type's graphs --------------------------------------


@dataclass
class _Context:
    """The instances whose graphs are being rewritten, and what was decided for each RNN."""

    root: torch._C.ScriptModule
    hosts: list[str]
    plans: dict[str, _Plan]
    slots: set[tuple[str, str]]
    packed: dict[tuple[str, str], Any] = field(default_factory=dict)
    sites: dict[Any, _Site] = field(default_factory=dict)

    def owners(self, site: _Site) -> list[str]:
        return [_join(host, site.suffix) for host in self.hosts]


def _join(host: str, suffix: tuple[str, ...]) -> str:
    return ".".join(part for part in (host, *suffix) if part)


def _owner_plan(ctx: _Context, owner: str, op: _RnnOp) -> _Plan | None:
    plan = ctx.plans.get(owner)
    if plan is None:
        return None
    module = resolve_path(ctx.root, owner)
    return plan if is_instance_of(module, *op.owner) else None


def _should_rewrite(ctx: _Context, op: _RnnOp, match: Match) -> bool:
    site = _site_of(op, match)
    if site is None:
        return False
    plans = [_owner_plan(ctx, owner, op) for owner in ctx.owners(site)]
    if any(p is None for p in plans):
        return False
    if any(p.dtype is None for p in plans):
        # Unsharing gave the owners of one graph one mode, so one reason.
        if _is_tagged(plans[0].reason):
            tag_float_op(match.anchor, UNSUPPORTED_OP, plans[0].reason)
        return False
    if site.reason is None:
        site.reason = _shape_problem(ctx, op, match, site)
    if site.reason is not None:
        for owner in ctx.owners(site):
            _record_float(ctx.root, owner, site.reason)
        tag_float_op(match.anchor, UNSUPPORTED_OP, site.reason)
        return False
    ctx.sites[match.anchor] = site
    return True


def _shape_problem(ctx: _Context, op: _RnnOp, match: Match, site: _Site) -> str | None:
    if op.params != "params":
        return None
    layers = match.constant("num_layers")
    directions = 2 if match.constant("bidirectional") else 1
    per_cell = 4 if match.constant("has_biases") else 2
    for owner in ctx.owners(site):
        weights = _tensors(ctx.root, owner, site, match[op.params])
        if len(weights) == layers * directions * (per_cell + 1):
            return "LSTM with proj_size > 0: the quantized LSTM kernels have no projection"
        if len(weights) != layers * directions * per_cell:
            return f"{op.overload} with {len(weights)} weights for {layers} layer(s) x {directions} direction(s)"
        if any(w.dtype != torch.float32 for w in weights):
            return "weights are not float32"
    return None


def _tensors(root, owner: str, site: _Site, value: torch._C.Value) -> list[torch.Tensor]:
    _, chains = _weights_suffix(value)
    module = resolve_path(root, owner)
    found = []
    for chain in chains:
        item = resolve_path(module, chain[len(site.suffix) :])
        found.extend(item if isinstance(item, list) else [item])
    return found


def _record_float(root, path: str, reason: str) -> None:
    module = resolve_path(root, path)
    if module.hasattr(FLOAT_REASON_ATTR):
        module.setattr(FLOAT_REASON_ATTR, reason)
    else:
        register_attribute(module, FLOAT_REASON_ATTR, reason)


def _set_packed(ctx: _Context, owner: str, name: str, make: Callable[[], Any]) -> None:
    """Register ``make()`` as attribute ``name`` of the instance at ``owner``, once."""
    if (owner, name) in ctx.packed:
        return
    module = resolve_path(ctx.root, owner)
    # Instances sharing a class type share its attribute slots: a slot this
    # pass added for a sibling is expected, any other one is the user's.
    slot = (_type_key(module), name)
    if module.hasattr(name) and slot not in ctx.slots:
        raise ValueError(f"module {owner!r} already has an attribute {name!r}; cannot store packed weights there")
    value = make()
    register_attribute(module, name, value)
    ctx.slots.add(slot)
    ctx.packed[(owner, name)] = value


def _insert_getattr(graph, base, names: list[str], owner_types: list[Any], before) -> torch._C.Value:
    value = base
    for name, type_ in zip(names, owner_types):
        value = insert_getattr(graph, value, name, type_, before=before).output()
    return value


def _attr_value(ctx: _Context, graph, site: _Site, name: str, before) -> torch._C.Value:
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


def _build_fused(ctx: _Context, op: _RnnOp, graph, match: Match, before) -> list[torch._C.Value]:
    site = ctx.sites[match.anchor]
    layers = match.constant("num_layers")
    directions = 2 if match.constant("bidirectional") else 1
    has_biases = match.constant("has_biases")
    per_cell = 4 if has_biases else 2
    for owner in ctx.owners(site):
        plan = ctx.plans[owner]
        weights = _tensors(ctx.root, owner, site, match[op.params])
        for k in range(layers * directions):
            group = weights[k * per_cell : (k + 1) * per_cell]
            w_ih, w_hh = group[0], group[1]
            b_ih, b_hh = (group[2], group[3]) if has_biases else (None, None)
            make = functools.partial(_cell_params, w_ih, w_hh, b_ih, b_hh, plan)
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
    node = insert_op(graph, _QUANTIZED_FUSED[family], inputs, before=before, n_outputs=len(match.outputs()))
    return list(node.outputs())


def _build_cell(ctx: _Context, op: _RnnOp, graph, match: Match, before) -> list[torch._C.Value]:
    site = ctx.sites[match.anchor]
    for owner in ctx.owners(site):
        plan = ctx.plans[owner]
        module = resolve_path(ctx.root, owner)
        for weight_name, attr in PACKED_WEIGHT.items():
            bias_name = "bias_" + weight_name.removeprefix("weight_")

            def make(module=module, weight_name=weight_name, bias_name=bias_name, plan=plan):
                bias = module.getattr(bias_name) if module.hasattr(bias_name) else None
                return _prepack(module.getattr(weight_name), bias, plan)

            _set_packed(ctx, owner, attr, make)
    packed_ih = _attr_value(ctx, graph, site, PACKED_WEIGHT["weight_ih"], before)
    packed_hh = _attr_value(ctx, graph, site, PACKED_WEIGHT["weight_hh"], before)
    biases = []
    for name in ("b_ih", "b_hh"):
        value = match[name]
        if value.type().kind() == "NoneType":
            value = insert_constant(graph, _no_bias(), before=before)
        biases.append(value)
    inputs = [match["input"], match["hx"], packed_ih, packed_hh, *biases]
    node = insert_op(graph, _QUANTIZED_CELL[op.name], inputs, before=before, n_outputs=len(match.outputs()))
    return list(node.outputs())


def _build_traced_cell_linear(ctx: _Context, op: _RnnOp, graph, match: Match, before) -> list[torch._C.Value]:
    site = ctx.sites[match.anchor]
    weight_name = _chain(match["weight"])[-1]
    attr = PACKED_WEIGHT[weight_name]
    bias_name = "bias_" + weight_name.removeprefix("weight_")
    for owner in ctx.owners(site):
        plan = ctx.plans[owner]
        module = resolve_path(ctx.root, owner)

        def make(module=module, plan=plan):
            bias = module.getattr(bias_name) if module.hasattr(bias_name) else None
            return _prepack(module.getattr(weight_name), bias, plan)

        _set_packed(ctx, owner, attr, make)
    packed = _attr_value(ctx, graph, site, attr, before)
    if ctx.plans[ctx.owners(site)[0]].dtype == torch.float16:
        node = insert_op(graph, "quantized::linear_dynamic_fp16", [match["input"], packed], before=before)
    else:
        # The dynamic cell kernels quantize activations with reduce_range=True.
        reduce_range = insert_constant(graph, True, before=before)
        node = insert_op(graph, "quantized::linear_dynamic", [match["input"], packed, reduce_range], before=before)
    return [node.output()]


def _builder_for(op: _RnnOp):
    if op.name == "traced_cell_linear":
        return _build_traced_cell_linear
    return _build_fused if op.params == "params" else _build_cell


def _bound_table(ctx: _Context) -> list[Rewrite]:
    table = []
    for op in _TABLE:
        should = functools.partial(_should_rewrite, ctx, op)
        table.append(
            Rewrite(
                name=op.name,
                pattern=op.pattern,
                replacement=functools.partial(_builder_for(op), ctx, op),
                filters=(_overload_is(op.overload), should),
            )
        )
    return table


# --- whole-module analysis ---------------------------------------------------


def _type_key(module: torch._C.ScriptModule) -> str:
    return module._type().qualified_name()


def _instances_by_type(root) -> dict[str, list[str]]:
    found: dict[str, list[str]] = defaultdict(list)
    for path, module in named_modules(root):
        found[_type_key(module)].append(path)
    return found


_RNN_KINDS = tuple({op.overload.split(".")[0] for op in _TABLE})


def _sites_in(graph) -> list[tuple[_RnnOp, _Site]]:
    """RNN ops of ``graph`` whose weights come from a module, with the op they match."""
    found = []
    index = NodeIndex(graph)
    for op in _TABLE:
        pattern = compile_pattern(op.pattern)
        for node in index.of_kind(pattern.anchor.kind()):
            match = match_at(pattern, node)
            if match is None or not _overload_is(op.overload)(match):
                continue
            site = _site_of(op, match)
            if site is not None:
                found.append((op, site))
    return found


def _types_to_unshare(root, plans: dict[str, _Plan]) -> list[str]:
    """Instances that must get a class type of their own before rewriting.

    A class type's graphs are rewritten once for all its instances, so the
    instances of one type must all be quantized the same way (or all left
    float): RNN instances by their own plan, and modules whose graphs hold an
    inlined RNN op by the plans of the RNNs their ops read.
    """
    paths: set[str] = set()
    instances = _instances_by_type(root)
    for type_paths in instances.values():
        if len(type_paths) < 2:
            continue
        modes = {plans[p].mode if p in plans else "float" for p in type_paths}
        if any(p in plans for p in type_paths) and len(modes) > 1:
            paths.update(type_paths)
        representative = resolve_path(root, type_paths[0])
        for method in representative._method_names():
            for op, site in _sites_in(method_graph(representative, method)):
                if not site.suffix:
                    continue  # the RNN's own graph: covered by its own plan
                owner_modes = set()
                for host in type_paths:
                    owner = _join(host, site.suffix)
                    plan = plans.get(owner)
                    owner_modes.add(plan.mode if plan is not None else "float")
                if len(owner_modes) > 1:
                    paths.update(type_paths)
    return sorted(paths)


def _plans(root, qconfig_dict: dict) -> dict[str, _Plan]:
    qconfigs = resolve_qconfigs(root, qconfig_dict)
    return {
        path: _plan_for(module, qconfigs.get(path))
        for path, module in named_modules(root)
        if is_instance_of(module, *RNN_MODULE_CLASSES)
    }


def quantize_rnn(module: Any, qconfig_dict: dict) -> Any:
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
    """
    root = as_cpp(module)
    plans = _plans(root, qconfig_dict)
    if not plans:
        return module
    shared = _types_to_unshare(root, plans)
    if shared:
        root = unshare_types(root, shared)
    for path, plan in plans.items():
        if plan.dtype is None:
            _record_float(root, path, plan.reason)
    instances = _instances_by_type(root)
    slots: set[tuple[str, str]] = set()
    for type_paths in instances.values():
        representative = resolve_path(root, type_paths[0])
        ctx = _Context(root, type_paths, plans, slots)
        table = _bound_table(ctx)
        for method in representative._method_names():
            graph = method_graph(representative, method)
            index = NodeIndex(graph)
            if not index.of_kind(*_RNN_KINDS):
                continue
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
        return [(path, plan.reason) for path, plan in _plans(root, qconfig_dict).items() if plan.dtype is None]
    return [
        (path, sub.getattr(FLOAT_REASON_ATTR)) for path, sub in named_modules(root) if sub.hasattr(FLOAT_REASON_ATTR)
    ]


def is_rnn_module(module: Any) -> bool:
    """Whether a script module is an RNN whose graphs belong to this pass."""
    return is_instance_of(as_cpp(module), *RNN_MODULE_CLASSES)
