"""Valid models the reference quantizer fails on: loops, `if` branches observed
differently, one value under two qconfigs, traced dead code, per-instance
qconfigs on shared class types, in-place scalar add/mul after an earlier
reader, a traced block instance with a Conv-BN pair called twice.

Where the reference has no output to compare with, a model is checked against
qgraph's own ``debug=True`` model (equal outputs), against float (SQNR, with a
threshold derived from a variant of the same network that the reference does
quantize), across repeated runs, and through a save/load round trip. Where
the reference quantizes, outputs are compared with it bit for bit.
"""

from __future__ import annotations

import io
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.ao.quantization import QConfig, default_qconfig, get_default_qconfig, prepare_jit, quantize_jit
from torch.ao.quantization.observer import (
    HistogramObserver,
    MinMaxObserver,
    PerChannelMinMaxObserver,
    PlaceholderObserver,
)
from torch.testing import FileCheck

import qgraph
from helpers.models import calibrate, capture
from helpers.numerics import sqnr

TRACING = pytest.mark.parametrize("tracing", [False, True], ids=["scripted", "traced"])
FBGEMM = get_default_qconfig("fbgemm")  # HistogramObserver activations, per-channel weights
# How far below the reference-quantizable variant's SQNR a model may land (dB).
SQNR_SLACK = 3.0
# Loops: the unrolled net (which the reference quantizes) has observers per
# iteration, the loop body one set for all iterations; the same slack applies.
LOOP_SLACK = 3.0


def quantize_both(model, qconfig_dict, data):
    """qgraph's debug=True and debug=False models of ``model``, from one calibration."""
    prepared = qgraph.prepare_jit(model, qconfig_dict)
    calibrate(prepared, data)
    return qgraph.convert_jit(prepared, debug=True), qgraph.convert_jit(prepared)


def reference_quantize(model, qconfig_dict, data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_jit(model, qconfig_dict, calibrate, [data])


def mean_sqnr(float_model, quantized, inputs) -> float:
    with torch.no_grad():
        return sum(sqnr(float_model(*args), quantized(*args)) for args in inputs) / len(inputs)


def save_and_load(model):
    buffer = io.BytesIO()
    torch.jit.save(model, buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


def assert_sound(debug_model, quantized, inputs):
    """Finite, equal to the debug model (unless None), the same on a second run and after save/load."""
    loaded = save_and_load(quantized)
    with torch.no_grad():
        for args in inputs:
            out = quantized(*args)
            assert torch.isfinite(out).all()
            if debug_model is not None:
                assert torch.equal(out, debug_model(*args))
            assert torch.equal(out, quantized(*args))
            assert torch.equal(out, loaded(*args))


def observer_calls_on(graph: torch._C.Graph, value: torch._C.Value) -> list[tuple[str, torch._C.Node]]:
    """(observer attribute, call node) for each ``_observer_N`` forward call that reads ``value``."""
    found = []
    for use in value.uses():
        call = use.user
        receiver = call.inputsAt(0).node()
        if (
            call.kind() == "prim::CallMethod"
            and receiver.kind() == "prim::GetAttr"
            and receiver.s("name").startswith("_observer_")
        ):
            found.append((receiver.s("name"), call))
    return found


def body_of(graph: torch._C.Graph, kind: str) -> str:
    """The text of the first ``kind`` node of ``graph``, its blocks included."""
    for node in graph.nodes():
        if node.kind() == kind:
            return str(node)
    raise AssertionError(f"no {kind} in graph")


# ---- loops with a run-time trip count -----------------------------------------------------


class ResidualLoop(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x, n: int):
        for _ in range(n):
            x = self.conv(x) + x
        return x


class ResidualUnrolled(nn.Module):
    """ResidualLoop with three iterations written out (one conv, called three times)."""

    def __init__(self, conv):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        x = self.conv(x) + x
        x = self.conv(x) + x
        return self.conv(x) + x


def loop_inputs(n=3, count=4, shape=(1, 4, 8, 8)):
    return [(torch.randn(shape), n) for _ in range(count)]


def test_loop_residual_conv_is_quantized_inside_the_loop():
    # Reference: warns "prim::Loop is not yet supported" and leaves conv and add float (only the
    # weight is constant-folded); its only quantizable version is the unrolled net.
    torch.manual_seed(0)
    float_model = ResidualLoop().eval()
    model = capture(float_model, None, False)
    data, inputs = loop_inputs(), loop_inputs()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*Loop.*")
        debug_model, quantized = quantize_both(model, {"": FBGEMM}, data)
    # The loop carries the quantized tensor: no quantize/dequantize inside the body.
    FileCheck().check("quantize_per_tensor").check("prim::Loop").check_not("quantize_per_tensor").check_not(
        "aten::dequantize"
    ).check("quantized::conv2d").check("quantized::add").check("aten::dequantize").run(str(quantized.graph))
    assert_sound(debug_model, quantized, inputs + [(inputs[0][0], 0), (inputs[0][0], 1)])

    unrolled = capture(ResidualUnrolled(float_model.conv), None, False)
    reference = reference_quantize(unrolled, {"": FBGEMM}, [(x,) for x, _ in data])
    threshold = mean_sqnr(unrolled, reference, [(x,) for x, _ in inputs]) - LOOP_SLACK
    assert mean_sqnr(model, quantized, inputs) > threshold


class ModuleListLoop(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1)])

    def forward(self, x, n: int):
        for _ in range(n):
            for layer in self.layers:
                x = F.relu(layer(x)) + x
        return x


class ModuleListUnrolled(nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.layers = layers

    def forward(self, x):
        x = F.relu(self.layers[0](x)) + x
        x = F.relu(self.layers[1](x)) + x
        x = F.relu(self.layers[0](x)) + x
        return F.relu(self.layers[1](x)) + x


def test_loop_over_module_list_with_runtime_count():
    # Reference: warns "prim::Loop is not yet supported" and runs both convs in float.
    torch.manual_seed(0)
    float_model = ModuleListLoop().eval()
    model = capture(float_model, None, False)
    data, inputs = loop_inputs(n=2), loop_inputs(n=2)
    debug_model, quantized = quantize_both(model, {"": default_qconfig}, data)
    body = body_of(quantized.graph, "prim::Loop")
    FileCheck().check_count("quantized::conv2d_relu", 2, exactly=True).run(body)
    FileCheck().check_count("quantized::add", 2, exactly=True).run(body)
    assert_sound(debug_model, quantized, inputs)

    float_unrolled = ModuleListUnrolled(float_model.layers)
    unrolled = capture(float_unrolled, None, False)
    reference = reference_quantize(unrolled, {"": default_qconfig}, [(x,) for x, _ in data])
    threshold = mean_sqnr(unrolled, reference, [(x,) for x, _ in inputs]) - LOOP_SLACK
    assert mean_sqnr(model, quantized, inputs) > threshold


class AccumulatingLoop(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x, n: int):
        total = torch.zeros_like(x)
        for _ in range(n):
            x = self.conv(x)
            total = total + x
        return total


class AccumulatingUnrolled(nn.Module):
    def __init__(self, conv):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        a = self.conv(x)
        b = self.conv(a)
        c = self.conv(b)
        return a + b + c


def test_loop_with_two_carried_values_observes_each_once():
    # Reference: warns "prim::Loop is not yet supported"; conv and add stay float.
    torch.manual_seed(0)
    float_model = AccumulatingLoop().eval()
    model = capture(float_model, None, False)
    prepared = qgraph.prepare_jit(model, {"": default_qconfig})
    # Each carried value is observed where it enters (before the loop) and on the back edge
    # (in the body), each with an observer of its own; the body's parameters are not observed again.
    text = str(prepared.graph)
    before, body = text.split("prim::Loop", 1)
    assert before.count('CallMethod[name="forward"](%_observer_') == 2  # x and the zeros
    assert body.count('CallMethod[name="forward"](%_observer_') == 2  # conv output and the sum
    data, inputs = loop_inputs(), loop_inputs()
    calibrate(prepared, data)
    debug_model, quantized = qgraph.convert_jit(prepared, debug=True), qgraph.convert_jit(prepared)
    FileCheck().check("quantized::conv2d").check("quantized::add").check_not("aten::dequantize").run(
        body_of(quantized.graph, "prim::Loop")
    )
    assert_sound(debug_model, quantized, inputs)

    unrolled = capture(AccumulatingUnrolled(float_model.conv), None, False)
    reference = reference_quantize(unrolled, {"": default_qconfig}, [(x,) for x, _ in data])
    threshold = mean_sqnr(unrolled, reference, [(x,) for x, _ in inputs]) - LOOP_SLACK
    assert mean_sqnr(model, quantized, inputs) > threshold


# ---- `if` branches observed differently ------------------------------------------------


class Relu6Tail(nn.Module):
    def forward(self, x):
        return F.relu6(x)


class ClampTail(nn.Module):
    def forward(self, x):
        return x.clamp_(-1.0, 1.0)


class MeanTail(nn.Module):
    def forward(self, x):
        return x.mean(dim=2, keepdim=True)


class NarrowTail(nn.Module):
    def forward(self, x):
        return x.narrow(2, 1, 6)


class SliceTail(nn.Module):
    def forward(self, x):
        return x[:, :, 1:7]


class AdaptiveMaxPoolTail(nn.Module):
    def forward(self, x):
        return F.adaptive_max_pool2d(x, (4, 4))


class ExpTail(nn.Module):
    def forward(self, x):
        return torch.exp(x)


TAILS = [Relu6Tail, ClampTail, MeanTail, NarrowTail, SliceTail, AdaptiveMaxPoolTail, ExpTail]


class BranchOnArgument(nn.Module):
    def __init__(self, tail: nn.Module):
        super().__init__()
        self.stem, self.conv, self.head = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 1)
        self.tail = tail

    def forward(self, x, flag: bool):
        x = self.stem(x)
        if flag:
            y = self.conv(x)
        else:
            y = self.tail(x)
        return self.head(y)


class BranchOnAttribute(nn.Module):
    def __init__(self, tail: nn.Module, flag: bool):
        super().__init__()
        self.stem, self.conv, self.head = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 1)
        self.tail = tail
        self.flag = flag

    def forward(self, x):
        x = self.stem(x)
        if self.flag:
            y = self.conv(x)
        else:
            y = self.tail(x)
        return self.head(y)


class Straight(nn.Module):
    """One side of the branch, without the `if` (the reference quantizes it)."""

    def __init__(self, source, use_conv: bool):
        super().__init__()
        self.stem, self.head = source.stem, source.head
        self.side = source.conv if use_conv else source.tail

    def forward(self, x):
        return self.head(self.side(self.stem(x)))


def straight_threshold(source, use_conv, data, inputs):
    straight = capture(Straight(source, use_conv), None, False)
    reference = reference_quantize(straight, {"": default_qconfig}, data)
    return mean_sqnr(straight, reference, inputs) - SQNR_SLACK


@pytest.mark.parametrize(
    "tail",
    TAILS,
    ids=[t.__name__ for t in TAILS],
)
def test_if_branches_observed_differently_flag_argument(tail):
    # Reference: raises "branches for `if` should return values that are observed consistently"
    # (all tails but MeanTail, whose mean sits in a submodule call the reference observes through).
    torch.manual_seed(0)
    float_model = BranchOnArgument(tail()).eval()
    model = capture(float_model, None, False)
    images = [torch.randn(1, 3, 8, 8) for _ in range(4)]
    data = [(x, flag) for x in images for flag in (True, False)]
    if tail is MeanTail:
        prepare_jit(model, {"": default_qconfig})  # a mean inside a submodule call: the reference copes
    else:
        with pytest.raises(RuntimeError, match="observed consistently"):
            prepare_jit(model, {"": default_qconfig})
    debug_model, quantized = quantize_both(model, {"": default_qconfig}, data)
    FileCheck().check("prim::If").check("block0").check("quantized::conv2d").check("block1").run(str(quantized.graph))
    inputs = [(torch.randn(1, 3, 8, 8),) for _ in range(3)]
    for flag in (True, False):
        flagged = [(x.clone(), flag) for (x,) in inputs]
        assert_sound(debug_model, quantized, flagged)
        threshold = straight_threshold(float_model, flag, [(x,) for x in images], inputs)
        assert mean_sqnr(model, quantized, [(x.clone(), flag) for (x,) in inputs]) > threshold


@pytest.mark.parametrize("tail", [Relu6Tail, ClampTail, ExpTail], ids=["Relu6Tail", "ClampTail", "ExpTail"])
@pytest.mark.parametrize("flag", [True, False])
def test_if_branches_observed_differently_flag_attribute(tail, flag):
    # Reference: raises "branches for `if` should return values that are observed consistently".
    torch.manual_seed(0)
    float_model = BranchOnAttribute(tail(), flag).eval()
    model = capture(float_model, None, False)
    data = [(torch.randn(1, 3, 8, 8),) for _ in range(4)]
    with pytest.raises(RuntimeError, match="observed consistently"):
        prepare_jit(model, {"": default_qconfig})
    debug_model, quantized = quantize_both(model, {"": default_qconfig}, data)
    # Freezing folds the attribute: only the taken side is left.
    FileCheck().check_not("prim::If").check_count("quantized::conv2d", 3 if flag else 2, exactly=True).run(
        str(quantized.graph)
    )
    inputs = [(torch.randn(1, 3, 8, 8),) for _ in range(3)]
    assert_sound(debug_model, quantized, inputs)
    assert mean_sqnr(model, quantized, inputs) > straight_threshold(float_model, flag, data, inputs)


# ---- one value under two qconfigs -----------------------------------------------------------


class Reader(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


class TwoReaders(nn.Module):
    """The model input (or a float op's output) read by two submodules."""

    def __init__(self, through_float_op: bool = False):
        super().__init__()
        self.a, self.b = Reader(), Reader()
        self.through_float_op = through_float_op

    def forward(self, x):
        if self.through_float_op:
            x = torch.sin(x)
        return self.a(x) + self.b(x)


def two_reader_data():
    return [(torch.randn(1, 3, 8, 8),) for _ in range(3)]


@TRACING
@pytest.mark.parametrize("none_side", ["a", "b"])
def test_value_read_by_a_quantized_and_a_none_submodule(none_side, tracing):
    # Reference: quantizes it (the None side reads the dequantized value and stays float);
    # qgraph must give the same bits.
    torch.manual_seed(0)
    data = two_reader_data()
    model = capture(TwoReaders(), data[0], tracing)
    qconfig_dict = {"": default_qconfig, none_side: None}
    debug_model, quantized = quantize_both(model, qconfig_dict, data)
    reference = reference_quantize(model, qconfig_dict, data)
    graph = str(quantized.graph)
    FileCheck().check_count("quantized::conv2d", 1, exactly=True).run(graph)
    FileCheck().check_count("aten::conv2d", 1, exactly=True).run(graph)
    # The None side's conv reads a float tensor.
    conv = next(n for n in quantized.graph.nodes() if n.kind() == "aten::conv2d")
    assert conv.inputsAt(0).node().kind() == "aten::dequantize"
    inputs = two_reader_data()
    assert_sound(debug_model, quantized, inputs)
    with torch.no_grad():
        for args in inputs:
            assert torch.equal(quantized(*args), reference(*args))


PER_TENSOR_MINMAX = default_qconfig  # MinMaxObserver activation, per-tensor weight


@TRACING
@pytest.mark.parametrize("through_float_op", [False, True], ids=["model_input", "float_op_output"])
@pytest.mark.parametrize("first", ["per_tensor", "per_channel"])
def test_value_read_under_two_qconfigs_takes_the_first_readers_observer(first, through_float_op, tracing):
    # Reference: raises "Expecting all values in the graph only configured with one observer".
    torch.manual_seed(0)
    data = two_reader_data()
    model = capture(TwoReaders(through_float_op), data[0], tracing)
    a_qconfig, b_qconfig = (PER_TENSOR_MINMAX, FBGEMM) if first == "per_tensor" else (FBGEMM, PER_TENSOR_MINMAX)
    qconfig_dict = {"": None, "a": a_qconfig, "b": b_qconfig}
    with pytest.raises(RuntimeError, match="only configured with one observer"):
        prepare_jit(model, qconfig_dict)
    prepared = qgraph.prepare_jit(model, qconfig_dict)
    # Observed once, in the root, by the first reader's activation observer: both readers
    # read one observer's output, and that observer is the only one watching the value.
    reader_calls = {
        node.inputsAt(0).node().s("name"): node
        for node in prepared.graph.nodes()
        if node.kind() == "prim::CallMethod" and node.inputsAt(0).node().kind() == "prim::GetAttr"
    }
    read = reader_calls["a"].inputsAt(1)
    assert reader_calls["b"].inputsAt(1) == read
    shared = read.node().inputsAt(1)
    # Scripted, `if self.through_float_op` stays in the graph and its output is the shared value.
    if not tracing:
        assert shared.node().kind() == "prim::If"
    else:
        assert shared.node().kind() == ("aten::sin" if through_float_op else "prim::Param")
    watchers = observer_calls_on(prepared.graph, shared)
    assert [call for _, call in watchers] == [read.node()]
    name = watchers[0][0]
    expected = HistogramObserver if first == "per_channel" else MinMaxObserver
    assert getattr(prepared, name).original_name == expected.__name__
    # Each reader keeps its own weight observer.
    weight_types = {
        path: [m.original_name for name, m in getattr(prepared, path).conv.named_children() if "_observer_" in name]
        for path in ("a", "b")
    }
    per_channel = PerChannelMinMaxObserver.__name__
    assert weight_types["a" if first == "per_channel" else "b"] == [per_channel]
    assert weight_types["b" if first == "per_channel" else "a"] == [MinMaxObserver.__name__]

    calibrate(prepared, data)
    debug_model, quantized = qgraph.convert_jit(prepared, debug=True), qgraph.convert_jit(prepared)
    graph = str(quantized.graph)
    FileCheck().check_count("aten::quantize_per_tensor", 1, exactly=True).check_count(
        "quantized::conv2d", 2, exactly=True
    ).run(graph)
    inputs = two_reader_data()
    assert_sound(debug_model, quantized, inputs)
    # Threshold: the reference on the same model with the first reader's qconfig everywhere.
    reference = reference_quantize(model, {"": a_qconfig}, data)
    assert mean_sqnr(model, quantized, inputs) > mean_sqnr(model, reference, inputs) - SQNR_SLACK


# ---- traced dead code -----------------------------------------------------------------------


class DeadReluAfter(nn.Module):
    """A ReLU module called on a conv / add / mul result that nothing uses."""

    def __init__(self, producer: str, dead: bool = True):
        super().__init__()
        self.conv, self.head, self.relu = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 1), nn.ReLU()
        self.producer, self.dead = producer, dead

    def forward(self, x):
        y = self.conv(x)
        if self.producer == "conv":
            z, kept = y, x
        elif self.producer == "add":
            z, kept = y + x, y
        else:
            z, kept = y * x, y
        if self.dead:
            self.relu(z)  # the only reader of z
        return self.head(kept)


@pytest.mark.parametrize("producer", ["conv", "add", "mul"])
def test_traced_unused_relu_call_is_never_observed(producer):
    # Reference: observes the call's None result and fails in prepare ("Expected a value of
    # type 'Tensor' ... but instead found type 'NoneType'").
    torch.manual_seed(0)
    data = [(torch.randn(1, 3, 8, 8),) for _ in range(3)]
    model = capture(DeadReluAfter(producer), data[0], True)
    FileCheck().check("NoneType = prim::CallMethod").run(str(model.graph))
    with pytest.raises(RuntimeError, match="NoneType"):
        prepare_jit(model, {"": default_qconfig})
    prepared = qgraph.prepare_jit(model, {"": default_qconfig})
    observed = [
        node.inputsAt(1)
        for node in prepared.graph.nodes()
        if node.kind() == "prim::CallMethod"
        and node.inputsAt(0).node().kind() == "prim::GetAttr"
        and node.inputsAt(0).node().s("name").startswith("_observer_")
    ]
    assert observed and all(value.type().kind() == "TensorType" for value in observed)
    calibrate(prepared, data)
    debug_model, quantized = qgraph.convert_jit(prepared, debug=True), qgraph.convert_jit(prepared)
    inputs = [(torch.randn(1, 3, 8, 8),) for _ in range(3)]
    assert_sound(debug_model, quantized, inputs)
    # The dead call changes nothing: same bits as the reference on the model without it.
    clean = capture(DeadReluAfter(producer, dead=False), data[0], True)
    clean.load_state_dict(model.state_dict())
    reference = reference_quantize(clean, {"": default_qconfig}, data)
    with torch.no_grad():
        for args in inputs:
            assert torch.equal(quantized(*args), reference(*args))


# ---- shared class types with a qconfig for a child of one instance -------------------------


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv(x))


class TwinBlock(Block):
    """The same code under another class, so the reference gives each instance its own type."""


class TwoBlocks(nn.Module):
    def __init__(self, second=Block):
        super().__init__()
        self.first, self.second = Block(), second()

    def forward(self, x):
        return self.second(self.first(x)) + x


PER_CHANNEL_MINMAX = QConfig(
    activation=MinMaxObserver.with_args(reduce_range=True),
    weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric),
)


@TRACING
@pytest.mark.parametrize(
    "entry",
    [None, PER_CHANNEL_MINMAX],
    ids=["none", "per_channel"],
)
def test_qconfig_for_a_child_of_one_of_two_shared_instances(entry, tracing):
    # Reference: scripted, raises "... is not compatible with the type ... for the field ...";
    # with two distinct classes it quantizes, and qgraph must give those bits.
    torch.manual_seed(0)
    data = [(torch.randn(1, 3, 8, 8),) for _ in range(3)]
    model = capture(TwoBlocks(), data[0], tracing)
    qconfig_dict = {"": default_qconfig, "second.conv": entry}
    debug_model, quantized = quantize_both(model, qconfig_dict, data)
    graph = str(quantized.graph)
    if entry is None:
        FileCheck().check_count("quantized::conv2d_relu", 1, exactly=True).check("aten::conv2d").run(graph)
    else:
        FileCheck().check_count("quantized::conv2d_relu", 2, exactly=True).run(graph)
    inputs = [(torch.randn(1, 3, 8, 8),) for _ in range(3)]
    # With the child float, a float conv reads the quantized conv_relu's output: the kernel
    # rounds some elements one step away from the debug model's float conv, and the float
    # conv passes that on unrounded. The reference's debug and final models differ the same
    # way, so each of ours is compared with the reference's own.
    assert_sound(None if entry is None else debug_model, quantized, inputs)

    torch.manual_seed(0)
    distinct = capture(TwoBlocks(second=TwinBlock), data[0], tracing)
    distinct.load_state_dict(model.state_dict())
    reference = reference_quantize(distinct, qconfig_dict, data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference_debug = quantize_jit(distinct, qconfig_dict, calibrate, [data], debug=True)
    with torch.no_grad():
        for args in inputs:
            assert torch.equal(quantized(*args), reference(*args))
            assert torch.equal(debug_model(*args), reference_debug(*args))
        if entry is None:
            assert any(not torch.equal(reference(*args), reference_debug(*args)) for args in inputs)
    # The twin keeps the default (per-tensor) weight quantization.
    prepared = qgraph.prepare_jit(model, qconfig_dict)
    first_weight = [m.original_name for n, m in prepared.first.conv.named_children() if "_observer_" in n]
    assert first_weight == [MinMaxObserver.__name__]
    second_weight = [m.original_name for n, m in prepared.second.conv.named_children() if "_observer_" in n]
    assert second_weight == ([] if entry is None else [PerChannelMinMaxObserver.__name__])


# ---- EmbeddingBag in mean mode ---------------------------------------------------------------


class Bag(nn.Module):
    def __init__(self, mode: str):
        super().__init__()
        self.bag = nn.EmbeddingBag(10, 12, mode=mode, include_last_offset=True)

    def forward(self, indices, offsets):
        return self.bag(indices, offsets)


def bag_qconfig(op_name: str) -> QConfig:
    return QConfig(
        activation=PlaceholderObserver.with_args(dtype=torch.float, custom_op_name=op_name),
        weight=PlaceholderObserver.with_args(dtype=torch.quint8, custom_op_name=op_name),
    )


def rowwise_quantized(weight: torch.Tensor, op_name: str) -> torch.Tensor:
    """``weight`` as the quantized bag sees it: prepacked row by row, then unpacked to float."""
    ops = torch.ops.quantized
    if op_name == "embedding_bag_byte":
        return ops.embedding_bag_byte_unpack(ops.embedding_bag_byte_prepack(weight))
    ratio = float(torch.tensor(0.16, dtype=torch.float32))
    return ops.embedding_bag_4bit_unpack(ops.embedding_bag_4bit_prepack(weight, False, 200, ratio))


def bag_data():
    # Bags of 3, 0 (empty), 3 and 2 indices; include_last_offset=True.
    return [(torch.tensor([1, 2, 4, 5, 4, 3, 2, 9]), torch.tensor([0, 3, 3, 6, 8]))]


BAG_OPS = pytest.mark.parametrize("op_name", ["embedding_bag_byte", "embedding_bag_4bit"], ids=["byte", "4bit"])


@TRACING
@BAG_OPS
def test_embedding_bag_mean_mode_computes_the_mean(op_name, tracing):
    # Reference: computes the sum for mode="mean" (the quantized kernels ignore their mode argument).
    torch.manual_seed(0)
    data = bag_data()
    float_model = Bag("mean").eval()
    model = capture(float_model, data[0], tracing)
    qconfig_dict = {"": bag_qconfig(op_name)}
    debug_model, quantized = quantize_both(model, qconfig_dict, data)
    FileCheck().check(f"quantized::{op_name}_rowwise_offsets").check("aten::div").check_not("aten::embedding_bag").run(
        str(quantized.graph)
    )
    assert_sound(debug_model, quantized, data)

    indices, offsets = data[0]
    weight = rowwise_quantized(float_model.bag.weight.detach(), op_name)
    mean = F.embedding_bag(indices, weight, offsets, mode="mean", include_last_offset=True)
    total = F.embedding_bag(indices, weight, offsets, mode="sum", include_last_offset=True)
    with torch.no_grad():
        out = quantized(indices, offsets)
        torch.testing.assert_close(out, mean, rtol=1e-6, atol=1e-6)
        assert torch.equal(out[1], torch.zeros(12))  # the empty bag
        # The reference and eager quantized nn.EmbeddingBag(mode="mean") both give the sum.
        torch.testing.assert_close(reference_quantize(model, qconfig_dict, data)(indices, offsets), total)
        same_weights = nn.EmbeddingBag.from_pretrained(weight, mode="mean", include_last_offset=True)
        same_weights.qconfig = (
            torch.ao.quantization.float_qparams_weight_only_qconfig
            if op_name == "embedding_bag_byte"
            else torch.ao.quantization.float_qparams_weight_only_qconfig_4bit
        )
        eager = torch.ao.nn.quantized.EmbeddingBag.from_float(same_weights)
        assert eager.mode == "mean"
        torch.testing.assert_close(eager(indices, offsets), total)


@TRACING
@BAG_OPS
def test_embedding_bag_sum_mode_keeps_the_reference_bits(op_name, tracing):
    # Reference: quantizes it; qgraph must give the same bits.
    torch.manual_seed(0)
    data = bag_data()
    model = capture(Bag("sum"), data[0], tracing)
    qconfig_dict = {"": bag_qconfig(op_name)}
    debug_model, quantized = quantize_both(model, qconfig_dict, data)
    FileCheck().check(f"quantized::{op_name}_rowwise_offsets").check_not("aten::div").run(str(quantized.graph))
    assert_sound(debug_model, quantized, data)
    reference = reference_quantize(model, qconfig_dict, data)
    with torch.no_grad():
        assert torch.equal(quantized(*data[0]), reference(*data[0]))


@BAG_OPS
def test_embedding_bag_max_mode_stays_float(op_name):
    # Reference: computes the sum for mode="max" too.
    torch.manual_seed(0)
    data = bag_data()
    model = capture(Bag("max"), data[0], False)
    debug_model, quantized = quantize_both(model, {"": bag_qconfig(op_name)}, data)
    FileCheck().check("aten::embedding_bag").check_not(f"quantized::{op_name}").run(str(quantized.graph))
    assert_sound(debug_model, quantized, data)
    with torch.no_grad():
        assert torch.equal(quantized(*data[0]), model(*data[0]))


# ---- an in-place scalar add/mul on a value an earlier op already read -------------------------


class ReadThenUpdate(nn.Module):
    """A conv output that relu reads first and an in-place scalar op updates after."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3)


class AddInPlace(ReadThenUpdate):
    def forward(self, x):
        v = self.conv(x)
        w = F.relu(v)
        v += 0.5
        return w, v


class MulInPlace(ReadThenUpdate):
    def forward(self, x):
        v = self.conv(x)
        w = F.relu(v)
        v *= 0.5
        return w, v


class AddInPlaceRelu(ReadThenUpdate):
    def forward(self, x):
        v = self.conv(x)
        w = F.relu(v)
        v += 0.5
        v = F.relu(v)
        return w, v


class MulInPlaceRelu(ReadThenUpdate):
    def forward(self, x):
        v = self.conv(x)
        w = F.relu(v)
        v *= 0.5
        v = F.relu(v)
        return w, v


class ReluInPlaceThenAdd(ReadThenUpdate):
    def forward(self, x):
        v = self.conv(x)
        w = F.relu(v)
        v.relu_()
        v += 0.5
        return w, v


# The same computations with the update out of place: what the reference quantizes right.
class AddOutOfPlace(ReadThenUpdate):
    def forward(self, x):
        v = self.conv(x)
        return F.relu(v), v + 0.5


class MulOutOfPlace(ReadThenUpdate):
    def forward(self, x):
        v = self.conv(x)
        return F.relu(v), v * 0.5


class AddOutOfPlaceRelu(ReadThenUpdate):
    def forward(self, x):
        v = self.conv(x)
        return F.relu(v), F.relu(v + 0.5)


class MulOutOfPlaceRelu(ReadThenUpdate):
    def forward(self, x):
        v = self.conv(x)
        return F.relu(v), F.relu(v * 0.5)


class ReluThenAddOutOfPlace(ReadThenUpdate):
    def forward(self, x):
        v = self.conv(x)
        return F.relu(v), F.relu(v) + 0.5


IN_PLACE_AFTER_A_READER = pytest.mark.parametrize(
    "in_place, out_of_place",
    [
        (AddInPlace, AddOutOfPlace),
        (MulInPlace, MulOutOfPlace),
        (AddInPlaceRelu, AddOutOfPlaceRelu),
        (MulInPlaceRelu, MulOutOfPlaceRelu),
        (ReluInPlaceThenAdd, ReluThenAddOutOfPlace),
    ],
    ids=["add_", "mul_", "add_relu_out", "mul_relu_out", "relu_then_add_"],
)


@TRACING
@IN_PLACE_AFTER_A_READER
def test_in_place_scalar_op_after_an_earlier_reader(in_place, out_of_place, tracing):
    # Reference (scripted): fuses the update into quantized::add_scalar_out / mul_scalar_out
    # right where v is produced, above the relu that read v first, so the relu sees the updated
    # value (SQNR below 0 dB); its own debug=True model does not. qgraph must not copy that.
    torch.manual_seed(0)
    data = [(torch.randn(2, 3, 6, 6),) for _ in range(3)]
    eager = in_place().eval()
    model = capture(eager, data[0], tracing)
    with pytest.warns(UserWarning, match="debug=True does not model add/mul with a scalar exactly"):
        debug_model, quantized = quantize_both(model, {"": default_qconfig}, data)
    FileCheck().check("quantized::conv2d").check("aten::relu").check("_scalar").run(str(quantized.graph))

    # The same network with the update out of place, scripted: the reference quantizes it right
    # (one observer fewer or more nowhere), so its bits are the answer for both outputs.
    twin = out_of_place().eval()
    twin.load_state_dict(eager.state_dict())
    reference = reference_quantize(torch.jit.script(twin), {"": default_qconfig}, data)
    loaded = save_and_load(quantized)
    with torch.no_grad():
        for args in data:
            (w, v), (w_debug, v_debug), (w_ref, v_ref) = quantized(*args), debug_model(*args), reference(*args)
            w_float, v_float = eager(args[0].clone())
            assert torch.equal(w, w_ref) and torch.equal(v, v_ref)
            # The earlier reader saw v before the update, as in float and in the debug model.
            assert torch.equal(w, w_debug)
            assert sqnr(w_float, w) > 25 and sqnr(v_float, v) > 25
            if in_place in (AddInPlace, AddInPlaceRelu, ReluInPlaceThenAdd):
                # (A scalar mul rescales in the kernel, while the debug model requantizes its
                # result with v's qparams: the reference's debug and final models differ there too.)
                assert torch.equal(v, v_debug)
            for a, b in zip(loaded(*args), (w, v)):
                assert torch.equal(a, b)


class InPlaceAddInOneBranch(ReadThenUpdate):
    def forward(self, x, in_place: bool):
        v = self.conv(x)
        if in_place:
            v += 0.5
            return F.relu(v)
        return F.relu(v + 0.5)


def test_in_place_scalar_add_in_one_branch_stays_in_its_branch():
    # Reference: hoists the branch's quantized::add_scalar_relu_out up to where v is produced,
    # so it runs whichever branch is taken: the other branch adds 0.5 a second time.
    torch.manual_seed(0)
    data = [(torch.randn(2, 3, 6, 6), flag) for flag in (True, False, True)]
    eager = InPlaceAddInOneBranch().eval()
    model = capture(eager, data[0], False)
    with pytest.warns(UserWarning, match="debug=True does not model add/mul with a scalar exactly"):
        debug_model, quantized = quantize_both(model, {"": default_qconfig}, data)
    x = data[0][0]
    with torch.no_grad():
        taken, not_taken = quantized(x, True), quantized(x, False)
        assert torch.equal(taken, not_taken)
        for flag, out in ((True, taken), (False, not_taken)):
            assert torch.equal(out, debug_model(x, flag))
            assert sqnr(eager(x.clone(), flag), out) > 25


# ---- a traced block instance called twice, with a Conv-BN pair --------------------------------


class ConvBnBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)
            self.bn.weight.uniform_(0.5, 2)
            self.bn.bias.uniform_(-1, 1)

    def forward(self, x):
        return self.bn(self.conv(x))


class OneBlockTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = ConvBnBlock()

    def forward(self, x):
        return self.block(self.block(x))


class TwoConvBnBlocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second = ConvBnBlock(), ConvBnBlock()

    def forward(self, x):
        return self.second(self.first(x))


@TRACING
@pytest.mark.parametrize("qconfig", [default_qconfig, FBGEMM], ids=["minmax", "fbgemm"])
def test_block_instance_called_twice_with_conv_bn(qconfig, tracing):
    # Reference (traced): the second call is the block's method forward1; the pair is folded
    # for forward only, into the conv weight both methods share, so forward1 applies
    # BatchNorm twice (SQNR near 0 dB, in its debug=True model too). qgraph must not copy that.
    torch.manual_seed(0)
    data = [(torch.randn(2, 3, 6, 6),) for _ in range(3)]
    eager = OneBlockTwice().eval()
    model = capture(eager, data[0], tracing)
    assert not tracing or "forward1" in str(model.graph)
    # Folding keeps the float model's function.
    torch.testing.assert_close(qgraph.fuse_conv_bn_jit(model)(data[0][0]), eager(data[0][0]))
    debug_model, quantized = quantize_both(model, {"": qconfig}, data)
    assert_sound(debug_model, quantized, data)
    # Threshold: the reference's SQNR for two blocks of their own with the same weights, which
    # it folds and quantizes right, less the usual slack.
    twins = TwoConvBnBlocks().eval()
    twins.first.load_state_dict(eager.block.state_dict())
    twins.second.load_state_dict(eager.block.state_dict())
    reference = reference_quantize(capture(twins, data[0], tracing), {"": qconfig}, data)
    assert mean_sqnr(eager, quantized, data) >= mean_sqnr(eager, reference, data) - SQNR_SLACK
