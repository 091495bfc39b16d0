"""Which values observer insertion looks at: the per-value rules over the op tables of ``qgraph.quant.ops``.

Everything here reads the graph and never changes it: which node is a
quantizable op, a general op or a user function call, which value is a
weight or a bias, what a value's "already observed" state passes through.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch.ao.quantization.quant_type import QuantType

from qgraph.ir.graph import Block, Node, Value, inputs_of, nested_blocks, outputs_of
from qgraph.quant.ops import (
    BIAS_ARGS_ATEN,
    BIAS_ARGS_CALL,
    DYNAMIC_QUANTIZABLE_ATEN,
    DYNAMIC_QUANTIZABLE_CALLS,
    EMBEDDING_BAG_FLOAT_ARGS,
    FIXED_QPARAMS_ATEN,
    GENERAL_SHAPE_ATEN,
    GENERAL_SHAPE_CALLS,
    GENERAL_VALUE_ATEN,
    GENERAL_VALUE_CALLS,
    OBSERVED_INPUT_OF_CALL,
    PROPAGATE_BINARY_ATEN,
    PROPAGATE_SINGLE_INPUT_ATEN,
    STATIC_QUANTIZABLE_ATEN,
    STATIC_QUANTIZABLE_CALLS,
    WEIGHT_ARGS_ATEN,
    WEIGHT_ARGS_CALL,
    WEIGHT_ONLY_ATEN,
    WEIGHT_ONLY_CALLS,
)

_TENSOR = torch._C.TensorType.get()
_TENSOR_LIST = torch._C.ListType.ofTensors()
_NUMBER = torch._C.NumberType.get()


def aten_name(node: Node) -> str | None:
    kind = node.kind()
    return kind[6:] if kind.startswith("aten::") else None


def call_name(node: Node) -> str | None:
    """The short name of the function a ``prim::CallFunction`` calls (``relu`` for F.relu)."""
    if node.kind() != "prim::CallFunction":
        return None
    func_type = node.inputsAt(0).type()
    if func_type.kind() != "FunctionType":
        return None
    return str(func_type).rsplit(".", 1)[-1]


def _use_matches(user: Node, offset: int, aten_args: dict, call_args: dict) -> bool:
    name = aten_name(user)
    if name is not None and aten_args.get(name) == offset:
        return True
    name = call_name(user)
    return name is not None and call_args.get(name) == offset


def is_weight(value: Value) -> bool:
    return any(_use_matches(u.user, u.offset, WEIGHT_ARGS_ATEN, WEIGHT_ARGS_CALL) for u in value.uses())


def is_bias(value: Value) -> bool:
    return any(_use_matches(u.user, u.offset, BIAS_ARGS_ATEN, BIAS_ARGS_CALL) for u in value.uses())


def is_weight_only_weight(value: Value) -> bool:
    """The weight of a weight-only op (an embedding_bag's table)."""
    return any(
        is_weight_only(u.user) and _use_matches(u.user, u.offset, WEIGHT_ARGS_ATEN, WEIGHT_ARGS_CALL)
        for u in value.uses()
    )


def is_embedding_bag_float_arg(value: Value) -> bool:
    return any(u.user.kind() == "aten::embedding_bag" and u.offset in EMBEDDING_BAG_FLOAT_ARGS for u in value.uses())


def is_tensor_or_tensor_list(value: Value) -> bool:
    ty = value.type()
    return ty.isSubtypeOf(_TENSOR) or ty.isSubtypeOf(_TENSOR_LIST)


def is_scalar(value: Value) -> bool:
    """A number, or a constant 0-dim tensor (add/mul with such an operand act as with a scalar)."""
    ty = value.type()
    if ty.isSubtypeOf(_NUMBER):
        return True
    node = value.node()
    if node.kind() == "prim::Constant" and ty.isSubtypeOf(_TENSOR) and node.hasAttribute("value"):
        # Read the tensor attribute itself: ``Value.toIValue`` hands a 0-dim
        # tensor constant (a traced ``x + 1.0``) back as a Python float.
        return node.kindOf("value") == "t" and node.t("value").dim() == 0
    return False


def is_general_call(node: Node) -> bool:
    name = call_name(node)
    return name is not None and (name in GENERAL_SHAPE_CALLS or name in GENERAL_VALUE_CALLS)


def is_binary_with_scalar(node: Node) -> bool:
    return aten_name(node) in PROPAGATE_BINARY_ATEN and is_scalar(node.inputsAt(1))


def is_general_aten(node: Node) -> bool:
    name = aten_name(node)
    if name is None:
        return False
    return (
        name in GENERAL_SHAPE_ATEN
        or name in GENERAL_VALUE_ATEN
        or name in FIXED_QPARAMS_ATEN
        or is_binary_with_scalar(node)
    )


def is_propagating(node: Node) -> bool:
    name = aten_name(node)
    return name in PROPAGATE_SINGLE_INPUT_ATEN or name in PROPAGATE_BINARY_ATEN


def is_weight_only(node: Node) -> bool:
    return aten_name(node) in WEIGHT_ONLY_ATEN or call_name(node) in WEIGHT_ONLY_CALLS


def is_quantizable(node: Node, quant_type: QuantType) -> bool:
    dynamic = quant_type == QuantType.DYNAMIC
    aten_ops = DYNAMIC_QUANTIZABLE_ATEN if dynamic else STATIC_QUANTIZABLE_ATEN
    call_ops = DYNAMIC_QUANTIZABLE_CALLS if dynamic else STATIC_QUANTIZABLE_CALLS
    return aten_name(node) in aten_ops or call_name(node) in call_ops


def is_quantizable_use(user: Node, offset: int, quant_type: QuantType) -> bool:
    if quant_type == QuantType.STATIC:
        name = call_name(user)
        if name in OBSERVED_INPUT_OF_CALL:
            return offset == OBSERVED_INPUT_OF_CALL[name]
    return is_quantizable(user, quant_type)


def is_user_function_call(node: Node) -> bool:
    """A call of a user's TorchScript function (not one of the known functionals)."""
    if node.kind() != "prim::CallFunction":
        return False
    name = call_name(node)
    return not is_general_call(node) and name not in STATIC_QUANTIZABLE_CALLS


@functools.cache
def _function_by_name(qualified_name: str) -> Any:
    return torch.jit._state._python_cu.find_function(qualified_name)


def function_graph(node: Node) -> torch._C.Graph | None:
    """The graph of the TorchScript function a ``prim::CallFunction`` calls, if it can be found.

    Functions compiled in this process live in the global compilation unit;
    functions of a model loaded with ``torch.jit.load`` are not reachable
    from Python, and such calls are treated as opaque.
    """
    function = _function_by_name(str(node.inputsAt(0).type()))
    return None if function is None else function.graph


def always_raises(block: Block) -> bool:
    """Whether every path through ``block`` raises (such ``if`` branches are ignored)."""
    for node in block.nodes():
        if node.kind() == "prim::RaiseException":
            return True
        if node.kind() == "prim::If" and all(always_raises(b) for b in nested_blocks(node)):
            return True
    return False


def pass_through_inputs(value: Value) -> list[Value]:
    """Values that must all be observed for ``value`` to count as observed without an observer."""
    node = value.node()
    kind = node.kind()
    if is_general_call(node):
        return [node.inputsAt(1)]
    if is_general_aten(node) or (kind == "aten::sort" and value.offset() == 0):
        return [node.inputsAt(0)]
    if kind == "prim::If" and node.outputsSize() == 1:
        return [next(b.outputs()) for b in nested_blocks(node) if not always_raises(b)]
    if kind in ("prim::ListUnpack", "prim::TupleUnpack"):
        return [node.inputsAt(0)] if value.type().isSubtypeOf(_TENSOR) else []
    if kind == "prim::ListConstruct" and value.type().isSubtypeOf(_TENSOR_LIST):
        return inputs_of(node)
    if kind == "prim::TupleConstruct":
        return [v for v in inputs_of(node) if v.type().isSubtypeOf(_TENSOR)]
    if kind == "aten::append":
        return inputs_of(node)
    return []


def loop_carried_params(loop: Node) -> list[Value]:
    """The body parameters of a ``prim::Loop`` that carry values between iterations (not the counter)."""
    return inputs_of(nested_blocks(loop)[0])[1:]


def loop_back_edges(loop: Node) -> list[Value]:
    """What the body of a ``prim::Loop`` hands to the next iteration, one per carried parameter."""
    return outputs_of(nested_blocks(loop)[0])[1:]


def is_defined_in(value: Value, block: Block) -> bool:
    """Whether ``value`` is produced inside ``block`` (or a block nested in it), parameters included."""
    current = value.node().owningBlock()
    while current is not None:
        if current == block:
            return True
        owner = current.owningNode()
        current = owner.owningBlock() if owner is not None else None
    return False
