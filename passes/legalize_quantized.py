"""Make a converted model's quantized graphs run where PyTorch's kernels or IR conventions fail.

Runs on a converted model: the frozen, quantized module that ``finalize``
returns (and, where a rule applies there too, the ``debug=True`` model of
convert). Every rule leaves the bits of a model the reference runs right
unchanged; it only touches graphs that would otherwise fail to load, raise,
corrupt the heap, or compute something else than the model (outputs a kernel
never writes, a relu a kernel leaves out). The rules, in table order:

1. A tuple of quantized values dequantized as a whole
   (``aten::dequantize(%tuple)``, the ``Tensor[]`` overload, which returns a
   list where the method is annotated to return a tuple) runs but does not
   load back after ``torch.jit.save``. Each element is dequantized and the
   tuple is rebuilt (nested tuples too)::

       %t : (Tensor, Tensor) = prim::TupleConstruct(%a_q, %b_q)
       %out : (Tensor, Tensor) = aten::dequantize(%t)
     becomes
       %a : Tensor = aten::dequantize(%a_q)
       %b : Tensor = aten::dequantize(%b_q)
       %out : (Tensor, Tensor) = prim::TupleConstruct(%a, %b)

   A list of quantized values dequantized as a whole is already a list and
   stays as it is.

2. ``aten::view`` (``view_as``) of a quantized value: quantized conv,
   batch/group/instance/layer norm, pooling and 4-/5-D cat leave their
   output channels-last, where ``view`` raises "view size is not compatible
   with input tensor's size and stride". It becomes ``aten::reshape``
   (``reshape_as``), which is the same view wherever ``view`` works. Float
   values keep ``view`` and its aliasing.

3. ``aten::mean`` of a quantized value that drops the reduced dims: on a
   channels-last 1x1 map the quantized kernel raises "required rank 4 tensor
   to use channels_last format". The mean keeps the dims and a squeeze drops
   them (the same kernel on the same data, so the same bits wherever the
   original runs)::

       %m = aten::mean(%x_q, %dims, %false, %dtype)
     becomes
       %k = aten::mean(%x_q, %dims, %true, %dtype)
       %m = aten::squeeze(%k, %dims)

   ``aten::mean(%x_q, %dtype)`` (all dims) becomes a keepdim mean over every
   dim followed by a reshape to a scalar.

4. ``quantized::group_norm`` and ``quantized::instance_norm`` on a 4-D
   channels-last input with fewer than 512 spatial positions (every
   quantized conv or norm output, and every 1x1 map) run a kernel that steps
   through the batch modulo the number of elements per group instead of the
   batch size: with more samples than elements per group (a batch of 3 on a
   1x1 map with 2 channels per group, of 5 on a 2x2 map with instance norm)
   the outputs of the later samples are never written and hold whatever
   memory was there. A run-time guard sends exactly those inputs through a
   3-D view of the same data (``[N, C, H * W]``), where the kernel's other
   path computes the same group statistics, and reshapes the result back;
   every other input runs the kernel as before, so no op runs in float::

       %y = quantized::group_norm(%x, %groups, %weight, %bias, %eps, %scale, %zp)
     becomes
       %y = prim::If(<channels-last, H * W < 512, N > C / groups * H * W>)
         block0():
           %flat = aten::reshape(%x, [N, C, H * W])
           %y_flat = quantized::group_norm(%flat, %groups, %weight, %bias, %eps, %scale, %zp)
           -> (aten::reshape(%y_flat, aten::size(%x)))
         block1():
           -> (quantized::group_norm(%x, %groups, %weight, %bias, %eps, %scale, %zp))

5. ``quantized::conv{2,3}d`` (and ``_relu``) on fbgemm's groupwise path with
   2 or 4 channels per group and a channel count above 8 that is not a
   multiple of 8 overruns the heap ("free(): invalid next size", SIGSEGV,
   outputs that change from run to run). The path is taken for 3x3(x3)
   kernels, padding 1, dilation 1, stride 1 or 2, equal input and output
   channels per group, not transposed. The packed weight is known after
   freezing, so such convs are found statically and run in float::

       %y_q = quantized::conv2d(%x_q, %packed, %scale, %zp)
     becomes
       %w_q, %b = quantized::conv2d_unpack(%packed)
       %w = aten::dequantize(%w_q)
       %x = aten::dequantize(%x_q)
       %y = aten::conv2d(%x, %w, %b, [1, 1], [1, 1], [1, 1], 6)
       %y_q = aten::quantize_per_tensor(%y, %scale, %zp, 13)

6. ``quantized::add_scalar_relu`` and ``quantized::add_scalar_relu_out`` given
   their scalar as a 0-dim tensor (a trace records ``x + 0.5`` with a tensor
   constant) leave out the relu: their ``Tensor`` overloads compute
   ``add_scalar``. The constant is passed as a number, which takes the
   overload that applies the relu (for every other scalar op the two
   overloads give the same bits, and they are left alone)::

       %b : Tensor = prim::Constant[value={0.5}]()
       %r = quantized::add_scalar_relu(%a_q, %b)
     becomes
       %b.1 : float = prim::Constant[value=0.5]()
       %r = quantized::add_scalar_relu(%a_q, %b.1)

Rewrites of kind 5 (ops kept in float) are recorded in the module's string
attribute ``_qgraph_float_ops`` (JSON, so it survives
``torch.jit.save``), one ``FloatOpRecord`` per float op left in the graph: the
quantized op it replaces, the model source line and module, the reason, and
where the float op is (its method, its kind, and its position among the nodes
of that kind in program order, checked against its source line). The float
ops carry the replaced op's source range, so error messages and the report
point at the model's code. ``float_op_records(module)`` reads the records
back; ``float_op_record_nodes(module, method)`` finds their nodes again, also
in a model loaded with ``torch.jit.load``.

Earlier passes that leave an op in float for a reason the graph cannot show
(``quantize_rnn``: an LSTM with a projection, an unsupported weight dtype)
tag the node with ``tag_float_op``. Node attributes survive inlining and
freezing but not ``torch.jit.save``, and freezing drops module attributes, so
the tags are turned into records here, at the end of convert, and removed.

``quantized_values(graph)`` is the analysis the rules share: which values of
a converted graph hold quantized tensors (or containers of them).
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from collections.abc import Iterable
from typing import Any, NamedTuple, Optional

import torch

from passes._observed_values import FIXED_QPARAMS_ATEN, GENERAL_SHAPE_ATEN, GENERAL_VALUE_ATEN
from qgraph.ir import (
    CppModule,
    NodeIndex,
    as_cpp,
    getattr_path,
    insert_constant,
    insert_op,
    is_alive,
    method_graph,
    module_path_of,
    resolve_path,
    walk,
)
from qgraph.ir.graph import Block, Graph, Node, Value, inputs_of, nested_blocks, outputs_of
from qgraph.pattern import Match, Rewrite, rewrite

__all__ = [
    "legalize_quantized",
    "quantized_values",
    "float_op_records",
    "float_op_record_nodes",
    "tag_float_op",
    "FloatOpRecord",
    "FLOAT_OPS_ATTRIBUTE",
    "SAFETY_RULE",
    "NO_QCONFIG",
    "UNSUPPORTED_OP",
    "UNOBSERVED_INPUT",
    "groupwise_conv_is_unsafe",
]

FLOAT_OPS_ATTRIBUTE = "_qgraph_float_ops"
# Node attributes of ``tag_float_op``.
_CATEGORY_TAG = "qgraph_float_category"
_REASON_TAG = "qgraph_float_reason"

# Why a recorded op is float, in the words of the float-op report.
SAFETY_RULE = "kept in float by a safety rule"
NO_QCONFIG = "no qconfig"
UNSUPPORTED_OP = "unsupported op"
# A float op whose input no observer saw (a model input, a float op's result).
UNOBSERVED_INPUT = "unobserved input"

_TENSOR = torch._C.TensorType.get()
_OPTIONAL_TENSOR = torch._C.OptionalType(_TENSOR)
_QUINT8 = 13  # torch.quint8 as a ScalarType number: the output dtype of quantized convs


class FloatOpRecord(NamedTuple):
    """One float op left in a converted graph on purpose, and why, for the float-op report."""

    op: str  # the op it stands for, e.g. "quantized::conv2d"
    source: str  # "file:line" of the model code, or "" when the graph has none
    scope: str  # the traced module scope ("__module.block.conv"), or ""
    reason: str  # the detail, in a sentence
    category: str = SAFETY_RULE  # SAFETY_RULE, UNSUPPORTED_OP or NO_QCONFIG
    float_op: str = ""  # the kind of the float node, e.g. "aten::conv2d"
    module: str = ""  # dotted path of the module the op came from ("" = the model)
    method: str = "forward"
    ordinal: int = -1  # position among the method's ``float_op`` nodes, in ``walk`` order


# --- which values are quantized --------------------------------------------------------------

# aten ops whose first output stays quantized when their first tensor input is:
# the reference's general ops plus the slicing and copying ops that run on
# quantized tensors as they are.
_QUANTIZATION_KEEPING_ATEN = (
    GENERAL_SHAPE_ATEN
    | GENERAL_VALUE_ATEN
    | FIXED_QPARAMS_ATEN
    | frozenset(
        {
            "cat", "view_as", "reshape_as", "expand", "expand_as", "clone", "select", "slice",
            "narrow", "split", "split_with_sizes", "unbind", "flip", "roll", "adaptive_max_pool1d",
            "adaptive_max_pool2d", "adaptive_max_pool3d", "upsample_nearest1d", "upsample_nearest2d",
            "upsample_nearest3d", "_upsample_nearest_exact2d", "pixel_shuffle", "pixel_unshuffle",
            "channel_shuffle", "sort", "topk", "masked_fill", "index_select", "squeeze", "unflatten",
            "movedim", "t", "numpy_T", "hardswish", "relu6", "elu", "threshold",
            # in-place forms and device moves keep the tensor quantized too
            "hardswish_", "relu6_", "elu_", "clamp_", "dropout_", "to",
        }
    )
)
# quantized:: ops whose tensor outputs are float (or not activations).
_FLOAT_RESULT_MARKERS = ("dynamic", "embedding", "prepack")
_CONTAINER_READS = frozenset({"prim::ListUnpack", "prim::TupleUnpack", "prim::TupleIndex", "aten::__getitem__"})
_CONTAINER_BUILDS = frozenset({"prim::ListConstruct", "prim::TupleConstruct"})


def _may_hold_tensor(value: Value) -> bool:
    return _type_may_hold_tensor(value.type())


def _type_may_hold_tensor(type_: Any) -> bool:
    kind = type_.kind()
    if kind == "TensorType":
        return True
    if kind in ("ListType", "OptionalType"):
        return _type_may_hold_tensor(type_.getElementType())
    if kind == "TupleType":
        return any(_type_may_hold_tensor(t) for t in type_.elements())
    return False


def _quantized_outputs(node: Node, quantized: set[Value]) -> list[Value]:
    """The outputs of ``node`` that hold quantized tensors, given what its inputs hold."""
    kind = node.kind()
    outputs = outputs_of(node)
    if kind in ("aten::quantize_per_tensor", "aten::quantize_per_channel", "aten::quantize_per_tensor_dynamic"):
        return outputs[:1]
    if kind.startswith("quantized::"):
        if any(marker in kind for marker in _FLOAT_RESULT_MARKERS):
            return []
        if kind.endswith("_unpack"):
            return outputs[:1]  # the weight; the bias is float
        return [v for v in outputs if v.type().kind() == "TensorType"]
    if kind in _CONTAINER_BUILDS:
        return outputs if any(v in quantized for v in inputs_of(node)) else []
    if kind in _CONTAINER_READS:
        if node.inputsSize() and node.inputsAt(0) in quantized:
            return [v for v in outputs if _may_hold_tensor(v)]
        return []
    if kind.startswith("aten::") and kind[6:] in _QUANTIZATION_KEEPING_ATEN:
        first = next((v for v in inputs_of(node) if _may_hold_tensor(v)), None)
        if first is not None and first in quantized and outputs and _may_hold_tensor(outputs[0]):
            return outputs[:1]
    return []


def _mark_block(block: Block, quantized: set[Value]) -> None:
    for node in block.nodes():
        kind = node.kind()
        if kind == "prim::If":
            branches = nested_blocks(node)
            for branch in branches:
                _mark_block(branch, quantized)
            for i, out in enumerate(outputs_of(node)):
                if all(outputs_of(b)[i] in quantized for b in branches):
                    quantized.add(out)
        elif kind == "prim::Loop":
            _mark_loop(node, quantized)
        else:
            for block_ in nested_blocks(node):
                _mark_block(block_, quantized)
            quantized.update(_quantized_outputs(node, quantized))


def _mark_loop(node: Node, quantized: set[Value]) -> None:
    # Loop-carried values: a carried value is quantized if it enters quantized
    # and every iteration hands it back quantized. Start from the entry and
    # drop assumptions the body breaks, until nothing changes.
    body = next(node.blocks())
    initial = inputs_of(node)[2:]
    params = inputs_of(body)[1:]
    results = outputs_of(body)[1:]
    assumed = [v in quantized for v in initial]
    while True:
        trial = set(quantized)
        trial.update(p for p, a in zip(params, assumed) if a)
        _mark_block(body, trial)
        kept = [a and r in trial for a, r in zip(assumed, results)]
        if kept == assumed:
            quantized.update(trial)
            quantized.update(out for out, a in zip(outputs_of(node), assumed) if a)
            return
        assumed = kept


def quantized_values(graph: Graph) -> set[Value]:
    """Values of ``graph`` (nested blocks included) that hold quantized tensors at run time.

    A value is quantized when it comes from ``aten::quantize_per_*``, from a
    ``quantized::`` op with a quantized result (not dynamic linears,
    embedding bags, prepacking; only the weight of an unpack), from an op that
    keeps its quantized input quantized (shape ops, pooling, mean, upsample,
    clamp, sigmoid, cat, slicing, ...), or from list/tuple construction and
    unpacking around such values (a container is "quantized" when it holds a
    quantized element). ``if`` outputs are quantized when every branch's is;
    loop-carried values when they enter and come back quantized. Everything
    else, graph inputs included, counts as float.
    """
    quantized: set[Value] = set()
    _mark_block(graph.block(), quantized)
    return quantized


# --- rule 1: dequantize of a tuple -----------------------------------------------------------


def _input_is_tuple(match: Match) -> bool:
    return match["tuple"].type().kind() == "TupleType"


def _dequantize_elements(graph: Graph, value: Value, before: Node) -> Value:
    """A float counterpart of ``value``: tensors and lists dequantized, tuples rebuilt element-wise."""
    kind = value.type().kind()
    if kind == "TensorType" or (kind == "ListType" and _type_may_hold_tensor(value.type().getElementType())):
        if value.node().kind() == "aten::dequantize":
            return value  # already float
        type_ = _TENSOR if kind == "TensorType" else value.type()
        return insert_op(graph, "aten::dequantize", [value], before=before, output_types=[type_]).output()
    if kind != "TupleType":
        return value
    producer = value.node()
    if producer.kind() == "prim::TupleConstruct":
        elements = inputs_of(producer)
    else:
        types = list(value.type().elements())
        unpack = insert_op(
            graph, "prim::TupleUnpack", [value], before=before, n_outputs=len(types), output_types=types
        )
        elements = outputs_of(unpack)
    floats = [_dequantize_elements(graph, element, before) for element in elements]
    rebuilt = insert_op(graph, "prim::TupleConstruct", floats, before=before, output_types=[value.type()])
    return rebuilt.output()


def _dequantize_tuple(graph: Graph, match: Match, before: Node) -> list[Value]:
    rebuilt = _dequantize_elements(graph, match["tuple"], before)
    # The tuple's static type (tensor types of a trace included) stays the dequantize's.
    rebuilt.setType(match["out"].type())
    return [rebuilt]


# --- rules 2 and 3: view and mean on quantized values ----------------------------------------


def _is_quantized(name: str, quantized: set[Value]):
    def check(match: Match) -> bool:
        return match[name] in quantized

    check.__name__ = f"is_quantized({name})"
    return check


def _is_int_list(name: str):
    def check(match: Match) -> bool:
        type_ = match[name].type()
        return type_.kind() == "ListType" and type_.getElementType().kind() == "IntType"

    check.__name__ = f"is_int_list({name})"
    return check


def _is_false(name: str):
    def check(match: Match) -> bool:
        return match.constant(name, default=None) is False

    check.__name__ = f"is_false({name})"
    return check


def _mean_over_all_dims(x: torch.Tensor, dtype: Optional[int]) -> torch.Tensor:
    dims = [d for d in range(x.dim())]
    return torch.mean(x, dims, True, dtype=dtype).reshape([])


def _norm_kernel_skips_samples(x: torch.Tensor, num_groups: int) -> bool:
    # The channels-last kernel of quantized group/instance norm (4-D input,
    # fewer than 512 spatial positions) wraps the sample index at the number
    # of elements per group: later samples are never written.
    if x.dim() != 4 or not x.is_contiguous(memory_format=torch.channels_last):
        return False
    spatial = x.size(2) * x.size(3)
    return spatial < 512 and x.size(0) > x.size(1) // num_groups * spatial


def _samples_flattened(x: torch.Tensor) -> torch.Tensor:
    # [N, C, H * W]: the same group statistics, and a 3-D input takes the kernel's other path.
    return x.reshape([x.size(0), x.size(1), x.size(2) * x.size(3)])


def _group_norm_guarded(
    x: torch.Tensor,
    num_groups: int,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    eps: float,
    output_scale: float,
    output_zero_point: int,
) -> torch.Tensor:
    if _norm_kernel_skips_samples(x, num_groups):
        flat = _samples_flattened(x)
        return torch.ops.quantized.group_norm(flat, num_groups, weight, bias, eps, output_scale,
                                              output_zero_point).reshape(x.size())
    return torch.ops.quantized.group_norm(x, num_groups, weight, bias, eps, output_scale, output_zero_point)


def _instance_norm_guarded(
    x: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    eps: float,
    output_scale: float,
    output_zero_point: int,
) -> torch.Tensor:
    if _norm_kernel_skips_samples(x, x.size(1)):
        flat = _samples_flattened(x)
        return torch.ops.quantized.instance_norm(flat, weight, bias, eps, output_scale,
                                                 output_zero_point).reshape(x.size())
    return torch.ops.quantized.instance_norm(x, weight, bias, eps, output_scale, output_zero_point)


@functools.lru_cache(maxsize=None)
def _scripted_graph(name: str) -> Graph:
    function = {
        "mean_over_all_dims": _mean_over_all_dims,
        "group_norm_guarded": _group_norm_guarded,
        "instance_norm_guarded": _instance_norm_guarded,
    }[name]
    graph = torch.jit.script(function).graph
    torch._C._jit_pass_inline(graph)
    return graph


def _insert_scripted(name: str, graph: Graph, inputs: list[Value], before: Node) -> list[Value]:
    saved = graph.insertPoint()
    graph.setInsertPoint(before)
    try:
        return list(graph.insertGraph(_scripted_graph(name), inputs))
    finally:
        graph.setInsertPoint(saved)


def _mean_all_keepdim(graph: Graph, match: Match, before: Node) -> list[Value]:
    return _insert_scripted("mean_over_all_dims", graph, [match["x"], match["dtype"]], before)


def _view_rewrites(quantized: set[Value]) -> list[Rewrite]:
    x_is_quantized = _is_quantized("x", quantized)
    return [
        Rewrite(
            name="view_of_quantized_to_reshape",
            pattern="""graph(%x, %size):
                %y = aten::view(%x, %size)
                return (%y)""",
            replacement="""graph(%x, %size):
                %y = aten::reshape(%x, %size)
                return (%y)""",
            filters=(x_is_quantized, _is_int_list("size")),
        ),
        Rewrite(
            name="view_as_of_quantized_to_reshape_as",
            pattern="""graph(%x, %other):
                %y = aten::view_as(%x, %other)
                return (%y)""",
            replacement="""graph(%x, %other):
                %y = aten::reshape_as(%x, %other)
                return (%y)""",
            filters=(x_is_quantized,),
        ),
    ]


def _mean_rewrites(quantized: set[Value]) -> list[Rewrite]:
    x_is_quantized = _is_quantized("x", quantized)
    return [
        Rewrite(
            name="quantized_mean_keepdim_then_squeeze",
            pattern="""graph(%x, %dims, %keepdim, %dtype):
                %y = aten::mean(%x, %dims, %keepdim, %dtype)
                return (%y)""",
            replacement="""graph(%x, %dims, %keepdim, %dtype):
                %true : bool = prim::Constant[value=1]()
                %kept = aten::mean(%x, %dims, %true, %dtype)
                %y = aten::squeeze(%kept, %dims)
                return (%y)""",
            filters=(x_is_quantized, _is_int_list("dims"), _is_false("keepdim")),
        ),
        Rewrite(
            name="quantized_mean_all_keepdim_then_reshape",
            pattern="""graph(%x, %dtype):
                %y = aten::mean(%x, %dtype)
                return (%y)""",
            replacement=_mean_all_keepdim,
            filters=(x_is_quantized,),
        ),
    ]


# --- rules 4 and 5: kernels with known memory bugs -------------------------------------------

_GROUPWISE_CONV_REASON = (
    "quantized grouped conv with {per_group} channels per group and {channels} channels "
    "(above 8, not a multiple of 8) overruns the heap in fbgemm's groupwise kernel; "
    "runs as dequantize -> float conv -> quantize_per_tensor"
)

_CONV_KINDS = {
    "quantized::conv2d": ("aten::conv2d", "quantized::conv2d_unpack", False),
    "quantized::conv2d_relu": ("aten::conv2d", "quantized::conv2d_unpack", True),
    "quantized::conv3d": ("aten::conv3d", "quantized::conv3d_unpack", False),
    "quantized::conv3d_relu": ("aten::conv3d", "quantized::conv3d_unpack", True),
}


def groupwise_conv_is_unsafe(
    weight_shape: Iterable[int], stride, padding, dilation, groups: int, transposed: bool
) -> bool:
    """Whether a quantized conv with these parameters takes fbgemm's broken groupwise path.

    ``weight_shape`` is the (out channels, in channels per group, *kernel)
    shape of the quantized weight. Measured on torch 2.13.0 (fbgemm): the
    groupwise kernel runs for 2-D/3-D convs with equal input and output
    channels per group in {2, 4, 8, 16}, 3-wide kernels, padding 1,
    dilation 1, and stride 1 or 2; it corrupts memory for 2 or 4 channels
    per group when the channel count is above 8 and not a multiple of 8.
    """
    out_channels, in_per_group, *kernel = (int(s) for s in weight_shape)
    if transposed or groups < 2 or len(kernel) not in (2, 3):
        return False
    channels = in_per_group * groups
    return (
        out_channels == channels
        and in_per_group in (2, 4)
        and channels > 8
        and channels % 8 != 0
        and all(k == 3 for k in kernel)
        and all(p == 1 for p in padding)
        and all(d == 1 for d in dilation)
        # fbgemm reads only the spatial (last two) strides; all 1 or all 2.
        and (all(s == 1 for s in list(stride)[-2:]) or all(s == 2 for s in list(stride)[-2:]))
    )


def _static_object(module: CppModule, value: Value) -> Any:
    """The object a graph value names statically (a frozen constant or a module attribute), or None."""
    node = value.node()
    if node.kind() == "prim::Constant":
        return value.toIValue() if node.hasAttribute("value") else None
    path = getattr_path(value)
    if not path:
        return None
    try:
        return resolve_path(module, path)
    except RuntimeError:
        return None


def _conv_parameters(packed: Any, unpack_kind: str) -> dict | None:
    try:
        weight, _ = getattr(torch.ops.quantized, unpack_kind.split("::")[1])(packed)
        return {
            "weight_shape": tuple(weight.shape),
            "stride": list(packed.stride()),
            "padding": list(packed.padding()),
            "dilation": list(packed.dilation()),
            "groups": int(packed.groups()),
            "transposed": bool(packed.transpose()),
        }
    except (RuntimeError, AttributeError, TypeError):
        return None


def _source_of(node: Node) -> str:
    text = node.sourceRange()
    first = text.strip().splitlines()[0] if text.strip() else ""
    # '  File "model.py", line 12' -> 'model.py:12'
    if first.startswith("File ") and ", line " in first:
        file_part, line_part = first[5:].rsplit(", line ", 1)
        return f"{file_part.strip().strip(chr(34))}:{line_part.strip()}"
    return first


# A float op found or made by the pass, with its record before the op's position is known.
_Placed = tuple[FloatOpRecord, Node]


def _record(placed: list[_Placed], stands_for: Node, float_node: Node, reason: str) -> None:
    record = FloatOpRecord(
        op=stands_for.kind(),
        source=_source_of(stands_for),
        scope=stands_for.scopeName(),
        reason=reason,
        float_op=float_node.kind(),
        module=module_path_of(stands_for),
    )
    placed.append((record, float_node))


def _nodes_inserted_before(before: Node, previous: Node) -> list[Node]:
    """The nodes between ``previous`` and ``before`` (which were adjacent), nested ones included."""
    top = []
    node = before.prev()
    while node != previous:
        top.append(node)
        node = node.prev()
    found = []
    for node in reversed(top):
        found.append(node)
        for block in nested_blocks(node):
            found.extend(walk(block))
    return found


def _kernel_rewrites(module: CppModule, placed: list[_Placed]) -> list[Rewrite]:
    def guard(function: str, names: tuple[str, ...]):
        def replace(graph: Graph, match: Match, before: Node) -> list[Value]:
            previous = before.prev()
            outputs = _insert_scripted(function, graph, [match[name] for name in names], before)
            for node in _nodes_inserted_before(before, previous):
                # The guard stands for the model's op: its source line and module, not this file's.
                node.copyMetadata(match.anchor)
            return outputs

        return replace

    def not_yet_guarded(match: Match) -> bool:
        # The guard's own kernel calls must not be guarded again when the
        # pass runs a second time. They are the two branches of an ``if``:
        # one calls the kernel on a reshape of the value the other calls it on.
        owner = match.anchor.owningBlock().owningNode()
        if owner is None or owner.kind() != "prim::If":
            return True
        calls = [[n for n in block.nodes() if n.kind() == match.anchor.kind()] for block in nested_blocks(owner)]
        if len(calls) != 2 or any(len(found) != 1 for found in calls):
            return True
        (on_view,), (direct,) = calls
        view = on_view.inputsAt(0).node()
        return view.kind() != "aten::reshape" or view.inputsAt(0) != direct.inputsAt(0)

    conv_parameters: dict[Node, dict] = {}

    def unsafe_groupwise_conv(match: Match) -> bool:
        _, unpack_kind, _ = _CONV_KINDS[match.anchor.kind()]
        packed = _static_object(module, match["packed"])
        parameters = None if packed is None else _conv_parameters(packed, unpack_kind)
        if parameters is None or not groupwise_conv_is_unsafe(**parameters):
            return False
        conv_parameters[match.anchor] = parameters
        return True

    def float_conv(graph: Graph, match: Match, before: Node) -> list[Value]:
        anchor = match.anchor
        float_kind, unpack_kind, relu = _CONV_KINDS[anchor.kind()]
        parameters = conv_parameters.pop(anchor)
        out_channels, in_per_group = parameters["weight_shape"][:2]
        reason = _GROUPWISE_CONV_REASON.format(per_group=in_per_group, channels=out_channels)
        unpack = insert_op(graph, unpack_kind, [match["packed"]], before=before, n_outputs=2,
                           output_types=[_TENSOR, _OPTIONAL_TENSOR], source=anchor)
        weight_q, bias = outputs_of(unpack)
        weight = insert_op(graph, "aten::dequantize", [weight_q], before=before, source=anchor).output()
        x = insert_op(graph, "aten::dequantize", [match["x"]], before=before, source=anchor).output()
        conv = insert_op(
            graph,
            float_kind,
            [x, weight, bias, *(parameters[key] for key in ("stride", "padding", "dilation", "groups"))],
            before=before,
            source=anchor,
        )
        _record(placed, anchor, conv, reason)
        y = conv.output()
        if relu:
            y = insert_op(graph, "aten::relu", [y], before=before, source=anchor).output()
        quantize = insert_op(
            graph, "aten::quantize_per_tensor", [y, match["scale"], match["zero_point"], _QUINT8], before=before,
            source=anchor,
        )
        return [quantize.output()]

    conv_rewrites = [
        Rewrite(
            name=f"unsafe_groupwise_{kind.split('::')[1]}_in_float",
            pattern=f"""graph(%x, %packed, %scale, %zero_point):
                %y = {kind}(%x, %packed, %scale, %zero_point)
                return (%y)""",
            replacement=float_conv,
            filters=(unsafe_groupwise_conv,),
        )
        for kind in _CONV_KINDS
    ]
    return [
        Rewrite(
            name="group_norm_guarded_against_skipped_samples",
            pattern="""graph(%x, %groups, %weight, %bias, %eps, %scale, %zero_point):
                %y = quantized::group_norm(%x, %groups, %weight, %bias, %eps, %scale, %zero_point)
                return (%y)""",
            replacement=guard("group_norm_guarded", ("x", "groups", "weight", "bias", "eps", "scale", "zero_point")),
            filters=(not_yet_guarded,),
        ),
        Rewrite(
            name="instance_norm_guarded_against_skipped_samples",
            pattern="""graph(%x, %weight, %bias, %eps, %scale, %zero_point):
                %y = quantized::instance_norm(%x, %weight, %bias, %eps, %scale, %zero_point)
                return (%y)""",
            replacement=guard("instance_norm_guarded", ("x", "weight", "bias", "eps", "scale", "zero_point")),
            filters=(not_yet_guarded,),
        ),
        *conv_rewrites,
    ]


# --- the pass ---------------------------------------------------------------------------------

TUPLE_REWRITES = [
    Rewrite(
        name="dequantize_tuple_per_element",
        pattern="""graph(%tuple):
            %out = aten::dequantize(%tuple)
            return (%out)""",
        replacement=_dequantize_tuple,
        filters=(_input_is_tuple,),
    ),
]


# --- rule 6: add_scalar_relu with a tensor scalar ---------------------------------------------


def _is_tensor_constant(name: str):
    def check(match: Match) -> bool:
        node = match[name].node()
        return (
            match[name].type().kind() == "TensorType"
            and node.kind() == "prim::Constant"
            and node.hasAttribute("value")
            and node.kindOf("value") == "t"
            and node.t("value").dim() == 0
        )

    check.__name__ = f"is_tensor_constant({name})"
    return check


def _scalar_as_number(graph: Graph, match: Match, before: Node) -> list[Value]:
    number = insert_constant(graph, match["b"].node().t("value").item(), before=before)
    inputs = [match["a"], number] + ([match["out"]] if match.anchor.kind().endswith("_out") else [])
    return [insert_op(graph, match.anchor.kind(), inputs, before=before, source=match.anchor).output()]


TENSOR_SCALAR_REWRITES = [
    Rewrite(
        name=f"{op}_with_a_number",
        pattern=f"""graph(%a, %b{out}):
            %r = quantized::{op}(%a, %b{out})
            return (%r)""",
        replacement=_scalar_as_number,
        filters=(_is_tensor_constant("b"),),
    )
    for op, out in (("add_scalar_relu", ""), ("add_scalar_relu_out", ", %out"))
]


def _legalize_graph(module: CppModule, graph: Graph, placed: list[_Placed]) -> int:
    index = NodeIndex(graph)
    made = rewrite(graph, TUPLE_REWRITES, index)
    made += rewrite(graph, TENSOR_SCALAR_REWRITES, index)
    # Rule 3 must see a mean's input as quantized after rule 2 replaced a view
    # feeding it, so the analysis is redone once the reshapes exist.
    made += rewrite(graph, _view_rewrites(quantized_values(graph)), index)
    made += rewrite(graph, _mean_rewrites(quantized_values(graph)), index)
    made += rewrite(graph, _kernel_rewrites(module, placed), index)
    if made:
        torch._C._jit_pass_dce(graph)
    return made


# --- float-op records -------------------------------------------------------------------------


def tag_float_op(node: Node, category: str, reason: str) -> None:
    """Mark ``node`` as left in float on purpose; ``legalize_quantized`` turns the mark into a record.

    For passes that run before convert: module attributes do not survive
    freezing, node attributes do. ``category`` is ``UNSUPPORTED_OP``,
    ``NO_QCONFIG``, ``SAFETY_RULE`` or ``UNOBSERVED_INPUT``; ``reason`` says why in a sentence.
    """
    if category not in (SAFETY_RULE, NO_QCONFIG, UNSUPPORTED_OP, UNOBSERVED_INPUT):
        raise ValueError(f"unknown float-op category {category!r}")
    node.s_(_CATEGORY_TAG, category)
    node.s_(_REASON_TAG, reason)


def _untag(graph: Graph) -> list[_Placed]:
    placed = []
    for node in walk(graph):
        if node.kind() == "prim::Constant" or not node.hasAttribute(_REASON_TAG):
            continue
        record = FloatOpRecord(
            op=node.kind(),
            source=_source_of(node),
            scope=node.scopeName(),
            reason=node.s(_REASON_TAG),
            category=node.s(_CATEGORY_TAG) if node.hasAttribute(_CATEGORY_TAG) else UNSUPPORTED_OP,
            float_op=node.kind(),
            module=module_path_of(node),
        )
        placed.append((record, node))
        node.removeAttribute(_REASON_TAG)
        if node.hasAttribute(_CATEGORY_TAG):
            node.removeAttribute(_CATEGORY_TAG)
    return placed


def _nodes_by_kind(graph: Graph, kinds: set[str]) -> dict[str, list[Node]]:
    found: dict[str, list[Node]] = defaultdict(list)
    if kinds:
        for node in walk(graph):
            if node.kind() in kinds:
                found[node.kind()].append(node)
    return found


def _numbered(graph: Graph, method: str, placed: list[_Placed]) -> list[FloatOpRecord]:
    """The records of ``placed`` with their method and their node's position among its kind."""
    placed = [(record, node) for record, node in placed if is_alive(node)]
    by_kind = _nodes_by_kind(graph, {node.kind() for _, node in placed})
    positions = {node: i for nodes in by_kind.values() for i, node in enumerate(nodes)}
    ordered = sorted(placed, key=lambda item: (item[1].kind(), positions[item[1]]))
    return [record._replace(method=method, ordinal=positions[node]) for record, node in ordered]


def _located(graph: Graph, records: list[FloatOpRecord]) -> list[_Placed]:
    """The nodes ``records`` (of one method) name: the ordinal-th node of the kind, if its source agrees."""
    by_kind = _nodes_by_kind(graph, {record.float_op for record in records})
    found = []
    for record in records:
        nodes = by_kind.get(record.float_op, [])
        if 0 <= record.ordinal < len(nodes) and _source_of(nodes[record.ordinal]) == record.source:
            found.append((record, nodes[record.ordinal]))
    return found


def float_op_record_nodes(module: Any, method: str = "forward") -> dict[Node, FloatOpRecord]:
    """The nodes of ``module``'s ``method`` that its float-op records describe, with their records.

    A record of a fused op (``quantized::conv2d_relu``) names the float conv
    and the relu after it. A record whose node cannot be found (the graph
    was changed after convert, so the position or source line no longer
    agree) is left out.
    """
    module_c = as_cpp(module)
    records = [record for record in float_op_records(module_c) if record.method == method]
    if not records:
        return {}
    found = {}
    for record, node in _located(method_graph(module_c, method), records):
        found[node] = record
        if record.op.endswith("_relu"):
            # A fused conv + relu left in float is the float conv and the relu right after it.
            relu = _sole_user(node.output())
            if relu is not None and relu.kind() == "aten::relu":
                found[relu] = record
    return found


def _sole_user(value: Value) -> Node | None:
    uses = value.uses()
    return uses[0].user if len(uses) == 1 else None


def _store_records(module: CppModule, records: list[FloatOpRecord]) -> None:
    payload = json.dumps([record._asdict() for record in records])
    if module.hasattr(FLOAT_OPS_ATTRIBUTE):
        module.setattr(FLOAT_OPS_ATTRIBUTE, payload)
    else:
        module._register_attribute(FLOAT_OPS_ATTRIBUTE, torch._C.StringType.get(), payload)


def float_op_records(module: Any) -> list[FloatOpRecord]:
    """The float ops recorded on ``module`` by ``legalize_quantized`` (empty if none)."""
    module_c = as_cpp(module)
    if not module_c.hasattr(FLOAT_OPS_ATTRIBUTE):
        return []
    entries = json.loads(module_c.getattr(FLOAT_OPS_ATTRIBUTE))
    # A model saved by an earlier release may carry fields records no longer have.
    return [FloatOpRecord(**{k: v for k, v in entry.items() if k in FloatOpRecord._fields}) for entry in entries]


def legalize_quantized(module: Any) -> int:
    """Rewrite a converted model's method graphs so they run, save and load; in place.

    ``module`` is a converted ScriptModule (or its ``._c``): the frozen model
    of ``convert_jit`` / ``quantize_jit``, or their ``debug=True`` model.
    Every method of ``module`` itself is rewritten (after convert,
    ``forward`` holds the whole inlined model). Returns the number of
    rewrites made. Ops kept in float (rule 5 of the
    module docstring), and ops earlier passes tagged with ``tag_float_op``,
    are recorded in the module's ``_qgraph_float_ops`` attribute (records of
    an earlier run are kept, renumbered); read them with
    ``float_op_records`` / ``float_op_record_nodes``.

    Before (a model returning two quantized conv outputs)::

        %t : (Tensor, Tensor) = prim::TupleConstruct(%a_q, %b_q)
        %out : (Tensor, Tensor) = aten::dequantize(%t)
        return (%out)

    After::

        %a : Tensor = aten::dequantize(%a_q)
        %b : Tensor = aten::dequantize(%b_q)
        %out : (Tensor, Tensor) = prim::TupleConstruct(%a, %b)
        return (%out)
    """
    module_c = as_cpp(module)
    earlier = float_op_records(module_c)
    records: list[FloatOpRecord] = []
    made = 0
    methods = module_c._method_names()
    for name in methods:
        graph = method_graph(module_c, name)
        # Earlier records are found before this run inserts nodes that would shift their positions.
        placed = _located(graph, [record for record in earlier if record.method == name])
        kept = {id(record) for record, _ in placed}
        records += [record for record in earlier if record.method == name and id(record) not in kept]
        made += _legalize_graph(module_c, graph, placed)
        placed += _untag(graph)
        records += _numbered(graph, name, placed)
    records += [record for record in earlier if record.method not in methods]
    if records or earlier:
        _store_records(module_c, records)
    return made
