"""Which ops a quantized model still runs in float, and why.

``float_op_report(model)`` analyses a model after convert (finalized and
frozen, or the ``debug=True`` model) and lists every op that computes on
float tensors, with the module it came from, its source line and one of four
reasons:

- ``no qconfig``: the op belongs to a module whose qconfig is None (known
  only when the ``qconfig_dict`` is passed in);
- ``unsupported op``: no quantized kernel or pattern exists for the op kind
  (``aten::exp``, ``aten::softmax``, ``aten::matmul``, ...);
- ``unobserved input``: the op could run quantized, but its input is a float
  tensor (a model input nobody observed, the output of a float op, ...);
- ``kept in float by a safety rule``: a known PyTorch kernel bug makes the
  quantized op unsafe for this op's arguments (see ``SAFETY_RULES``).

The report is computed on demand from the model, so convert keeps returning
just the model (as the reference does) and a model loaded back with
``torch.jit.load`` can be analysed as well::

    report = float_op_report(quantized, qconfig_dict)
    print(report.format())

    4 ops left in float
    module   op              source           reason             detail
    ------   -------------   --------------   ----------------   -----------------------------
    head     aten::exp       model.py:31      unsupported op     no quantized kernel for aten::exp
    ...

A value counts as quantized when it comes from a quantize op, from a
quantized kernel with a quantized result, or from an op that ran on a
quantized tensor (shape and value ops keep their input quantized); through
``if`` / loop blocks, lists and tuples alike. Dynamic quantization keeps
activations in float by design, so for ``QuantType.DYNAMIC`` only the ops
dynamic quantization handles (linear, LSTM/GRU and their cells,
embedding_bag) are reported.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.ao.quantization.quant_type import QuantType

from qgraph.ir.graph import Node, Value, walk
from qgraph.ir.module import as_cpp, method_graph

__all__ = [
    "FloatOp",
    "FloatOpReport",
    "float_op_report",
    "NO_QCONFIG",
    "UNSUPPORTED_OP",
    "UNOBSERVED_INPUT",
    "SAFETY_RULE",
    "SAFETY_RULES",
    "STATIC_QUANTIZABLE",
    "DYNAMIC_QUANTIZABLE",
]

NO_QCONFIG = "no qconfig"
UNSUPPORTED_OP = "unsupported op"
UNOBSERVED_INPUT = "unobserved input"
SAFETY_RULE = "kept in float by a safety rule"


def _fused_kinds() -> frozenset[str]:
    """aten ops the static fusion table turns into quantized ops (or runs on quantized tensors)."""
    from passes.quant_fusion import STATIC_QUANT_FUSION
    from qgraph.pattern import compile_pattern

    plumbing = {
        "aten::dequantize",
        "aten::quantize_per_tensor",
        "aten::q_scale",
        "aten::q_zero_point",
        "aten::scalar_tensor",
        "aten::item",
    }
    kinds = set()
    for entry in STATIC_QUANT_FUSION:
        for node in compile_pattern(entry.pattern).nodes:
            if node.kind().startswith("aten::") and node.kind() not in plumbing:
                kinds.add(node.kind())
    return frozenset(kinds)


# Ops that need no observer and run on a quantized tensor as they are.
_PASS_THROUGH = frozenset(
    "aten::" + name
    for name in (
        "max_pool1d max_pool2d max_pool3d adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d "
        "flatten reshape view transpose permute contiguous chunk squeeze squeeze_ unsqueeze unsqueeze_ "
        "repeat repeat_interleave __getitem__ dropout dropout_ detach detach_ relu relu_ relu6 relu6_ "
        "max min sort stack select slice narrow split expand expand_as t numpy_T to clone "
        "upsample_nearest1d upsample_nearest2d upsample_nearest3d interpolate"
    ).split()
)

STATIC_QUANTIZABLE = _fused_kinds() | _PASS_THROUGH
DYNAMIC_QUANTIZABLE = frozenset(
    {
        "aten::linear",
        "aten::lstm",
        "aten::gru",
        "aten::lstm_cell",
        "aten::gru_cell",
        "aten::rnn_tanh_cell",
        "aten::rnn_relu_cell",
        "aten::embedding_bag",
    }
)

# Kernels whose results are float tensors although they are quantized ops.
_FLOAT_RESULT_KERNELS = re.compile(
    r"quantized::(linear_dynamic|linear_relu_dynamic|linear_dynamic_fp16|linear_relu_dynamic_fp16|"
    r"embedding_bag_\w+|quantized_\w+_cell_dynamic|\w+_prepack\w*|\w+_unpack\w*)$"
)
_QUANTIZE_KINDS = {"aten::quantize_per_tensor", "aten::quantize_per_channel", "aten::quantize_per_tensor_dynamic"}
_FLOAT_KINDS = {"aten::dequantize"}


@dataclass(frozen=True)
class FloatOp:
    """One op left in float."""

    module_path: str  # dotted path of the module the op came from; "" is the model itself
    kind: str
    source: str | None  # "file:line" of the op, when the graph kept it
    reason: str
    detail: str
    method: str = "forward"


@dataclass
class FloatOpReport:
    """Every op a quantized model runs in float, in graph order."""

    entries: list[FloatOp] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[FloatOp]:
        return iter(self.entries)

    def by_reason(self, reason: str) -> list[FloatOp]:
        return [entry for entry in self.entries if entry.reason == reason]

    def kinds(self) -> list[str]:
        return [entry.kind for entry in self.entries]

    def format(self) -> str:
        """A table, one row per op; a single line when nothing is left in float."""
        if not self.entries:
            return "no ops left in float"
        header = ("module", "op", "source", "reason", "detail")
        rows = [header]
        for entry in self.entries:
            rows.append((entry.module_path or "<model>", entry.kind, entry.source or "-", entry.reason, entry.detail))
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * width for width in widths))
        count = len(self.entries)
        return f"{count} op{'s' if count != 1 else ''} left in float\n" + "\n".join(lines)


# --- safety rules ---------------------------------------------------------------------------

SafetyRule = Callable[[Node], "str | None"]


def _constant(value: Value) -> Any:
    node = value.node()
    if node.kind() != "prim::Constant" or not node.hasAttribute("value"):
        return None
    if node.kindOf("value") == "t":
        return node.t("value")
    return value.toIValue()


def _grouped_conv_overrun(node: Node) -> str | None:
    """Quantized grouped conv with 2 or 4 channels per group and a channel count above 8 that
    is not a multiple of 8 overruns a buffer in PyTorch's kernel."""
    if node.kind() not in ("aten::conv1d", "aten::conv2d", "aten::conv3d"):
        return None
    weight, groups = _constant(node.inputsAt(1)), _constant(node.inputsAt(6))
    if not isinstance(weight, torch.Tensor) or not isinstance(groups, int) or groups <= 1:
        return None
    out_channels, per_group = weight.shape[0], weight.shape[1]
    in_channels = per_group * groups
    for channels in (in_channels, out_channels):
        if per_group in (2, 4) and channels > 8 and channels % 8:
            return f"grouped conv with {per_group} channels per group and {channels} channels (quantized kernel overrun)"
    return None


def _group_norm_on_single_pixel(node: Node) -> str | None:
    """Quantized group_norm reads out of bounds on a 1x1 spatial map."""
    if node.kind() != "aten::group_norm":
        return None
    sizes = node.inputsAt(0).type().sizes() if node.inputsAt(0).type().kind() == "TensorType" else None
    if sizes and len(sizes) > 2 and all(s == 1 for s in sizes[2:]):
        return "group_norm on a 1x1 spatial map (quantized kernel reads out of bounds)"
    return None


SAFETY_RULES: list[SafetyRule] = [_grouped_conv_overrun, _group_norm_on_single_pixel]


# --- analysis ---------------------------------------------------------------------------------


class _Quantized:
    """Whether a value holds quantized tensors, by dataflow, memoised."""

    def __init__(self):
        self.known: dict[Value, bool] = {}

    def __call__(self, value: Value) -> bool:
        found = self.known.get(value)
        if found is None:
            self.known[value] = False  # cycles through loop-carried values end here
            found = self.known[value] = self._compute(value)
        return found

    def _compute(self, value: Value) -> bool:
        node = value.node()
        kind = node.kind()
        if kind == "prim::Param":
            owner = node.owningBlock().owningNode()
            if owner is not None and owner.kind() == "prim::Loop" and value.offset() > 0:
                # loop-carried: the initial value, or what the body hands back
                carried = owner.inputsAt(value.offset() + 1)
                returned = list(node.owningBlock().outputs())[value.offset()]
                return self(carried) or self(returned)
            return False
        if kind in _QUANTIZE_KINDS:
            return True
        if kind in _FLOAT_KINDS or kind == "prim::Constant":
            return False
        if kind.startswith("quantized::"):
            return not _FLOAT_RESULT_KERNELS.match(kind)
        if kind == "prim::If":
            return any(self(list(block.outputs())[value.offset()]) for block in node.blocks())
        if kind == "prim::Loop":
            body_result = list(list(node.blocks())[0].outputs())[value.offset() + 1]
            return self(node.inputsAt(value.offset() + 2)) or self(body_result)
        return any(self(v) for v in node.inputs() if _carries_tensors(v))


def _carries_tensors(value: Value) -> bool:
    return "Tensor" in str(value.type())


_HIERARCHY_PART = re.compile(r"(\w+)\([^()]*\)")


def _module_path(node: Node) -> str:
    hierarchy = node.getModuleHierarchy() or ""
    return ".".join(_HIERARCHY_PART.findall(hierarchy))


_SCRIPTED_SOURCE = re.compile(r'File "([^"]+)", line (\d+)')
_TRACED_SOURCE = re.compile(r"^(.+)\((\d+)\): ")


def _source(node: Node) -> str | None:
    text = node.sourceRange() or ""
    found = _SCRIPTED_SOURCE.search(text) or _TRACED_SOURCE.search(text.splitlines()[0] if text else "")
    if not found:
        return None
    return f"{found.group(1).rsplit('/', 1)[-1]}:{found.group(2)}"


def _qconfig_is_none(qconfig_dict: dict | None, path: str) -> bool:
    if not qconfig_dict:
        return False
    best, best_length = None, -1
    for key, qconfig in qconfig_dict.items():
        if key == "" or path == key or path.startswith(key + "."):
            length = len(key)
            if length > best_length:
                best, best_length = (qconfig,), length
    return best is not None and best[0] is None


def _float_inputs(node: Node, quantized: _Quantized) -> list[Value]:
    return [
        v
        for v in node.inputs()
        if _carries_tensors(v) and v.node().kind() != "prim::Constant" and not quantized(v)
    ]


def float_op_report(
    model: Any, qconfig_dict: dict | None = None, quant_type: QuantType = QuantType.STATIC
) -> FloatOpReport:
    """The ops ``model`` (a converted ScriptModule or its ``._c``) runs in float, with reasons.

    Every method of the model is analysed (nested blocks included); pass the
    ``qconfig_dict`` used for prepare to tell ops switched off by a ``None``
    qconfig apart from the others.
    """
    if not isinstance(quant_type, QuantType):
        raise TypeError(f"quant_type must be a torch.ao.quantization.QuantType, got {quant_type!r}")
    if qconfig_dict is not None and not isinstance(qconfig_dict, dict):
        raise TypeError(f"qconfig_dict must be a dict, got {type(qconfig_dict).__name__}")
    module_c = as_cpp(model)
    dynamic = quant_type == QuantType.DYNAMIC
    report = FloatOpReport()
    for method in module_c._method_names():
        quantized = _Quantized()
        for node in walk(method_graph(module_c, method)):
            kind = node.kind()
            if not kind.startswith("aten::") or kind in _QUANTIZE_KINDS or kind in _FLOAT_KINDS:
                continue
            if dynamic and kind not in DYNAMIC_QUANTIZABLE:
                continue
            if not any(_carries_tensors(o) for o in node.outputs()):
                continue
            if any(quantized(v) for v in node.inputs() if _carries_tensors(v)):
                continue
            if not _float_inputs(node, quantized):
                continue
            path = _module_path(node)
            reason, detail = _classify(node, path, qconfig_dict, dynamic)
            report.entries.append(FloatOp(path, kind, _source(node), reason, detail, method))
    return report


def _classify(node: Node, path: str, qconfig_dict: dict | None, dynamic: bool) -> tuple[str, str]:
    kind = node.kind()
    for rule in SAFETY_RULES:
        why = rule(node)
        if why is not None:
            return SAFETY_RULE, why
    if _qconfig_is_none(qconfig_dict, path):
        where = f"module {path!r}" if path else "the model"
        return NO_QCONFIG, f"the qconfig of {where} is None"
    quantizable = DYNAMIC_QUANTIZABLE if dynamic else STATIC_QUANTIZABLE
    if kind not in quantizable:
        return UNSUPPORTED_OP, f"no quantized kernel for {kind}"
    return UNOBSERVED_INPUT, "its input is a float tensor (not observed, or produced by a float op)"
