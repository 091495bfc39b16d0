"""Freeze a finalized module, prepacking weights straight from their attributes first.

Takes the module of finalize after quant fusion (``forward`` inlined; each
weight reaches its ``quantized::*_prepack`` through ``prim::GetAttr`` reads
and quantize ops) and returns the frozen module. PyTorch's freezing turns
every attribute read into a ``prim::Constant`` and then runs common
subexpression elimination and constant pooling, which compare tensor
constants pairwise: with one weight and one bias per layer that is
quadratic in depth. So, when no attribute can change at run time, the
prepacking is done here first, on the attribute values, and its result
kept as an attribute ``_packed_params_<k>`` (the shape ``fold_prepacking``
leaves); the weights are then dead and freezing has no tensors to compare::

    %conv : __torch__.Conv2d = prim::GetAttr[name="conv"](%self)
    %w : Tensor = prim::GetAttr[name="weight"](%conv)
    %w_scale : float = prim::GetAttr[name="w_scale_0"](%conv)
    ...
    %w_q = aten::quantize_per_tensor(%w, %w_scale, %w_zero_point, %w_scalar_type)
    %b : Tensor? = prim::GetAttr[name="bias"](%conv)
    %packed = quantized::conv2d_prepack(%w_q, %b, %stride, %padding, %dilation, %groups)
    %y = quantized::conv2d(%x_q, %packed, %scale, %zero_point)

becomes, frozen::

    %packed = prim::GetAttr[name="_packed_params_0"](%self)
    %y = quantized::conv2d(%x_q, %packed, 0.0081, 64)

While PyTorch freezes ``forward``, the packed params reach it as extra
arguments and only afterwards become attribute reads of the frozen module:
freezing's common subexpression elimination hashes every read of ``%self``
(or every object constant) alike and would compare them pairwise too.

The packed params are computed by the same kernels on the same values
(detached, as freezing detaches them), so they are the bits freezing and
``fold_prepacking`` would give. Prepacking is done early only when freezing
would fold every attribute it reads: ``forward`` sets no attribute, no
attribute read there is passed to an op that may write or alias it, and no
``preserved_attrs`` are asked for (a preserved attribute or method keeps
values mutable). Otherwise, and for prepacks fed by anything but constants,
attribute reads, lists and quantize ops, the module is frozen as it is and
``fold_prepacking`` deals with what freezing leaves.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, cast

import torch

from qgraph.ir import (
    CppModule,
    Node,
    NodeIndex,
    Value,
    as_cpp,
    erase_dead,
    inputs_of,
    insert_getattr,
    is_alive,
    ivalue,
    like,
    method_graph,
    register_attribute,
    walk,
)
from qgraph.quant.ops import PREPACK_OPS
from qgraph.quant.packed_params import read_packed_from_attribute

__all__ = ["freeze"]

_PREPACK_KINDS = frozenset(PREPACK_OPS)
# Ops that only read their inputs and return new values: a weight may pass
# through them on its way to the prepack, and their reads do not keep an
# attribute from being folded.
_PURE_WEIGHT_OPS = frozenset({"aten::quantize_per_tensor", "aten::quantize_per_channel", *PREPACK_OPS})
_UNFOLDABLE = object()
_SLICE_STRUCTURE = frozenset({"prim::Constant", "prim::GetAttr", "prim::ListConstruct", "prim::TupleConstruct"})


def freeze(module: Any, preserved_attrs: Sequence[str] = ()) -> Any:
    """``torch._C._freeze_module`` of ``module``, with weight prepacking done on the attributes first.

    ``module`` is a ScriptModule or its ``._c`` with an inlined ``forward``;
    it is changed (prepacks become attribute reads) before being frozen.
    Returns the frozen module, of the same kind as ``module``.
    """
    module_c = as_cpp(module)
    if isinstance(preserved_attrs, str) or not all(isinstance(name, str) for name in preserved_attrs):
        raise TypeError(f"preserved_attrs must be a list of attribute names, got {preserved_attrs!r}")
    preserved = list(preserved_attrs)
    reads: list[Node] = []
    if not preserved and module_c._has_method("forward"):
        reads = _prepack_from_attributes(module_c)
    if not reads:
        return like(cast(CppModule, torch._C._freeze_module(module_c, preserved)), module)
    return like(_freeze_with_packed_arguments(module_c, reads), module)


def _prepack_from_attributes(module_c: CppModule) -> list[Node]:
    """Replace attribute-fed prepacks of ``forward`` by packed-params attribute reads; the reads."""
    graph = method_graph(module_c, "forward")
    self_value = next(graph.inputs())
    # Freezing drops dead code too; dropping it first keeps dead prepacks
    # (a traced call whose result is unused) from taking attribute numbers.
    erase_dead(graph)
    index = NodeIndex(graph)
    if index.of_kind("prim::SetAttr") or not _attributes_read_only(index):
        return []
    reads: list[Node] = []
    next_index = 0
    for node in [n for n in walk(graph) if n.kind() in _PREPACK_KINDS]:
        order = _constant_slice(node, self_value)
        if order is None:
            continue
        packed = _evaluate(order, node, module_c, self_value)
        if packed is _UNFOLDABLE:
            continue
        read, next_index = read_packed_from_attribute(module_c, graph, self_value, node, packed, next_index)
        reads.append(read)
    if reads:
        erase_dead(graph)
    return [read for read in reads if is_alive(read)]


def _freeze_with_packed_arguments(module_c: CppModule, reads: list[Node]) -> CppModule:
    """Freeze ``module_c`` while its packed params reach ``forward`` as arguments, then read them back.

    Freezing would turn each packed-params read into a constant (or, kept,
    into a ``prim::GetAttr`` of ``%self``); all of those look alike to its
    common subexpression elimination, which then compares them pairwise.
    Arguments are values it leaves alone, so for the time of freezing each
    read's uses go to an extra argument of ``forward``. The method's schema
    is read first, so callers keep seeing the original signature.
    """
    forward = module_c._get_method("forward")
    forward.schema  # noqa: B018 -- computes and caches the schema before the graph gains arguments
    graph = forward.graph
    names, packed = [], []
    arguments = []
    for read in reads:
        argument = graph.addInput(read.s("name"))
        argument.setType(read.output().type())
        read.output().replaceAllUsesWith(argument)
        arguments.append(argument)
        names.append(read.s("name"))
        packed.append(module_c.getattr(read.s("name")))
    first_argument = len(inputs_of(graph)) - len(arguments)
    try:
        frozen = cast(CppModule, torch._C._freeze_module(module_c, []))
    finally:
        for read, argument in zip(reads, arguments):
            argument.replaceAllUsesWith(read.output())
        for position in reversed(range(first_argument, first_argument + len(arguments))):
            graph.eraseInput(position)
    frozen_graph = method_graph(frozen, "forward")
    self_value = next(frozen_graph.inputs())
    frozen_arguments = inputs_of(frozen_graph)[first_argument:]
    for read, name, value, argument in zip(reads, names, packed, frozen_arguments):
        register_attribute(frozen, name, value, argument.type())
        users = [use.user for use in argument.uses()]
        if users:
            first = min((_in_top_block(user) for user in users), key=functools.cmp_to_key(_program_order))
            frozen_read = insert_getattr(frozen_graph, self_value, name, argument.type(), before=first, source=read)
            argument.replaceAllUsesWith(frozen_read.output())
    for position in reversed(range(first_argument, first_argument + len(frozen_arguments))):
        frozen_graph.eraseInput(position)
    return frozen


def _in_top_block(node: Node) -> Node:
    while node.owningBlock().owningNode() is not None:
        node = node.owningBlock().owningNode()
    return node


def _program_order(a: Node, b: Node) -> int:
    if a == b:
        return 0
    return -1 if a.isBefore(b) else 1


def _attributes_read_only(index: NodeIndex) -> bool:
    """Whether no read of a mutable attribute (tensor, list, ...) reaches an op that may write or alias it."""
    for node in index.of_kind("prim::GetAttr"):
        value = node.output()
        type_ = value.type()
        if type_.kind() == "ClassType":
            continue  # a submodule (its attributes are read by further GetAttrs) or an object, never folded here
        if not _is_mutable_type(type_):
            continue
        for use in value.uses():
            if _may_write_or_alias(use.user, use.offset):
                return False
    return True


def _is_mutable_type(type_: Any) -> bool:
    return type_.kind() not in ("IntType", "FloatType", "BoolType", "StringType", "NoneType", "DeviceObjType")


def _may_write_or_alias(user: Node, offset: int) -> bool:
    kind = user.kind()
    if kind in _PURE_WEIGHT_OPS or kind == "prim::GetAttr":
        return False
    arguments = _schema_arguments(user.schema())
    if arguments is None or offset >= len(arguments):
        return True  # no schema (prim ops, calls): assume the worst
    # Any alias annotation means the op writes the argument or returns a view of it.
    return arguments[offset].alias_info is not None


@functools.cache
def _schema_arguments(schema: str) -> Any:
    if schema == "(no schema)":
        return None
    return torch._C.parse_schema(schema).arguments


def _constant_slice(prepack: Node, self_value: Value) -> list[Node] | None:
    """The nodes computing ``prepack``'s inputs, producers first; None unless all are foldable."""
    order = []
    seen = set()
    stack: list[tuple[Any, bool]] = [(prepack, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if node in seen:
            continue
        seen.add(node)
        kind = node.kind()
        if node is not prepack and kind not in _SLICE_STRUCTURE and kind not in _PURE_WEIGHT_OPS:
            return None
        if kind == "prim::GetAttr":
            source = node.input()
            if source != self_value and source.node().kind() != "prim::GetAttr":
                return None
        stack.append((node, True))
        for value in inputs_of(node):
            if value == self_value:
                continue
            stack.append((value.node(), False))
    return order


def _evaluate(order: list[Node], prepack: Node, module_c: CppModule, self_value: Value) -> Any:
    values: dict[Value, Any] = {self_value: module_c}
    with torch.no_grad():
        for node in order:
            kind = node.kind()
            args = [values[v] for v in inputs_of(node)]
            result: Any
            if kind == "prim::Constant":
                result = ivalue(node.output())
            elif kind == "prim::GetAttr":
                if not isinstance(args[0], torch._C.ScriptModule):
                    return _UNFOLDABLE  # a field of an object, not of a submodule
                result = cast(CppModule, args[0]).getattr(node.s("name"))
                if isinstance(result, torch.Tensor) and result.requires_grad:
                    result = result.detach()  # freezing folds a detached copy
            elif kind == "prim::ListConstruct":
                result = list(args)
            elif kind == "prim::TupleConstruct":
                result = tuple(args)
            else:
                namespace, name = kind.split("::", 1)
                result = getattr(getattr(torch.ops, namespace), name)(*args)
            values[node.output()] = result
    return values[prepack.output()]
