"""Per-op numerics of a quantized model against its float model: which op lost the accuracy.

``compare(float_model, quantized_model, inputs)`` runs both models on the
same inputs and, for every quantized op of ``quantized_model`` (a model from
``convert_jit``, or the ``debug=True`` reference model), compares the op's
output with the same value in the float model: SQNR in dB, the largest
absolute error, and the error's norm relative to the float value's::

    report = qgraph.compare(float_model, quantized, batches)
    print(report.format())

    4 quantized ops; model output SQNR 41.82 dB
    SQNR dB  max abs err  rel err  op                         module   source
    -------  -----------  -------  -------------------------  -------  -------------
      34.82     8.05e-03  1.8e-02  aten::mean                 <model>  model.py:7
      35.83     3.87e-02  1.6e-02  quantized::conv2d_relu     conv     conv.py:560
      36.66     2.60e-02  1.5e-02  aten::quantize_per_tensor  <model>  input 0
      41.82     6.71e-03  8.1e-03  quantized::linear          fc       linear.py:134

The ops are: the quantized kernels (``quantized::conv2d_relu``,
``quantized::linear_dynamic``, ``aten::quantized_lstm``, ...), ops that
compute on quantized tensors and round (``aten::avg_pool2d``,
``aten::sigmoid``, ...; not the ones that only move values, such as
``flatten`` or ``max_pool2d``), and each ``aten::quantize_per_tensor`` of an
activation (a model input or a float op's output). In a ``debug=True`` model,
every quantize of an activation stands for the op whose output it quantizes.

How an op is matched with its float value. The quantized model is frozen
and fused, so its ops are not the float model's; what survives is what
TorchScript keeps on every node: the source range of the code that made it
and, until the model is saved, the module call stack. Both models' forward
graphs are inlined (clones: the models are not touched), so every node has
its module path and source range, and:

1. A quantized op stands for the float op its fusion pattern was anchored
   on, whose source range and call stack the fusion copied
   (``quantized::conv2d_relu`` for the conv; a quantize for the op that
   produced its input; a float op is itself).
2. Nodes are grouped by (module path, source range, op family), the family
   being the op with variants folded (``conv2d``, traced ``_convolution``
   and the ``quantized::conv2d*`` kernels are ``conv``; ``addmm`` and
   ``linear`` are ``linear``; in-place ops are their out-of-place family).
   A traced source range is the Python stack at trace time: only its
   innermost frame counts, so models traced from different places match. A
   model loaded from a file has lost its call stacks: its nodes are grouped
   without module path.
3. Within a group, the k-th node of the quantized graph (in program order,
   every node of the family counted, also those left in float) is the k-th
   of the float graph. Groups of different sizes (freezing folded an ``if``
   on a module attribute that the float graph still has, so the float ops
   sit in both branches) pair at run time: every float candidate is
   recorded, and the one the float model computed for that input is taken.
4. From the matched float op, the value compared is where the quantized
   value is: after a BatchNorm that folding removed (a conv whose only use
   is a BatchNorm the quantized graph no longer has), then after the relu a
   ``*_relu`` kernel fused.

Each op's output is recorded while the models run by graph rewriting
(``qgraph.taps``), summed over all inputs. An op with no float value found
(a float model captured differently from the quantized one), or that no
input reached (a branch not taken), is listed at the end without numbers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from qgraph.ir import Graph, Node, Value, module_path_of, outputs_of, source_location, strip_serialized, walk
from qgraph.quant.quantized_values import quantized_values
from qgraph.taps import Taps, as_argument_tuple

__all__ = [
    "COMPARED",
    "NOT_RUN",
    "NO_FLOAT_VALUE",
    "NumericsReport",
    "OpNumerics",
    "as_batches",
    "compare",
    "format_table",
    "sqnr",
]

_QUANTIZE = frozenset({"aten::quantize_per_tensor", "aten::quantize_per_channel"})
# Ops that run on quantized tensors and only move, select or clip values: no rounding of their own.
_SAME_VALUES = frozenset(
    f"aten::{name}"
    for name in (
        "flatten",
        "reshape",
        "view",
        "view_as",
        "transpose",
        "permute",
        "contiguous",
        "chunk",
        "squeeze",
        "unsqueeze",
        "repeat",
        "repeat_interleave",
        "__getitem__",
        "dropout",
        "detach",
        "relu",
        "max_pool1d",
        "max_pool2d",
        "max_pool3d",
        "adaptive_max_pool1d",
        "adaptive_max_pool2d",
        "adaptive_max_pool3d",
        "max",
        "min",
        "sort",
        "stack",
        "select",
        "slice",
        "narrow",
        "split",
        "expand",
        "expand_as",
        "t",
        "numpy_T",
        "to",
        "clone",
        "dequantize",
        "q_scale",
        "q_zero_point",
        "size",
        "dim",
        "len",
        "numel",
        "int_repr",
    )
)
_KERNEL_SUFFIXES = re.compile(r"(_rowwise_offsets|_byte|_4bit|_scalar|_relu6?|_dynamic|_fp16|_out)+$")
_FAMILIES = {
    "_convolution": "conv",
    "conv1d": "conv",
    "conv2d": "conv",
    "conv3d": "conv",
    "conv_transpose1d": "conv",
    "conv_transpose2d": "conv",
    "conv_transpose3d": "conv",
    "addmm": "linear",
    "batch_norm1d": "batch_norm",
    "batch_norm2d": "batch_norm",
    "batch_norm3d": "batch_norm",
}


def sqnr(signal_power: float, noise_power: float) -> float:
    """10 log10(signal / noise) in dB; inf when there is no noise."""
    if noise_power == 0:
        return math.inf
    if signal_power == 0:
        return -math.inf
    return 10 * math.log10(signal_power / noise_power)


COMPARED = "compared"
NOT_RUN = "not run"
NO_FLOAT_VALUE = "no float value"


@dataclass(frozen=True)
class OpNumerics:
    """One quantized op's output against the float model's value (numbers None when unmatched)."""

    module_path: str
    kind: str
    source: str | None
    sqnr: float | None
    max_abs_error: float | None
    relative_error: float | None
    status: str = "compared"  # COMPARED, NOT_RUN (no input reached it) or NO_FLOAT_VALUE


@dataclass
class NumericsReport:
    """Every quantized op, in graph order, and the SQNR of the model's output."""

    ops: list[OpNumerics] = field(default_factory=list)
    output_sqnr: float | None = None

    def __len__(self) -> int:
        return len(self.ops)

    def __iter__(self):
        return iter(self.ops)

    def worst_first(self) -> list[OpNumerics]:
        """Ops sorted by SQNR, lowest first; unmatched ops last, in graph order."""
        matched = [op for op in self.ops if op.sqnr is not None]
        unmatched = [op for op in self.ops if op.sqnr is None]
        return sorted(matched, key=lambda op: op.sqnr if op.sqnr is not None else math.inf) + unmatched

    def format(self, limit: int | None = None, width: int = 100) -> str:
        """A table worst SQNR first (``limit`` rows at most), no wider than ``width`` columns."""
        count = len(self.ops)
        title = f"{count} quantized op{'s' if count != 1 else ''}"
        if self.output_sqnr is not None:
            title += f"; model output SQNR {_decibels(self.output_sqnr)} dB"
        if not self.ops:
            return title
        shown = self.worst_first()[: limit if limit is not None else count]
        rows = [
            (
                _decibels(op.sqnr),
                "-" if op.max_abs_error is None else f"{op.max_abs_error:.2e}",
                "-" if op.relative_error is None else f"{op.relative_error:.1e}",
                op.kind,
                op.module_path or "<model>",
                op.source or "-",
            )
            for op in shown
        ]
        header = ("SQNR dB", "max abs err", "rel err", "op", "module", "source")
        table = format_table(header, rows, width=width, right_aligned=(0, 1, 2), shrinkable=(3, 4, 5))
        more = f"\n({count - len(shown)} more)" if len(shown) < count else ""
        notes = ""
        for status, says in ((NOT_RUN, "not reached by the inputs"), (NO_FLOAT_VALUE, "without a float value")):
            number = sum(1 for op in self.ops if op.status == status)
            if number:
                notes += f"\n{number} op{'s' if number != 1 else ''} {says} (-)"
        return f"{title}\n{table}{more}{notes}"


def _decibels(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.2f}"


def format_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    width: int = 100,
    right_aligned: Iterable[int] = (),
    shrinkable: Iterable[int] = (),
) -> str:
    """Columns two spaces apart; the widest ``shrinkable`` column loses its head (``…tail``) until it fits."""
    right = set(right_aligned)
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    flexible = list(shrinkable)
    while sum(widths) + 2 * (len(widths) - 1) > width and flexible:
        widest = max(flexible, key=lambda i: widths[i])
        if widths[widest] <= max(len(header[widest]), 8):
            flexible.remove(widest)
            continue
        widths[widest] -= 1

    def cell(text: str, i: int) -> str:
        if len(text) > widths[i]:
            text = "…" + text[len(text) - widths[i] + 1 :]
        return text.rjust(widths[i]) if i in right else text.ljust(widths[i])

    lines = ["  ".join(cell(str(c), i) for i, c in enumerate(row)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --- inputs ----------------------------------------------------------------------------------------


def as_batches(inputs: Any) -> list[tuple]:
    """The calls to run: a list is one call per element (a tuple of arguments, or one tensor); else one call."""
    if isinstance(inputs, list):
        if not inputs:
            raise ValueError("no inputs to run: the list of batches is empty")
        return [as_argument_tuple(batch) for batch in inputs]
    return [as_argument_tuple(inputs)]


# --- matching --------------------------------------------------------------------------------------


def _family(kind: str) -> str:
    """``aten::conv2d`` and ``quantized::conv2d_relu`` -> ``conv``; ``aten::add_`` -> ``add``."""
    namespace, _, name = kind.partition("::")
    if namespace == "quantized":
        name = _KERNEL_SUFFIXES.sub("", name.removeprefix("quantized_"))
    elif name.startswith("quantized_"):  # aten::quantized_lstm, aten::quantized_gru
        name = name.removeprefix("quantized_")
    name = name.rstrip("_") if not name.startswith("_") else name
    return _FAMILIES.get(name, name)


# The first line of a traced node's source range: "model.py(12): forward".
_TRACED_FRAME = re.compile(r"^[^\n]+\(\d+\): ")


def _source_key(node: Node) -> str:
    text = strip_serialized(str(node.sourceRange() or ""))
    first = text.split("\n", 1)[0]
    # A traced node's source range is the Python stack when it was traced:
    # its innermost frame says where the op is, the rest where tracing was called.
    if _TRACED_FRAME.match(first):
        return first
    return text


@dataclass(frozen=True)
class _Site:
    """A value of the quantized graph to compare, and where its float value comes from."""

    value: Value
    kind: str  # what the record calls the op
    origin: Node | None  # the node standing for the float op (None: a model input)
    input_index: int  # for a model input: its position among forward's inputs (self excluded)
    fused_relu: bool
    where: Node | None = None  # the node whose module and source the record names (default: origin)


class _Groups:
    """Nodes of one graph by (module path, source range, op family), in program order."""

    def __init__(self, graph: Graph, with_paths: bool):
        self.with_paths = with_paths
        self.members: dict[tuple[str, str, str], list[Node]] = {}
        for node in walk(graph):
            key = self.key(node)
            if key is not None:
                self.members.setdefault(key, []).append(node)

    def key(self, node: Node) -> tuple[str, str, str] | None:
        kind = node.kind()
        if kind.startswith("prim::") or kind in _QUANTIZE or kind == "aten::dequantize":
            return None
        source = _source_key(node)
        if not source:
            return None
        return (module_path_of(node) if self.with_paths else "", source, _family(kind))


class _Matcher:
    def __init__(self, float_graph: Graph, quantized_graph: Graph):
        with_paths = any(module_path_of(node) for node in walk(quantized_graph))
        self.float_graph = float_graph
        self.float_groups = _Groups(float_graph, with_paths)
        self.quantized_groups = _Groups(quantized_graph, with_paths)

    def float_nodes(self, origin: Node) -> list[Node]:
        """The float ops ``origin`` may stand for: one, or those of a group rule 3 could not pair."""
        key = self.quantized_groups.key(origin)
        if key is None:
            return []
        candidates = self.float_groups.members.get(key, [])
        ours = self.quantized_groups.members[key]
        if len(candidates) == len(ours):
            return [candidates[ours.index(origin)]]
        return candidates

    def float_values(self, site: _Site) -> list[tuple[Value, Node | None]]:
        """The float model's values that may be ``site``'s, each with the float op it comes from.

        More than one when the groups do not pair up (a quantized graph whose
        ``if`` was folded away by freezing, the float one with both branches):
        the one the float model computed is taken when the models run.
        """
        if site.origin is None:
            inputs = list(self.float_graph.inputs())
            return [(inputs[site.input_index + 1], None)] if site.input_index + 1 < len(inputs) else []
        found: list[tuple[Value, Node | None]] = []
        for node in self.float_nodes(site.origin):
            if not outputs_of(node):
                continue
            value = node.outputsAt(0)
            if _family(node.kind()) == "conv":
                value = self._past_folded_batch_norm(value)
            if site.fused_relu:
                value = _past_sole_user(value, "relu") or value
            if value.type().kind() == "TensorType":
                found.append((value, node))
        return found

    def _past_folded_batch_norm(self, value: Value) -> Value:
        after = _past_sole_user(value, "batch_norm")
        if after is None:
            return value
        batch_norm = after.node()
        # Folded means gone: a BatchNorm the quantized graph still runs was not folded.
        key = self.float_groups.key(batch_norm)
        if key is not None and key in self.quantized_groups.members:
            return value
        return after


def _past_sole_user(value: Value, family: str) -> Value | None:
    # Shape and type checks (``input.dim()`` in BatchNorm's forward) read the value without using its data.
    users = {use.user for use in value.uses() if any(_carries_tensor(v) for v in outputs_of(use.user))}
    if len(users) != 1:
        return None
    user = users.pop()
    if _family(user.kind()) != family or user.inputsAt(0) != value:
        return None
    return user.output() if user.outputsSize() == 1 else user.outputsAt(0)


def _carries_tensor(value: Value) -> bool:
    return "Tensor" in str(value.type())


def _is_weight(value: Value) -> bool:
    return value.node().kind() in ("prim::GetAttr", "prim::Constant")


def _first_tensor(node: Node) -> Value | None:
    return next((v for v in outputs_of(node) if v.type().kind() == "TensorType"), None)


def _input_site(quantize: Node, kind: str) -> _Site | None:
    """A quantize of an activation stands for the op producing it (or for a model input)."""
    source = quantize.inputsAt(0)
    if _is_weight(source) or source.type().kind() != "TensorType":
        return None
    producer = source.node()
    if producer.kind() == "prim::Param":
        if producer.owningBlock().owningNode() is not None:
            return None  # a loop-carried value: no single float value stands for it
        return _Site(quantize.output(), kind, None, source.offset() - 1, False)
    return _Site(quantize.output(), kind, producer, -1, False)


def _sites(graph: Graph) -> list[_Site]:
    """The values of a converted graph to compare (see the module docstring)."""
    kinds = {node.kind() for node in walk(graph)}
    debug = not any(k.startswith(("quantized::", "aten::quantized_")) for k in kinds)
    sites: list[_Site] = []
    if debug:
        for node in walk(graph):
            if node.kind() in _QUANTIZE:
                site = _input_site(node, node.kind())
                if site is not None:
                    sites.append(_debug_site(site))
        return sites
    quantized = quantized_values(graph)
    for node in walk(graph):
        kind = node.kind()
        if kind in _QUANTIZE:
            site = _input_site(node, kind)
        elif kind.startswith(("quantized::", "aten::quantized_")):
            if kind.endswith(("_prepack", "_unpack")):
                continue
            value = _first_tensor(node)
            site = None if value is None else _Site(value, kind, node, -1, "_relu" in kind)
        elif kind.startswith("aten::") and kind not in _SAME_VALUES:
            value = _first_tensor(node)
            site = _Site(value, kind, node, -1, False) if value is not None and value in quantized else None
        else:
            site = None
        if site is not None:
            sites.append(site)
    return sites


_DELAYED_FIRST = frozenset({"conv", "linear", "add", "mul", "batch_norm"})


def _debug_site(site: _Site) -> _Site:
    """Name a debug model's quantize after the op it quantizes (a conv for a conv's relu)."""
    origin = site.origin
    if origin is None:
        return site
    kind = origin.kind()
    if _family(kind) == "relu" and origin.inputsSize() > 0:
        before = origin.inputsAt(0)
        if _family(before.node().kind()) in _DELAYED_FIRST and len({u.user for u in before.uses()}) == 1:
            return _Site(site.value, f"{before.node().kind()}+relu", origin, -1, False, before.node())
    return _Site(site.value, kind, origin, -1, False)


# --- the comparison --------------------------------------------------------------------------------


@dataclass
class _Errors:
    signal: float = 0.0
    noise: float = 0.0
    max_abs: float = 0.0
    seen: bool = False
    shape_mismatch: bool = False

    def add(self, expected: torch.Tensor, actual: torch.Tensor) -> None:
        if actual.is_quantized:
            actual = actual.dequantize()
        if expected.is_quantized:
            expected = expected.dequantize()
        if expected.shape != actual.shape:
            # The same elements in another view (a mean legalized to keepdim and squeeze).
            if expected.numel() != actual.numel():
                self.shape_mismatch = True
                return
            actual = actual.reshape(expected.shape)
        expected = expected.detach().to(torch.float64)
        difference = actual.detach().to(torch.float64) - expected
        self.signal += float((expected * expected).sum())
        self.noise += float((difference * difference).sum())
        if difference.numel():
            self.max_abs = max(self.max_abs, float(difference.abs().max()))
        self.seen = True

    def numbers(self) -> tuple[float | None, float | None, float | None]:
        if not self.seen or self.shape_mismatch:
            return None, None, None
        relative = math.sqrt(self.noise / self.signal) if self.signal > 0 else (0.0 if self.noise == 0 else math.inf)
        return sqnr(self.signal, self.noise), self.max_abs, relative


def output_errors(expected: Any, actual: Any, errors: _Errors | None = None) -> _Errors:
    """Errors of every tensor in a (nested) model output against the float model's."""
    errors = errors if errors is not None else _Errors()
    if isinstance(expected, torch.Tensor) and isinstance(actual, torch.Tensor):
        errors.add(expected, actual)
    elif isinstance(expected, (tuple, list)) and isinstance(actual, (tuple, list)) and len(expected) == len(actual):
        for e, a in zip(expected, actual):
            output_errors(e, a, errors)
    elif isinstance(expected, dict) and isinstance(actual, dict):
        for key in expected:
            if key in actual:
                output_errors(expected[key], actual[key], errors)
    return errors


def _script_like(float_model: torch.nn.Module, quantized_graph: Graph, example: tuple) -> torch.jit.ScriptModule:
    """Capture an eager float model as the quantized one was (traced ranges name Python stack frames)."""
    traced = any(_TRACED_FRAME.match(str(n.sourceRange() or "")) for n in walk(quantized_graph))
    model = float_model.eval()
    return torch.jit.trace(model, example) if traced else torch.jit.script(model)


def compare(float_model: Any, quantized_model: Any, inputs: Any) -> NumericsReport:
    """Each quantized op's output against the float model's same value, on the same inputs.

    ``float_model`` is the scripted or traced model that was quantized (an
    eager ``nn.Module`` is captured the way the quantized model was);
    ``quantized_model`` comes from ``convert_jit`` (or ``debug=True``), in
    memory or loaded from a file; ``inputs`` is one call's arguments (a
    tuple, or one tensor) or a list of such calls. Returns a
    ``NumericsReport``; ``report.format()`` prints it worst SQNR first.
    """
    batches = as_batches(inputs)
    quantized_taps = Taps(quantized_model)
    if isinstance(float_model, torch.nn.Module) and not isinstance(float_model, torch.jit.ScriptModule):
        float_model = _script_like(float_model, quantized_taps.graph, batches[0])
    float_taps = Taps(float_model)
    matcher = _Matcher(float_taps.graph, quantized_taps.graph)
    sites = _sites(quantized_taps.graph)
    # Every match before any tap: a tap adds a reader to the value it records.
    candidates = [matcher.float_values(site) for site in sites]
    # A model input always has its float value; an op is matched only through what the graphs kept.
    op_candidates = [found for site, found in zip(sites, candidates) if site.origin is not None]
    if op_candidates and not any(op_candidates):
        raise ValueError(
            "no quantized op could be matched with a value of the float model: pass the float model that was "
            "quantized, captured the same way (scripted or traced)"
        )
    quantized_keys = [quantized_taps.tap(site.value) for site in sites]
    float_keys = [[float_taps.tap(value) for value, _ in found] for found in candidates]
    errors = [_Errors() for _ in sites]
    chosen: list[Node | None] = [None for _ in sites]
    model_output = _Errors()
    for batch in batches:
        expected_output, expected = float_taps.run(batch)
        actual_output, actual = quantized_taps.run(batch)
        output_errors(expected_output, actual_output, model_output)
        for index, quantized_key in enumerate(quantized_keys):
            ran = [i for i, key in enumerate(float_keys[index]) if key in expected]
            if quantized_key not in actual or len(ran) != 1:
                continue
            errors[index].add(expected[float_keys[index][ran[0]]], actual[quantized_key])
            chosen[index] = candidates[index][ran[0]][1]
    report = NumericsReport(output_sqnr=model_output.numbers()[0])
    for site, site_errors, found, float_node in zip(sites, errors, candidates, chosen):
        where = site.where or site.origin
        # A model loaded from a file forgot its module paths; the float model's op still knows its own.
        path = module_path_of(where) if where is not None else ""
        if not path and float_node is not None:
            path = module_path_of(float_node)
        numbers = site_errors.numbers()
        report.ops.append(
            OpNumerics(
                module_path=path,
                kind=site.kind,
                source=(source_location(where) if where is not None else None) or _input_name(site),
                sqnr=numbers[0],
                max_abs_error=numbers[1],
                relative_error=numbers[2],
                status=COMPARED if numbers[0] is not None else (NOT_RUN if found else NO_FLOAT_VALUE),
            )
        )
    return report


def _input_name(site: _Site) -> str | None:
    return f"input {site.input_index}" if site.origin is None else None
