"""float_op_report: every op a quantized model runs in float, with a reason."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn as nn
from torch.ao.quantization import default_dynamic_qconfig, default_qconfig, get_default_qconfig
from torch.ao.quantization.quant_type import QuantType
from torch.testing import FileCheck

import qgraph
from helpers.models import calibrate
from helpers.quantized_reference import capture, reference_pair
from passes import finalize
from qgraph.quant.qconfig import qconfig_for_path, qconfig_key_for_path
from qgraph.report import (
    NO_QCONFIG,
    NOT_QUANTIZED,
    PREPARED,
    QUANTIZED,
    SAFETY_RULE,
    UNOBSERVED_INPUT,
    UNSUPPORTED_OP,
    FloatOpReport,
    detected_quant_type,
    float_op_report,
    quantization_state,
)


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return torch.exp(self.fc(x))


class Mixed(nn.Module):
    """A quantized branch ending in exp, a branch switched off, and float-only ops on an input."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.head = Head()
        self.off = nn.Linear(4, 4)

    def forward(self, x, y):
        z = self.conv(x).mean([2, 3])
        return self.head(z) + self.off(y), torch.softmax(y, 1)


def _quantized_mixed(tracing: bool):
    torch.manual_seed(0)
    example = (torch.randn(1, 3, 4, 4), torch.randn(2, 4))
    qconfig_dict = {"": default_qconfig, "off": None}
    qdq, _ = reference_pair(capture(Mixed(), example, tracing), qconfig_dict, [example])
    return finalize(qdq, QuantType.STATIC), qconfig_dict


@pytest.mark.parametrize("tracing", [False, True], ids=["script", "trace"])
def test_each_float_op_gets_its_reason_and_module(tracing):
    quantized, qconfig_dict = _quantized_mixed(tracing)
    report = float_op_report(quantized, qconfig_dict)
    by_kind = {(entry.kind, entry.module_path): entry for entry in report}
    assert by_kind[("aten::exp", "head")].reason == UNSUPPORTED_OP
    assert by_kind[("aten::linear", "off")].reason == NO_QCONFIG
    assert by_kind[("aten::softmax", "")].reason == UNSUPPORTED_OP
    assert by_kind[("aten::add", "")].reason == UNOBSERVED_INPUT
    # quantized ops and ops on quantized tensors are not reported
    assert "aten::mean" not in report.kinds() and "aten::conv2d" not in report.kinds()
    assert by_kind[("aten::exp", "head")].source.endswith(f"test_report.py:{_line_of('torch.exp(self.fc(x))')}")


def _line_of(text: str) -> int:
    with open(__file__, encoding="utf-8") as source:
        for number, line in enumerate(source, 1):
            if text in line:
                return number
    raise AssertionError(text)


def test_without_qconfig_dict_switched_off_ops_count_as_unobserved():
    quantized, _ = _quantized_mixed(False)
    report = float_op_report(quantized)
    off = [entry for entry in report if entry.module_path == "off"]
    assert [entry.reason for entry in off] == [UNOBSERVED_INPUT]


def test_format_is_a_table_with_one_row_per_op():
    quantized, qconfig_dict = _quantized_mixed(False)
    report = float_op_report(quantized, qconfig_dict)
    text = report.format()
    lines = text.splitlines()
    assert lines[0] == f"{len(report)} ops left in float"
    assert lines[1].split() == ["module", "op", "source", "reason", "detail"]
    assert len(lines) == 3 + len(report)
    assert any("aten::exp" in line and UNSUPPORTED_OP in line for line in lines)
    assert FloatOpReport().format() == "no ops left in float"


def test_loaded_model_gives_the_same_report():
    quantized, qconfig_dict = _quantized_mixed(False)
    buffer = io.BytesIO()
    torch.jit.save(quantized, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    assert float_op_report(loaded, qconfig_dict).kinds() == float_op_report(quantized, qconfig_dict).kinds()


class FullyQuantized(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.relu(self.conv(x))


def test_fully_quantized_model_has_empty_report():
    torch.manual_seed(0)
    example = (torch.randn(1, 3, 5, 5),)
    qdq, _ = reference_pair(capture(FullyQuantized(), example, False), {"": default_qconfig}, [example])
    assert len(float_op_report(finalize(qdq, QuantType.STATIC))) == 0


class DynamicWithFloat(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.off = nn.Linear(4, 4)

    def forward(self, x):
        return torch.tanh(self.fc(x)) + self.off(x)


def test_dynamic_report_lists_only_dynamically_quantizable_ops():
    torch.manual_seed(0)
    qconfig_dict = {"": default_dynamic_qconfig, "off": None}
    qdq, _ = reference_pair(
        capture(DynamicWithFloat(), (torch.randn(2, 4),), False), qconfig_dict, quant_type=QuantType.DYNAMIC
    )
    report = float_op_report(finalize(qdq, QuantType.DYNAMIC), qconfig_dict, QuantType.DYNAMIC)
    assert [(entry.kind, entry.module_path, entry.reason) for entry in report] == [("aten::linear", "off", NO_QCONFIG)]


class ConvThenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.conv(x).mean([2, 3]))


@pytest.mark.parametrize("tracing", [False, True], ids=["script", "trace"])
def test_a_float_model_is_reported_as_not_quantized(tracing):
    model = capture(ConvThenLinear(), (torch.randn(1, 3, 6, 6),), tracing)
    report = float_op_report(model)
    assert (report.state, len(report)) == (NOT_QUANTIZED, 0)
    assert report.format().startswith("the model is not quantized: it holds no quantize op and no quantized op")


def test_a_prepared_model_is_reported_as_prepared_not_quantized():
    prepared = qgraph.prepare_jit(capture(ConvThenLinear(), (torch.randn(1, 3, 6, 6),), False), {"": default_qconfig})
    report = float_op_report(prepared)
    assert report.state == PREPARED
    assert report.format().startswith("the model is prepared, not quantized: it holds observers")


@pytest.mark.parametrize("tracing", [False, True], ids=["script", "trace"])
def test_a_conv_dynamic_quantization_left_in_float_is_reported(tracing):
    model = capture(ConvThenLinear(), (torch.randn(1, 3, 6, 6),), tracing)
    quantized = qgraph.quantize_dynamic_jit(model, {"": default_dynamic_qconfig})
    assert detected_quant_type(quantized) == QuantType.DYNAMIC
    report = float_op_report(quantized, quant_type=QuantType.DYNAMIC)
    assert report.state == QUANTIZED
    assert [(entry.kind, entry.reason, entry.detail) for entry in report] == [
        (
            "aten::conv2d",
            UNSUPPORTED_OP,
            "dynamic quantization has no kernel for aten::conv2d (static quantization has: quantize_jit)",
        )
    ]


@pytest.mark.parametrize("debug", [False, True], ids=["quantized", "debug"])
def test_the_kind_of_quantization_is_read_from_the_model(debug):
    model = capture(ConvThenLinear(), (torch.randn(1, 3, 6, 6),), False)
    dynamic = qgraph.quantize_dynamic_jit(model, {"": default_dynamic_qconfig}, debug=debug)
    batch = torch.randn(1, 3, 6, 6)
    static = qgraph.quantize_jit(model, {"": default_qconfig}, lambda m, x: m(x), [batch], debug=debug)
    assert detected_quant_type(dynamic) == QuantType.DYNAMIC
    assert detected_quant_type(static) == QuantType.STATIC
    assert quantization_state(static) == quantization_state(dynamic) == QUANTIZED


def test_bad_arguments():
    quantized, _ = _quantized_mixed(False)
    with pytest.raises(TypeError, match="TorchScript module"):
        float_op_report(Mixed())
    with pytest.raises(TypeError, match="QuantType"):
        float_op_report(quantized, None, "static")
    with pytest.raises(TypeError, match="qconfig_dict"):
        float_op_report(quantized, [("", None)])


def _round_trip(model: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    buffer = io.BytesIO()
    torch.jit.save(model, buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


def _rows(report) -> list[tuple]:
    return [(entry.module_path, entry.kind, entry.reason, entry.detail) for entry in report]


# --- safety rules: what convert's legalize-quantized stage keeps in float ---------------------


class GroupwiseThenGroupNorm(nn.Module):
    """A conv on fbgemm's broken groupwise path (2 channels per group, 10 channels), then group_norm."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(10, 10, 3, padding=1, groups=5)
        self.norm = nn.GroupNorm(2, 10)

    def forward(self, x):
        return self.norm(self.conv(x))


def _quantize_static(model, example, tracing, qconfig_dict=None):
    torch.manual_seed(0)
    captured = capture(model, example, tracing)
    qconfig_dict = qconfig_dict or {"": get_default_qconfig("fbgemm")}
    return qgraph.quantize_jit(captured, qconfig_dict, calibrate, [[example]])


@pytest.mark.parametrize("tracing", [False, True], ids=["script", "trace"])
def test_ops_legalize_keeps_in_float_are_reported_as_safety_rules(tracing):
    torch.manual_seed(0)
    example = (torch.randn(2, 10, 6, 6),)
    quantized = _quantize_static(GroupwiseThenGroupNorm(), example, tracing)
    (conv,) = float_op_report(quantized).entries
    assert (conv.module_path, conv.kind, conv.reason) == ("conv", "aten::conv2d", SAFETY_RULE)
    assert "2 channels per group and 10 channels" in conv.detail
    assert conv.source.startswith("conv.py:")  # the model's conv, not legalize's code
    # The group_norm's guard against its kernel's skipped samples runs the quantized kernel
    # on every input: nothing of it is float, nothing is reported.
    assert "quantized::group_norm" in str(quantized.graph)
    text = float_op_report(quantized).format()
    assert "group_norm" not in text and UNOBSERVED_INPUT not in text


@pytest.mark.parametrize("tracing", [False, True], ids=["script", "trace"])
def test_safety_rule_entries_survive_save_and_load(tracing):
    example = (torch.randn(2, 10, 6, 6),)
    quantized = _quantize_static(GroupwiseThenGroupNorm(), example, tracing)
    assert _rows(float_op_report(_round_trip(quantized))) == _rows(float_op_report(quantized))


class TwoGroupwiseConvs(nn.Module):
    """Two unsafe grouped convs of different widths (the same source line once scripted), one fused with relu,
    and a group_norm switched off by the qconfig_dict next to a quantized one."""

    def __init__(self):
        super().__init__()
        self.narrow = nn.Conv2d(10, 10, 3, padding=1, groups=5)
        self.wide = nn.Sequential(nn.Conv2d(12, 12, 3, padding=1, groups=6), nn.ReLU())
        self.norm = nn.GroupNorm(2, 12)
        self.off = nn.GroupNorm(2, 12)

    def forward(self, x, y):
        a = self.narrow(x)
        b = self.norm(self.wide(y))
        return a, self.off(b)


@pytest.mark.parametrize("tracing", [False, True], ids=["script", "trace"])
def test_records_find_their_own_nodes_also_after_load(tracing):
    example = (torch.randn(1, 10, 5, 5), torch.randn(1, 12, 5, 5))
    qconfig_dict = {"": get_default_qconfig("fbgemm"), "off": None}
    quantized = _quantize_static(TwoGroupwiseConvs(), example, tracing, qconfig_dict)
    for model in (quantized, _round_trip(quantized)):
        report = float_op_report(model, qconfig_dict)
        safety = [(e.module_path, e.kind) for e in report.by_reason(SAFETY_RULE)]
        assert safety == [("narrow", "aten::conv2d"), ("wide.0", "aten::conv2d"), ("wide.0", "aten::relu")]
        details = {(e.module_path, e.kind): e.detail for e in report.by_reason(SAFETY_RULE)}
        assert "2 channels per group and 10 channels" in details[("narrow", "aten::conv2d")]
        assert "2 channels per group and 12 channels" in details[("wide.0", "aten::conv2d")]
        # The switched-off group_norm shares the quantized one's source line; only it is float.
        (off,) = [e for e in report if e.kind == "aten::group_norm"]
        assert off.reason in (NO_QCONFIG, UNOBSERVED_INPUT)
    assert [e.reason for e in float_op_report(quantized, qconfig_dict) if e.kind == "aten::group_norm"] == [NO_QCONFIG]


class OneByOneGroupedConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(12, 12, 1, groups=6)  # 2 channels per group but a 1x1 kernel: not the groupwise path

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("tracing", [False, True], ids=["script", "trace"])
def test_grouped_conv_off_the_groupwise_path_stays_quantized_and_unreported(tracing):
    example = (torch.randn(1, 12, 4, 4),)
    quantized = _quantize_static(OneByOneGroupedConv(), example, tracing)
    FileCheck().check("quantized::conv2d").check_not("aten::conv2d").run(str(quantized.graph))
    assert len(float_op_report(quantized)) == 0


# --- module paths -------------------------------------------------------------------------------


def _squash(x):
    return torch.exp(x)


class Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def _activation(self, x):
        return torch.softmax(x, 1)

    def forward(self, x):
        return _squash(self._activation(self.fc(x)))


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(Inner())

    def forward(self, x):
        return self.block(x)


@pytest.mark.parametrize("tracing", [False, True], ids=["script", "trace"])
def test_ops_in_submodule_methods_and_functions_name_the_submodule(tracing):
    example = (torch.randn(2, 4),)
    quantized = _quantize_static(Outer(), example, tracing, {"": default_qconfig})
    paths = {entry.kind: entry.module_path for entry in float_op_report(quantized)}
    assert paths == {"aten::softmax": "block.0", "aten::exp": "block.0"}


# --- the qconfig_dict rule ----------------------------------------------------------------------


class KeepAndSkip(nn.Module):
    def __init__(self):
        super().__init__()
        self.keep = nn.Linear(4, 4)
        self.skip = nn.Linear(4, 4)

    def forward(self, x):
        return self.keep(x) + self.skip(x)


class Branches(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = KeepAndSkip()
        self.blocky = nn.Linear(4, 4)

    def forward(self, x):
        return self.block(x) + self.blocky(x)


def test_no_qconfig_follows_the_longest_prefix_rule_of_qconfig_py():
    torch.manual_seed(0)
    example = (torch.randn(2, 4),)
    qconfig_dict = {"": default_qconfig, "block": None, "block.keep": default_qconfig}
    quantized = _quantize_static(Branches(), example, False, qconfig_dict)
    off = {(e.module_path, e.kind): e.detail for e in float_op_report(quantized, qconfig_dict).by_reason(NO_QCONFIG)}
    assert off == {
        ("block", "aten::add"): "the qconfig of module 'block' is None",
        ("block.skip", "aten::linear"): "the qconfig of module 'block.skip' is None (from the entry 'block')",
    }
    # "block" covers "block.skip", not "blocky"; without a "" entry, nothing else is covered.
    assert qconfig_key_for_path(qconfig_dict, "blocky") == ""
    assert qconfig_for_path({"block": default_qconfig}, "blocky") is None
    only_keep = {"block.keep": default_qconfig}
    quantized = _quantize_static(Branches(), example, False, only_keep)
    details = {e.module_path: e.detail for e in float_op_report(quantized, only_keep).by_reason(NO_QCONFIG)}
    assert details["blocky"] == "no qconfig_dict entry covers module 'blocky'"
    assert "block.keep" not in details


# --- dynamic quantization: RNNs left in float ---------------------------------------------------


class ProjectedLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(4, 6, proj_size=3)
        self.plain = nn.LSTM(4, 3)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(self.rnn(x)[0] + self.plain(x)[0])


@pytest.mark.parametrize("tracing", [False, True], ids=["script", "trace"])
def test_dynamic_report_says_why_an_lstm_stays_float(tracing):
    torch.manual_seed(0)
    example = (torch.randn(5, 1, 4),)
    qconfig_dict = {"": default_dynamic_qconfig, "plain": None}
    quantized = qgraph.quantize_dynamic_jit(capture(ProjectedLSTM(), example, tracing), qconfig_dict)
    # The reason travels as a node tag until convert records it; none is left in the graph.
    assert "qgraph_float" not in str(quantized.graph)
    for model in (quantized, _round_trip(quantized)):
        report = float_op_report(model, qconfig_dict, QuantType.DYNAMIC)
        (projected,) = [e for e in report if e.reason == UNSUPPORTED_OP]
        assert (projected.module_path, projected.kind) == ("rnn", "aten::lstm")
        assert "proj_size > 0" in projected.detail
    (switched_off,) = float_op_report(quantized, qconfig_dict, QuantType.DYNAMIC).by_reason(NO_QCONFIG)
    assert (switched_off.module_path, switched_off.kind) == ("plain", "aten::lstm")


# --- which values are quantized -----------------------------------------------------------------


class ConvLoop(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x, n: int):
        for _ in range(n):
            x = torch.relu(self.conv(x))
        return x


def test_loop_carried_quantized_values_are_not_reported():
    torch.manual_seed(0)
    example = (torch.randn(1, 3, 5, 5), 2)
    quantized = qgraph.quantize_jit(torch.jit.script(ConvLoop().eval()), {"": default_qconfig}, calibrate, [[example]])
    FileCheck().check("prim::Loop").check("quantized::conv2d_relu").run(str(quantized.graph))
    assert len(float_op_report(quantized)) == 0
