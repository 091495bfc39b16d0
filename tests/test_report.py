"""float_op_report: every op a quantized model runs in float, with a reason."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn as nn
from helpers.quantized_reference import capture, reference_pair
from torch.ao.quantization import default_dynamic_qconfig, default_qconfig
from torch.ao.quantization.quant_type import QuantType

from passes.finalize import finalize
from qgraph.report import (
    NO_QCONFIG,
    SAFETY_RULE,
    UNOBSERVED_INPUT,
    UNSUPPORTED_OP,
    FloatOpReport,
    float_op_report,
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
    assert [(entry.kind, entry.module_path, entry.reason) for entry in report] == [
        ("aten::linear", "off", NO_QCONFIG)
    ]


class GroupedConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(12, 12, 1, groups=6)  # 2 channels per group, 12 channels

    def forward(self, x):
        return self.conv(x)


def test_safety_rule_names_the_kernel_bug():
    torch.manual_seed(0)
    frozen = torch.jit.freeze(torch.jit.script(GroupedConv().eval()))
    report = float_op_report(frozen)
    assert [entry.reason for entry in report] == [SAFETY_RULE]
    assert "2 channels per group" in report.entries[0].detail


def test_bad_arguments():
    quantized, _ = _quantized_mixed(False)
    with pytest.raises(TypeError, match="TorchScript module"):
        float_op_report(Mixed())
    with pytest.raises(TypeError, match="QuantType"):
        float_op_report(quantized, None, "static")
    with pytest.raises(TypeError, match="qconfig_dict"):
        float_op_report(quantized, [("", None)])
