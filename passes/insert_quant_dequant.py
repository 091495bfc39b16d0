"""Turn calibrated observers into quantize / dequantize pairs (convert, first half).

Takes a module prepared by observer insertion and calibrated: every observed
value ``%v`` of a method graph is followed by a call of an ``_observer_N``
submodule of the module owning the graph. Each observer's qparams (from its
``calculate_qparams``) become attributes of that module, named after the
observed value (``<value>_scale_<k>``, ``<value>_zero_point_<k>``,
``<value>_axis_<k>`` for per-channel, ``<value>_scalar_type_<k>``; ``k`` is
the first index free on the module), and the observer call becomes a
quantize / dequantize pair reading them::

    %_observer_1 = prim::GetAttr[name="_observer_1"](%self)
    %x.1 = prim::CallMethod[name="forward"](%_observer_1, %x)
    %y = aten::conv2d(%x.1, ...)

becomes::

    %x_scale_0 : float = prim::GetAttr[name="x_scale_0"](%self)
    %x_zero_point_0 : int = prim::GetAttr[name="x_zero_point_0"](%self)
    %x_scalar_type_0 : int = prim::GetAttr[name="x_scalar_type_0"](%self)
    %x.quant = aten::quantize_per_tensor(%x, %x_scale_0, %x_zero_point_0, %x_scalar_type_0)
    %x.dequant.0 = aten::dequantize(%x.quant)
    %y = aten::conv2d(%x.dequant.0, ...)

Observer submodules are removed. Instances that share a class type share one
rewritten graph; each keeps its own qparams values under the same names.

Before qparams are computed (static quantization), what calibration left
is checked (``check_calibration``): a weight whose observer saw no data (a
branch calibration never took, or no calibration at all) is observed from
the weight itself, as eager convert does; statistics holding NaN or inf are
a ValueError naming the first observed value that saw them; values forward
always computes that saw no data, and activations beyond
``passes._observer_state.QUANTIZABLE_RANGE``, are each listed in one
warning.

Dynamic quantization (``QuantType.DYNAMIC``): weights are quantized with
their observer's qparams (the weight observers run here, on the weights, so
no calibration is needed); activations get ``aten::_choose_qparams_per_tensor``
at run time; fp16 observers give ``aten::_saturate_weight_to_fp16`` instead;
an embedding_bag weight observed by a ``PlaceholderObserver`` whose
``custom_op_name`` is ``embedding_bag_byte`` / ``embedding_bag_4bit`` turns the
bag into ``quantized::embedding_bag_{byte,4bit}_rowwise_offsets`` over a
prepacked weight (in static mode too). Those kernels always sum, whatever
their mode argument says: a ``mode="mean"`` bag divides their result by the
bag sizes (the reference returns the sum), and a ``mode="max"`` bag keeps
its float weight and op.

Then ``forward`` is inlined and quantization is propagated through ops that
need no observer of their own (see ``passes._quant_propagation``): shape ops
run on the quantized tensor, value ops (avg pooling, clamp, ...) are
requantized with their input's qparams, fixed-range ops (sigmoid, tanh) with
fixed qparams, and a dequantize feeding only ``size``/``len``/``dim``/``numel``
is dropped. The result is the ``debug=True`` model of convert: float ops
between quantize / dequantize pairs, which finalize fuses into quantized ops.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Optional

import torch
from torch.ao.quantization.quant_type import QuantType

from passes import _observer_state as observer_state
from passes._observed_values import aten_name, call_name, is_weight
from passes._quant_propagation import NodeBuilder, propagate_quantization
from passes.swap_functional_linear import swap_functional_linear
from qgraph.ir import (
    CppModule,
    as_cpp,
    clone_module,
    drop_attributes,
    getattr_path,
    instances_by_type,
    like,
    method_graph,
    method_key,
    resolve_path,
)
from qgraph.ir.graph import Graph, Node, Value, inputs_of, nested_blocks, outputs_of, source_location, walk

__all__ = ["insert_quant_dequant", "insert_quant_dequant_in_place"]

OBSERVER_MARK = "_observer_"
_TENSOR = torch._C.TensorType.get()
_FLOAT = torch._C.FloatType.get()
_INT = torch._C.IntType.get()

# Per-channel qschemes (TorchScript stores a qscheme attribute as its enum
# code). per_channel_affine_float_qparams is not among them, as in the reference.
_PER_CHANNEL_SCHEMES = (torch.per_channel_affine, torch.per_channel_symmetric, 1, 3)

# Embedding-bag weight-only quantization: observer custom_op_name -> (prepack op,
# quantized op, extra prepack arguments). 4-bit prepacking takes
# (optimized_qparams=False, nbins=200, ratio=0.16 as a float32) like the reference.
EMBEDDING_BAG_OPS = {
    "embedding_bag_byte": (
        "quantized::embedding_bag_byte_prepack",
        "quantized::embedding_bag_byte_rowwise_offsets",
        (),
    ),
    "embedding_bag_4bit": (
        "quantized::embedding_bag_4bit_prepack",
        "quantized::embedding_bag_4bit_rowwise_offsets",
        (False, 200, float(torch.tensor(0.16, dtype=torch.float32))),
    ),
}


# EmbeddingBag modes: F.embedding_bag names them, aten::embedding_bag numbers them.
EMBEDDING_BAG_MODES = {"sum": 0, "mean": 1, "max": 2}


@functools.cache
def _bag_mean_graph() -> Graph:
    """``sums`` of each bag divided by its size (empty bags stay 0), as a graph to inline."""

    def bag_mean(sums: torch.Tensor, indices: torch.Tensor, offsets: Optional[torch.Tensor], include_last_offset: bool):
        assert offsets is not None, "quantized embedding_bag needs offsets"
        if include_last_offset:
            sizes = offsets[1:] - offsets[:-1]
        else:
            end = torch.full([1], indices.numel(), dtype=offsets.dtype)
            sizes = torch.cat([offsets[1:], end]) - offsets
        return sums / sizes.clamp(min=1).to(sums.dtype).unsqueeze(1)

    return torch.jit.script(bag_mean).graph


# TorchScript keeps dtype attributes as c10::ScalarType codes.
_SCALAR_TYPE_CODES = {torch.float16: 5, torch.float32: 6, torch.qint8: 12, torch.quint8: 13, torch.qint32: 14}


def _is_dtype(value, *dtypes) -> bool:
    return any(value == dtype or value == _SCALAR_TYPE_CODES[dtype] for dtype in dtypes)


def _quant_type(quant_type) -> QuantType:
    if isinstance(quant_type, QuantType):
        return quant_type
    if isinstance(quant_type, str) and quant_type.lower() in ("static", "dynamic"):
        return QuantType.STATIC if quant_type.lower() == "static" else QuantType.DYNAMIC
    raise ValueError(
        f"quant_type must be QuantType.STATIC, QuantType.DYNAMIC, 'static' or 'dynamic', got {quant_type!r}"
    )


def observer_name(value: Value) -> str | None:
    """The ``_observer_N`` attribute whose ``forward`` produced ``value``, if any."""
    node = value.node()
    if node.kind() != "prim::CallMethod" or node.s("name") != "forward":
        return None
    receiver = node.inputsAt(0).node()
    if receiver.kind() == "prim::GetAttr" and OBSERVER_MARK in receiver.s("name"):
        return receiver.s("name")
    return None


def _nodes_stack_order(graph: Graph) -> list[Node]:
    """Nodes in the order the reference visits them: a block's nodes, then nested blocks last-first."""
    order: list[Node] = []
    stack = [graph.block()]
    while stack:
        block = stack.pop()
        for node in block.nodes():
            order.append(node)
            stack.extend(nested_blocks(node))
    return order


def _invoked_methods(module: CppModule, method: str) -> list[tuple[CppModule, str]]:
    """(module, method) of every ``prim::CallMethod`` of a submodule (or self) that is not an observer."""
    graph = method_graph(module, method)
    self_value = next(graph.inputs())
    invoked = []
    for node in _nodes_stack_order(graph):
        if node.kind() != "prim::CallMethod":
            continue
        receiver = node.inputsAt(0)
        if receiver == self_value:
            invoked.append((module, node.s("name")))
        elif receiver.node().kind() == "prim::GetAttr" and OBSERVER_MARK not in receiver.node().s("name"):
            path = getattr_path(receiver)
            target = resolve_path(module, path) if path is not None else None
            if isinstance(target, CppModule):
                invoked.append((target, node.s("name")))
    return invoked


def _invoked_module(module: CppModule, call: Node) -> CppModule | None:
    path = getattr_path(call.inputsAt(0))
    if path is None:
        return None
    target = module
    for name in path:
        target = target.getattr(name)
        if not isinstance(target, CppModule):
            return None
    return target


def _is_weight(module: CppModule, value: Value) -> bool:
    """Whether ``value`` is used as a weight, here or inside the methods it is passed to."""
    if is_weight(value):
        return True
    result = None
    for use in value.uses():
        if use.user.kind() != "prim::CallMethod":
            continue
        callee = _invoked_module(module, use.user)
        if callee is None:
            return False
        param = inputs_of(method_graph(callee, use.user.s("name")))[use.offset]
        found = _is_weight(callee, param)
        if result is not None and found != result:
            raise RuntimeError(
                f"%{value.debugName()} is passed to methods that use it both as a weight and as an activation"
            )
        result = found
    return bool(result)


def _is_placeholder(observer_value: Value) -> bool:
    ty = observer_value.type()
    return ty.kind() == "ClassType" and "PlaceholderObserver" in ty.qualified_name()


def _qparam_type(value):
    if isinstance(value, torch.Tensor):
        return _TENSOR
    if isinstance(value, float):
        return _FLOAT
    return _INT


class _QuantDequantInserter:
    """State of one run: observers found per method graph, qparams attribute names per observer."""

    def __init__(self, quant_type: QuantType):
        self.quant_type = quant_type
        self.observers: dict[tuple[str, str], list[Node]] = {}
        self.attr_names: dict[Node, dict[str, str]] = {}
        self.observer_attrs: dict[str, set[str]] = {}
        self.doomed: list[Node] = []
        self.weight_observer_fns: dict[Value, object] = {}
        self.instances: dict[str, list[CppModule]] = {}

    # -- dynamic: weight observers run on the weights themselves ------------

    def run_weight_observers(self, module: CppModule, method: str, only_unseen: bool = False) -> None:
        """Run weight observers on their weights (with ``only_unseen``, those that saw no data).

        Static calibration runs weight observers as it runs the model, but
        not the weights of a branch calibration never took (an
        ``if self.training:`` auxiliary head, an ``if flag:`` left False) or
        of a model never calibrated. Weights are known without data, so such
        an observer observes its weight here, as eager convert does.
        """
        for callee, name in _invoked_methods(module, method):
            self.run_weight_observers(callee, name, only_unseen)
        graph = method_graph(module, method)
        self_value = next(graph.inputs())
        weights = [
            v
            for node in _nodes_stack_order(graph)
            for v in outputs_of(node)
            if v.type().isSubtypeOf(_TENSOR) and observer_name(v) is not None and _is_weight(module, v)
        ]
        for value in weights:
            if only_unseen and not observer_state.saw_no_data(module.getattr(observer_name(value))):
                continue
            function = self.weight_observer_fns.get(value)
            if function is None:
                try:
                    function = _subgraph_function(self_value, value)
                except _NotFromAttributes:
                    if only_unseen:
                        # Computed from the inputs: only calibration can observe it.
                        continue
                    raise
                self.weight_observer_fns[value] = function
            function(module)

    # -- observers to quantize / dequantize --------------------------------

    def run(self, module: CppModule, method: str) -> None:
        for callee, name in _invoked_methods(module, method):
            self.run(callee, name)
        key = method_key(module, method)
        graph = method_graph(module, method)
        if key in self.observers:
            # Another instance of this class type: the graph is rewritten
            # already, only this instance's qparams values are new.
            for observer in self.observers[key]:
                _, qparams = self.qparams(module, observer)
                names = self.attr_names[observer]
                for suffix, value in qparams:
                    module.setattr(names[suffix], value)
            return
        found = []
        for node in _nodes_stack_order(graph):
            for value in outputs_of(node):
                if value.type().isSubtypeOf(_TENSOR) and (name := observer_name(value)) is not None:
                    found.append(node)
                    self.observer_attrs.setdefault(module._type().qualified_name(), set()).add(name)
                    self.doomed.extend([node, node.inputsAt(0).node()])
        if not found:
            return
        self.observers[key] = found
        self_value = next(graph.inputs())
        for observer in found:
            per_channel, qparams = self.qparams(module, observer)
            original = observer.inputsAt(1)
            names = {}
            for suffix, value in qparams:
                uid = 0
                while module.hasattr(name := f"{original.debugName()}{suffix}_{uid}"):
                    uid += 1
                module._register_attribute(name, _qparam_type(value), value)
                # Every instance of the class type gets the slot; one that
                # forward never calls is never visited and keeps these values.
                for instance in self.instances.get(module._type().qualified_name(), []):
                    instance.setattr(name, value)
                names[suffix] = name
            self.attr_names[observer] = names
            self.insert_ops(module, graph, self_value, observer, per_channel, names)

    def qparams(self, module: CppModule, observer: Node) -> tuple[bool, list[tuple[str, object]]]:
        """(per-channel?, [(attribute suffix, value)]) in quantize-op argument order."""
        obs = module.getattr(observer_name(observer.output()))
        dtype = obs.getattr("dtype")
        if _is_placeholder(observer.inputsAt(0)):
            if obs.hasattr("is_dynamic") and obs.getattr("is_dynamic"):
                return False, [("_scalar_type", dtype)]
            return False, []
        if _is_dtype(dtype, torch.float16):
            return False, []
        out_of_range = observer_state.observed_magnitude(obs) > observer_state.QUANTIZABLE_RANGE
        if out_of_range and observer_state.searches_histogram(obs):
            result = observer_state.whole_range_qparams(obs)
        else:
            with warnings.catch_warnings():
                # check_calibration has said it once for every observer that saw nothing.
                warnings.filterwarnings("ignore", message="must run observer before calling calculate_qparams")
                result = obs._get_method("calculate_qparams")()
        if not (isinstance(result, tuple) and len(result) == 2 and all(isinstance(t, torch.Tensor) for t in result)):
            raise RuntimeError(
                f"calculate_qparams of observer {observer_name(observer.output())!r} must return "
                f"a tuple of two tensors (scale, zero_point), got {result!r}"
            )
        scale = result[0].to(torch.float)
        zero_point = result[1].to(torch.int)
        qscheme = obs.getattr("qscheme")
        if qscheme in _PER_CHANNEL_SCHEMES:
            return True, [
                ("_scale", scale),
                ("_zero_point", zero_point),
                ("_axis", obs.getattr("ch_axis")),
                ("_scalar_type", dtype),
            ]
        return False, [("_scale", scale.item()), ("_zero_point", zero_point.item()), ("_scalar_type", dtype)]

    def insert_ops(self, module, graph, self_value, observer, per_channel, names) -> None:
        observed = observer.output()
        original = observer.inputsAt(1)
        obs = module.getattr(observer_name(observed))
        cursor = NodeBuilder(graph, after=observer)
        quantize = "aten::quantize_per_channel" if per_channel else "aten::quantize_per_tensor"

        custom_op = obs.getattr("custom_op") if obs.hasattr("custom_op") else None
        if custom_op is not None and _is_placeholder(observer.inputsAt(0)) and "embedding_bag_" in custom_op:
            if _is_weight(module, observed):
                _quantize_embedding_bag(graph, cursor, observed, custom_op)
            observed.replaceAllUsesWith(original)
            return

        dequant: Node
        if self.quant_type == QuantType.DYNAMIC and _is_dtype(obs.getattr("dtype"), torch.float16):
            dequant = cursor.op("aten::_saturate_weight_to_fp16", [observed])
        elif self.quant_type == QuantType.DYNAMIC and not _is_weight(module, observed):
            if not _is_dtype(obs.getattr("dtype"), torch.quint8, torch.qint8):
                observed.replaceAllUsesWith(original)
                return
            dtype = cursor.get_attr(self_value, names["_scalar_type"], _INT)
            dequant = cursor.choose_qparams_quant_dequant(observed, dtype, quantize)
        else:
            inputs = [observed]
            for name in names.values():
                inputs.append(cursor.get_attr(self_value, name, _qparam_type(module.getattr(name))))
            quant = cursor.op(quantize, inputs, name=f"{original.debugName()}.quant", type_=_TENSOR)
            dequant = cursor.dequantize(quant.output(), original)
        observed.replaceAllUsesWith(original)
        original.replaceAllUsesAfterNodeWith(dequant, dequant.output())

    def remove_observer_calls(self) -> None:
        for node in self.doomed:
            node.removeAllInputs()
        for node in self.doomed:
            node.destroy()
        self.doomed.clear()


def _quantize_embedding_bag(graph: Graph, cursor: NodeBuilder, weight: Value, op_name: str) -> None:
    """Replace the embedding_bag reading ``weight`` with its prepacked, quantized form."""
    if op_name not in EMBEDDING_BAG_OPS:
        raise RuntimeError(
            f"embedding_bag weight-only quantization supports custom_op_name in {sorted(EMBEDDING_BAG_OPS)}, got {op_name!r}"
        )
    prepack_op, quantized_op, extra = EMBEDDING_BAG_OPS[op_name]
    bag = None
    for use in weight.uses():
        if (use.user.kind() == "aten::embedding_bag" and use.offset == 0) or (
            call_name(use.user) == "embedding_bag" and use.offset == 2
        ):
            bag = use.user
    if bag is None:
        raise RuntimeError(
            f"%{weight.debugName()} is observed as an embedding_bag weight but no embedding_bag reads it"
        )
    args = inputs_of(bag)
    is_aten = aten_name(bag) == "embedding_bag"
    expected_inputs = 9 if is_aten else 12
    if len(args) != expected_inputs:
        name = "aten::embedding_bag" if is_aten else "F.embedding_bag"
        raise RuntimeError(f"expected {name} to have {expected_inputs} inputs, got {len(args)}")
    mode = _embedding_bag_mode(args[4] if is_aten else args[7])
    if mode == EMBEDDING_BAG_MODES["max"]:
        # The quantized kernels only sum; a max bag keeps its float weight.
        return
    padding_idx = args[-1]
    if padding_idx.type().kind() != "NoneType":
        raise RuntimeError("Expected aten::embedding_bag padding_idx input to be None")
    extra_values = [cursor.constant(v) for v in extra]
    prepack = cursor.op(prepack_op, [weight, *extra_values], type_=_TENSOR)
    none = cursor.constant(None)
    pruned = cursor.constant(False)
    mode_value = cursor.constant(mode)
    if is_aten:
        # indices, offsets, scale_grad_by_freq, mode, pruned_weights (sparse is a
        # training flag; at inference its slot says whether rows were pruned), per_sample_weights
        indices, offsets = args[1], args[2]
        q_args = [prepack.output(), indices, offsets, args[3], mode_value, pruned, args[6]]
    else:
        indices, offsets = args[1], args[3]
        q_args = [prepack.output(), indices, offsets, args[6], mode_value, pruned, args[9]]
    include_last_offset = args[-2]
    q_args += [none, include_last_offset]
    quantized = graph.create(quantized_op, q_args, 1)
    quantized.output().setType(_TENSOR)
    if is_aten:
        quantized.insertBefore(bag)
        for extra_output in outputs_of(bag)[1:]:
            if extra_output.uses():
                raise RuntimeError("Expected aten::embedding_bag to only have use for its first output.")
    else:
        cursor.place(quantized)
    result = quantized.output()
    if mode == EMBEDDING_BAG_MODES["mean"]:
        # The quantized kernels ignore their mode argument and always sum (so
        # do the reference and eager quantized EmbeddingBag): divide by the
        # bag sizes here.
        with graph.insert_point_guard(bag):
            result = graph.insertGraph(_bag_mean_graph(), [result, indices, offsets, include_last_offset])[0]
    bag.outputsAt(0).replaceAllUsesWith(result)
    bag.removeAllInputs()
    bag.destroy()


def _embedding_bag_mode(mode: Value) -> int:
    """The mode of an embedding_bag as aten numbers it, from its constant (a number or F's name)."""
    if mode.node().kind() != "prim::Constant":
        raise ValueError(f"embedding_bag mode %{mode.debugName()} must be a constant to quantize the bag")
    value = mode.toIValue()
    if isinstance(value, str):
        if value not in EMBEDDING_BAG_MODES:
            raise ValueError(f"unknown embedding_bag mode {value!r}; expected one of {sorted(EMBEDDING_BAG_MODES)}")
        return EMBEDDING_BAG_MODES[value]
    return int(value)


class _NotFromAttributes(RuntimeError):
    """A weight that is computed from a method's inputs, not only from module attributes."""


def _subgraph_function(self_value: Value, value: Value):
    """A TorchScript function of ``self`` recomputing ``value`` (a weight observer call and what feeds it)."""
    nodes: list[Node] = []
    seen: set[Node] = set()

    def collect(v: Value) -> None:
        node = v.node()
        if node in seen:
            return
        seen.add(node)
        for input_value in inputs_of(node):
            if input_value.node().kind() == "prim::Param":
                if input_value != self_value:
                    raise _NotFromAttributes(
                        f"the weight observed as %{value.debugName()} depends on %{input_value.debugName()}, "
                        "not only on module attributes"
                    )
                continue
            collect(input_value)
        nodes.append(node)

    collect(value)
    sub = torch._C.Graph()
    remap = {self_value: sub.addInput()}
    remap[self_value].setType(self_value.type())
    for node in nodes:
        clone = sub.createClone(node, lambda v: remap[v])
        sub.insertNode(clone)
        for old, new in zip(outputs_of(node), outputs_of(clone)):
            remap[old] = new
    sub.registerOutput(remap[value])
    return torch._C._create_function_from_graph("observer_subgraph", sub)


@dataclass(frozen=True)
class ObservedSite:
    """One observed value of a calibrated model, where the model computes it."""

    path: str  # dotted path of the module whose graph observes the value; "" is the model
    module: CppModule
    observer: str  # the ``_observer_N`` submodule of ``module``
    value: Value  # the observed value (the observer's input)
    conditional: bool  # inside an ``if`` or loop (here or around a call on the way from forward)

    def describe(self) -> str:
        """``%x in module 'features.3' (model.py:31)``: what a user finds in their code."""
        where = f"module '{self.path}'" if self.path else "the model"
        node = self.value.node()
        if node.kind() == "prim::Param":
            return f"%{self.value.debugName()}, an input of {where}"
        source = source_location(node)
        described = f"%{self.value.debugName()} in {where}"
        callee = getattr_path(node.inputsAt(0)) if node.kind() == "prim::CallMethod" else None
        if callee:
            # A traced call keeps no source line: the submodule tells where it is.
            described += f", the output of '{'.'.join([self.path, *callee] if self.path else callee)}'"
        return described + (f" ({source})" if source else "")

    def is_weight(self) -> bool:
        call = next(use.user for use in self.value.uses() if observer_name(use.user.output()) == self.observer)
        return _is_weight(self.module, call.output())


def observed_sites(module: CppModule, method: str = "forward", path: str = "") -> list[ObservedSite]:
    """Every observed value of ``module.<method>``, callees included, in the order forward computes them.

    A value observed in a method called twice is listed once, as
    unconditional if one of its calls is.
    """
    sites: dict[tuple[str, str], ObservedSite] = {}
    visited: set[tuple[str, str, bool]] = set()

    def visit(current: CppModule, name: str, current_path: str, conditional: bool) -> None:
        if (current_path, name, conditional) in visited:
            return
        visited.add((current_path, name, conditional))
        graph = method_graph(current, name)
        self_value = next(graph.inputs())
        for node in walk(graph):
            if node.kind() != "prim::CallMethod":
                continue
            branch = conditional or node.owningBlock().owningNode() is not None
            observer = observer_name(node.output()) if node.outputsSize() == 1 else None
            if observer is not None:
                known = sites.get((current_path, observer))
                if known is None or (known.conditional and not branch):
                    sites[(current_path, observer)] = ObservedSite(
                        current_path, current, observer, node.inputsAt(1), branch
                    )
                continue
            receiver = node.inputsAt(0)
            if receiver == self_value:
                visit(current, node.s("name"), current_path, branch)
                continue
            names = getattr_path(receiver)
            target = resolve_path(current, names) if names else None
            if isinstance(target, CppModule):
                visit(target, node.s("name"), ".".join(p for p in [current_path, *names] if p), branch)

    visit(module, method, path, False)
    return list(sites.values())


def first_non_finite_site(module: CppModule, method: str = "forward") -> ObservedSite | None:
    """The first observed value (in forward's order) whose observer's statistics hold NaN or inf."""
    for site in observed_sites(module, method):
        if observer_state.saw_non_finite(site.module.getattr(site.observer)):
            return site
    return None


def non_finite_calibration_message(site: ObservedSite | None, failure: str = "") -> str:
    """What to tell a user whose calibration data held NaN or inf (``failure``: the observer's own error)."""
    if site is not None:
        where = f"the first observed value that saw them is {site.describe()}"
    else:
        where = f"an observer failed on them ({failure})" if failure else "an observer failed on them"
    return f"calibration data holds non-finite values (NaN or inf): {where}; calibrate with finite data"


_LISTED = 10


def _listing(items: list[str]) -> str:
    shown = "; ".join(items[:_LISTED])
    return shown if len(items) <= _LISTED else f"{shown}; and {len(items) - _LISTED} more"


def check_calibration(module: CppModule, method: str = "forward") -> None:
    """Refuse or flag what calibration left the observers of a static model with.

    - statistics that hold NaN or an infinity: ValueError naming the first
      observed value (in forward's order) that saw them, with its module
      and source line; the qparams would be NaN or the histogram unusable;
    - observers that saw no data although forward always reaches them
      (calibration never ran, or fed only empty tensors): one UserWarning
      listing those values; they get the observer's default qparams (scale
      1.0, zero point 0). Observers inside an ``if`` or a loop stay quiet: a
      branch calibration never took (a training-only head, the other side
      of a block class's ``if``) is usually one inference never takes;
    - activations larger than ``QUANTIZABLE_RANGE``: one UserWarning
      listing them (their qparams come from the whole observed range).
    """
    unseen, too_large = [], []
    for site in observed_sites(module, method):
        observer = site.module.getattr(site.observer)
        if observer_state.saw_non_finite(observer):
            raise ValueError(non_finite_calibration_message(site))
        if observer_state.saw_no_data(observer):
            if not site.conditional:
                unseen.append(site.describe())
        elif observer_state.observed_magnitude(observer) > observer_state.QUANTIZABLE_RANGE and not site.is_weight():
            too_large.append(f"{site.describe()}: {observer_state.observed_magnitude(observer):.3g}")
    if unseen:
        warnings.warn(
            f"{len(unseen)} observed value(s) saw no calibration data (calibration never ran the model, or gave "
            "it only empty tensors), so they are quantized with default qparams (scale 1.0, zero point 0): "
            + _listing(unseen),
            UserWarning,
            stacklevel=3,
        )
    if too_large:
        warnings.warn(
            f"{len(too_large)} activation(s) are out of a quantizable range (magnitude above "
            f"{observer_state.QUANTIZABLE_RANGE:.0e}; int8 cannot represent them usefully), so their qparams cover "
            "the whole observed range: " + _listing(too_large),
            UserWarning,
            stacklevel=3,
        )


def insert_quant_dequant(
    module, method_name: str = "forward", inplace: bool = False, debug: bool = False, quant_type=QuantType.STATIC
):
    """Replace calibrated observers by quantize/dequantize ops; see the module docstring.

    ``module`` is a ScriptModule (or its ``._c``) after observer insertion and
    calibration; the result is the same kind of object. As PyTorch's pass of
    the same name does, the rewrite goes to a clone with fresh class types,
    so ``module`` itself is left as it was: with ``inplace=False`` the clone
    has copies of the tensors, with ``inplace=True`` it shares ``module``'s.
    ``debug`` only matters for warnings (the graph produced is the debug
    model either way).
    """
    cpp = as_cpp(module)
    _check_method(cpp, method_name)
    result = insert_quant_dequant_in_place(clone_module(cpp, share_values=inplace), method_name, debug, quant_type)
    return like(result, module)


def insert_quant_dequant_in_place(
    module, method_name: str = "forward", debug: bool = False, quant_type=QuantType.STATIC
):
    """``insert_quant_dequant`` on ``module`` itself, for a pipeline that cloned the caller's model already.

    Returns the converted module as a ``torch._C.ScriptModule``: a new root
    (removing the observers gives the class types new layouts), after which
    ``module`` must not be used.
    """
    quant_type = _quant_type(quant_type)
    work = as_cpp(module)
    _check_method(work, method_name)
    inserter = _QuantDequantInserter(quant_type)
    inserter.instances = instances_by_type(work)
    if quant_type == QuantType.DYNAMIC:
        inserter.run_weight_observers(work, method_name)
    else:
        inserter.run_weight_observers(work, method_name, only_unseen=True)
        check_calibration(work, method_name)
    inserter.run(work, method_name)
    inserter.remove_observer_calls()
    # Dropping the observers rebuilds the module with new class types, hence
    # new method objects: inlining below must not see call targets whose
    # optimized graphs were cached (by calibration runs) before the rewrite.
    result = drop_attributes(work, inserter.observer_attrs)
    swap_functional_linear(result)
    graph = method_graph(result, "forward")
    torch._C._jit_pass_inline(graph)
    torch._C._jit_pass_constant_propagation(graph)
    propagate_quantization(graph, debug=debug)
    return result


def _check_method(module, method_name: str) -> None:
    if not module._has_method(method_name):
        raise ValueError(f"module has no method {method_name!r} to convert")
