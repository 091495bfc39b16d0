"""legalize_quantized: converted models that PyTorch's kernels or IR conventions break, made to run.

Each test converts a small model with qgraph (and, where it can, with the
reference, ``torch.ao.quantization.quantize_jit``), applies the pass by hand,
and checks: the graph shape, outputs finite and deterministic, closeness to
float, a ``torch.jit.save`` / ``load`` round trip, and bit equality with the
reference wherever the reference's model runs. Thresholds on SQNR come from
the same network in a shape the reference quantizes correctly, measured in
the test itself.
"""

from __future__ import annotations

import io
import json
from unittest import mock

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.ao.quantization import get_default_qconfig, quantize_jit
from torch.testing import FileCheck

import passes.composite.lowering
import qgraph
from helpers.models import calibrate, capture
from helpers.numerics import sqnr
from passes import legalize_quantized
from qgraph.quant.float_ops import FLOAT_OPS_ATTRIBUTE, float_op_records
from qgraph.quant.kernels import groupwise_conv_is_unsafe
from qgraph.quant.quantized_values import quantized_values

QCONFIG = {"": get_default_qconfig("fbgemm")}
CAPTURES = ["script", "trace"]


def quantize_both(model: nn.Module, example: tuple, how: str, batches=None, debug=False, reference=True):
    """(captured float model, reference model or None, qgraph model with the pass applied, rewrite count)."""
    batches = batches or [example]
    # strict=False: ListOfConvOutputs returns a list of outputs, which is always the same list.
    captured = capture(model, example, how, strict=False, check_trace=True)
    ref = quantize_jit(captured, QCONFIG, calibrate, [batches], debug=debug) if reference else None
    counts = []

    def counting(module):
        counts.append(legalize_quantized(module))
        return counts[-1]

    # convert runs the pass as its last stage; count what it rewrote there.
    with mock.patch.object(passes.composite.lowering, "legalize_quantized", counting):
        ours = qgraph.quantize_jit(captured, QCONFIG, calibrate, [batches], debug=debug)
    assert len(counts) == 1
    assert legalize_quantized(ours) == 0  # already legal: a second run changes nothing
    return captured, ref, ours, counts[0]


def flat(output) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    return [t for item in output for t in flat(item)]


def assert_bits_equal(a, b) -> None:
    assert type(a) is type(b) or (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor))
    got, expected = flat(a), flat(b)
    assert len(got) == len(expected)
    for x, y in zip(got, expected):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert torch.equal(x, y), f"outputs differ by up to {(x - y).abs().max().item()}"


def round_trip(model: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    buffer = io.BytesIO()
    torch.jit.save(model, buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


def check_runs_well(model: torch.jit.ScriptModule, inputs: tuple):
    """Output finite, the same over repeated runs and after save/load; returns it."""
    first = model(*inputs)
    assert all(torch.isfinite(t).all() for t in flat(first))
    for _ in range(3):
        assert_bits_equal(model(*inputs), first)
    assert_bits_equal(round_trip(model)(*inputs), first)
    return first


# --- rule 1: tuples of quantized outputs ---------------------------------------------------------


class TwoConvOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.left = nn.Conv2d(3, 4, 3)
        self.right = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.left(x), self.right(x)


@pytest.mark.parametrize("how, debug", [("script", False), ("trace", False), ("script", True)])
def test_tuple_of_quantized_outputs_loads_back(how, debug):
    # reference: saves, but torch.jit.load raises "Return value was annotated as having type
    # Tuple[Tensor, Tensor] but is actually of type List[Tensor]".
    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8)
    _, ref, ours, made = quantize_both(TwoConvOutputs(), (x,), how, debug=debug)
    with pytest.raises(RuntimeError, match="List\\[Tensor\\]"):
        round_trip(ref)
    assert made == 1
    FileCheck().check_count("aten::dequantize", 2).check("prim::TupleConstruct").check_next("return").run(
        str(ours.graph)
    )
    out = check_runs_well(ours, (x,))
    assert isinstance(out, tuple)
    assert_bits_equal(out, ref(x))


class NestedConvOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3)
        self.b = nn.Conv2d(3, 4, 3)
        self.c = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.a(x), (self.b(x), self.c(x))


@pytest.mark.parametrize("how", CAPTURES)
def test_nested_tuple_of_quantized_outputs_loads_back(how):
    # reference: torch.jit.load raises "Return value was annotated as having type
    # Tuple[Tensor, Tuple[Tensor, Tensor]] but is actually of type Any".
    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8)
    _, ref, ours, made = quantize_both(NestedConvOutputs(), (x,), how)
    with pytest.raises(RuntimeError, match="annotated as having type"):
        round_trip(ref)
    assert made == 2
    FileCheck().check_not("Tensor, Tensor) = aten::dequantize").run(str(ours.graph))
    out = check_runs_well(ours, (x,))
    assert isinstance(out, tuple) and isinstance(out[1], tuple)
    assert_bits_equal(out, ref(x))


class ListOfConvOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3)
        self.b = nn.Conv2d(3, 4, 3)

    def forward(self, x) -> list[torch.Tensor]:
        return [self.a(x), self.b(x)]


@pytest.mark.parametrize("how", CAPTURES)
def test_list_of_quantized_outputs_is_left_alone(how):
    # reference: runs, saves and loads (dequantize of a Tensor[] returns a list).
    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8)
    _, ref, ours, made = quantize_both(ListOfConvOutputs(), (x,), how)
    assert made == 0
    FileCheck().check("Tensor[] = aten::dequantize").run(str(ours.graph))
    out = check_runs_well(ours, (x,))
    assert isinstance(out, list)
    assert_bits_equal(out, round_trip(ref)(x))


# --- rule 2: view on channels-last quantized values ----------------------------------------------


class CatWithItself(nn.Module):
    def forward(self, y):
        return torch.cat([y, y], 1)


def _after_conv(producer: str) -> nn.Module:
    return {
        "conv": nn.Identity(),
        "batch_norm": nn.Sequential(nn.ReLU(), nn.BatchNorm2d(8)),
        "group_norm": nn.GroupNorm(2, 8),
        "instance_norm": nn.InstanceNorm2d(8),
        "avg_pool": nn.AvgPool2d(2),
        "cat": CatWithItself(),
    }[producer]


class ViewAfter(nn.Module):
    """A conv, then ``producer``, then ``.view`` (or, as the reference can run it, ``.reshape``)."""

    def __init__(self, producer: str, use_reshape: bool = False):
        super().__init__()
        self.use_reshape = use_reshape
        self.conv = nn.Conv2d(3, 8, 3)
        self.after = _after_conv(producer)

    def forward(self, x):
        y = self.after(self.conv(x))
        if self.use_reshape:
            return y.reshape(y.size(0), -1)
        return y.view(y.size(0), -1)


@pytest.mark.parametrize(
    "producer, how",
    [
        ("conv", "script"),
        ("conv", "trace"),
        ("batch_norm", "script"),
        ("group_norm", "trace"),
        ("instance_norm", "script"),
        ("avg_pool", "trace"),
        ("cat", "script"),
    ],
)
def test_view_of_channels_last_quantized_value_becomes_reshape(producer, how):
    # reference: raises "view size is not compatible with input tensor's size and stride".
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    model = ViewAfter(producer).eval()
    _, ref, ours, made = quantize_both(model, (x,), how)
    with pytest.raises(RuntimeError, match="view size is not compatible"):
        ref(x)
    # group_norm and instance_norm also get their guard against the kernel's skipped samples.
    assert made == 1 + _norm_calls(producer, how)
    FileCheck().check("aten::reshape").check_not("aten::view(").run(str(ours.graph))
    out = check_runs_well(ours, (x,))
    # The same network written with reshape is what the reference runs: same bits.
    reshaping = ViewAfter(producer, use_reshape=True).eval()
    reshaping.load_state_dict(model.state_dict())
    _, ref_reshape, _, _ = quantize_both(reshaping, (x,), how)
    assert_bits_equal(out, ref_reshape(x))


class ViewOfPooledMap(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(self.conv(x)).view(-1, 4)


@pytest.mark.parametrize("how", CAPTURES)
def test_view_where_reference_runs_gives_reference_bits(how):
    # reference: runs (a 1x1 pooled map is contiguous).
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    _, ref, ours, made = quantize_both(ViewOfPooledMap(), (x,), how)
    assert made == 1
    assert_bits_equal(check_runs_well(ours, (x,)), ref(x))


class ViewOfFloatInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(48, 4)

    def forward(self, x):
        return self.fc(x.view(x.size(0), -1))


@pytest.mark.parametrize("how", CAPTURES)
def test_view_of_float_value_stays_view(how):
    # reference: runs; the view reads the float input, before any quantize.
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 4)
    _, ref, ours, made = quantize_both(ViewOfFloatInput(), (x,), how)
    assert made == 0
    FileCheck().check("aten::view").check("aten::quantize_per_tensor").run(str(ours.graph))
    assert_bits_equal(check_runs_well(ours, (x,)), ref(x))


def test_view_in_debug_model_gives_debug_reference_bits():
    # reference (debug=True): runs; the view reads a fresh, contiguous quantize_per_tensor.
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    _, ref, ours, made = quantize_both(ViewAfter("conv"), (x,), "script", debug=True)
    assert made == 1
    assert_bits_equal(check_runs_well(ours, (x,)), ref(x))


# --- rule 3: mean that drops the dims of a quantized map -----------------------------------------


class MeanOfConv(nn.Module):
    def __init__(self, form: str):
        super().__init__()
        self.form = form
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        if self.form == "dims":
            return y.mean([2, 3])
        if self.form == "negative_dims":
            return torch.mean(y, [-1, -2])
        if self.form == "kept_dims":
            return y.mean([2, 3], True).squeeze([2, 3])
        return y.mean()


@pytest.mark.parametrize(
    "form, how",
    [("dims", "script"), ("dims", "trace"), ("negative_dims", "script"), ("all", "script"), ("all", "trace")],
)
def test_mean_dropping_dims_of_1x1_map_runs(form, how):
    # reference: raises "required rank 4 tensor to use channels_last format".
    torch.manual_seed(0)
    x = torch.randn(2, 3, 3, 3)  # the conv leaves a 1x1 map
    model = MeanOfConv(form).eval()
    _, ref, ours, made = quantize_both(model, (x,), how)
    with pytest.raises(RuntimeError, match="channels_last"):
        ref(x)
    assert made == 1
    FileCheck().check("aten::mean").run(str(ours.graph))
    out = check_runs_well(ours, (x,))
    assert out.shape == model(x).shape
    if form != "all":
        # The same network spelled keepdim + squeeze is what the reference runs: same bits.
        kept = MeanOfConv("kept_dims").eval()
        kept.load_state_dict(model.state_dict())
        _, ref_kept, _, _ = quantize_both(kept, (x,), how)
        assert_bits_equal(out, ref_kept(x))


@pytest.mark.parametrize("how", CAPTURES)
@pytest.mark.parametrize("form", ["dims", "all"])
def test_mean_on_4x4_map_gives_reference_bits(form, how):
    # reference: runs on a 4x4 map.
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)
    _, ref, ours, made = quantize_both(MeanOfConv(form), (x,), how)
    assert made == 1
    assert_bits_equal(check_runs_well(ours, (x,)), ref(x))


# --- rule 4: quantized group_norm / instance_norm skipping samples -------------------------------


class ConvNorm(nn.Module):
    def __init__(self, norm: str):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.norm = nn.GroupNorm(4, 8) if norm == "group_norm" else nn.InstanceNorm2d(8, affine=True)

    def forward(self, x):
        return self.norm(self.conv(x))


# (norm, input shape the kernel gets wrong, input shape it gets right): group_norm has 2 channels
# per group, so a 1x1 map holds 2 elements per group (batch 4 > 2) and a 2x2 map 8 (batch 4 <= 8);
# instance_norm has 1 channel per group: a 2x2 map holds 4 (batch 5 > 4), a 3x3 map 9.
def _norm_calls(norm: str, how: str) -> int:
    """How many quantized norm kernel calls the converted ConvNorm (or ViewAfter) graph has."""
    if norm not in ("group_norm", "instance_norm"):
        return 0
    # Scripted InstanceNorm2d keeps its branch for unbatched input, with a call of its own.
    return 2 if norm == "instance_norm" and how == "script" else 1


NORM_CASES = [
    ("group_norm", (4, 3, 3, 3), (4, 3, 4, 4)),
    ("instance_norm", (5, 3, 4, 4), (5, 3, 5, 5)),
]


@pytest.mark.parametrize("how", CAPTURES)
@pytest.mark.parametrize("norm, skipped_shape, safe_shape", NORM_CASES)
def test_norm_kernel_skipping_samples_is_guarded_without_a_float_op(norm, skipped_shape, safe_shape, how):
    # reference: the channels-last kernel leaves the outputs of the samples past the number of
    # elements per group unwritten: off by whole units, and different from run to run.
    torch.manual_seed(0)
    model = ConvNorm(norm).eval()
    x = torch.randn(skipped_shape)
    batches = [(torch.randn(skipped_shape),) for _ in range(2)]
    captured, _, ours, made = quantize_both(model, (x,), how, batches, reference=False)
    assert made == _norm_calls(norm, how)
    FileCheck().check("prim::If").check("aten::reshape").check(f"quantized::{norm}(").check(f"quantized::{norm}(").run(
        str(ours.graph)
    )
    assert f"aten::{norm}" not in str(ours.graph)
    assert float_op_records(ours) == []
    out = check_runs_well(ours, (x,))
    assert legalize_quantized(round_trip(ours)) == 0  # a loaded model's guard is recognised too
    # The debug model computes the norm in float between quantize/dequantize: at most one
    # output step apart.
    debug = qgraph.quantize_jit(captured, QCONFIG, calibrate, [batches], debug=True)
    step = out.abs().max().item() / 127
    assert (out - debug(x)).abs().max().item() <= step
    # Threshold: the reference's SQNR for the same network where its kernel is sound, less 3 dB.
    x_safe = torch.randn(safe_shape)
    _, ref_safe, _, _ = quantize_both(model, (x_safe,), how, [(torch.randn(safe_shape),) for _ in range(2)])
    assert sqnr(model(x), out) >= sqnr(model(x_safe), ref_safe(x_safe)) - 3.0


@pytest.mark.parametrize("how", CAPTURES)
@pytest.mark.parametrize("norm, skipped_shape, safe_shape", NORM_CASES)
def test_norm_where_the_kernel_is_sound_keeps_reference_bits(norm, skipped_shape, safe_shape, how):
    # reference: runs; the guard takes the kernel as it is.
    torch.manual_seed(0)
    x = torch.randn(safe_shape)
    _, ref, ours, made = quantize_both(ConvNorm(norm), (x,), how)
    assert made == _norm_calls(norm, how)
    assert_bits_equal(check_runs_well(ours, (x,)), ref(x))


def _quantized_norm(norm: str, x_q, groups: int, weight, bias):
    if norm == "group_norm":
        return torch.ops.quantized.group_norm(x_q, groups, weight, bias, 1e-5, 0.05, 128)
    return torch.ops.quantized.instance_norm(x_q, weight, bias, 1e-5, 0.05, 128)


@pytest.mark.parametrize("norm", ["group_norm", "instance_norm"])
def test_guard_condition_covers_every_input_the_kernel_gets_wrong(norm):
    """Over batch sizes, channels per group and map sizes: where the guard takes the kernel as
    it is, the kernel is right; where it steps in, its own answer is right."""
    from passes.legalize.kernels import group_norm_guarded, instance_norm_guarded, norm_kernel_skips_samples

    torch.manual_seed(0)
    for batch in (1, 2, 3, 5, 9):
        for per_group, groups in ((1, 4), (2, 2), (4, 1)):
            for height, width in ((1, 1), (1, 2), (2, 2), (3, 1)):
                channels = per_group * groups
                if norm == "instance_norm" and per_group != 1:
                    continue
                x = torch.randn(batch, channels, height, width)
                x_q = torch.quantize_per_tensor(x, 0.05, 128, torch.quint8).contiguous(
                    memory_format=torch.channels_last
                )
                weight, bias = torch.randn(channels), torch.randn(channels)
                expected = torch.quantize_per_tensor(
                    torch.group_norm(x_q.dequantize(), groups, weight, bias, 1e-5), 0.05, 128, torch.quint8
                ).int_repr()
                if norm == "group_norm":
                    guarded = group_norm_guarded(x_q, groups, weight, bias, 1e-5, 0.05, 128)
                else:
                    guarded = instance_norm_guarded(x_q, weight, bias, 1e-5, 0.05, 128)
                assert (guarded.int_repr().int() - expected.int()).abs().max() <= 1
                if not norm_kernel_skips_samples(x_q, groups):
                    assert torch.equal(guarded.int_repr(), _quantized_norm(norm, x_q, groups, weight, bias).int_repr())


# --- rule 6: add_scalar_relu with the scalar as a tensor ----------------------------------------


class AddScalarRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return F.relu(self.conv(x) + 0.5)


class AddScalarReluInPlace(AddScalarRelu):
    def forward(self, x):
        y = self.conv(x)
        y += 0.5
        return F.relu(y)


@pytest.mark.parametrize("in_place", [False, True], ids=["add", "add_"])
def test_traced_add_scalar_relu_gets_its_scalar_as_a_number(in_place):
    # reference: a trace records the 0.5 as a tensor constant, and the Tensor overload of
    # quantized::add_scalar_relu(_out) returns add_scalar: negative outputs, no relu.
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)
    model = (AddScalarReluInPlace if in_place else AddScalarRelu)().eval()
    _, ref, ours, made = quantize_both(model, (x,), "trace")
    assert made == 1
    op = "quantized::add_scalar_relu" + ("_out" if in_place else "")
    (node,) = [n for n in ours.graph.nodes() if n.kind() == op]
    assert node.inputsAt(1).type().kind() == "FloatType" and node.inputsAt(1).toIValue() == 0.5
    out = check_runs_well(ours, (x,))
    assert (ref(x) < 0).any() and (out >= 0).all()
    # The scripted model passes 0.5 as a number from the start: the reference's bits there.
    _, ref_scripted, ours_scripted, made_scripted = quantize_both(model, (x,), "script")
    assert made_scripted == 0
    assert_bits_equal(out, ref_scripted(x))
    assert_bits_equal(ours_scripted(x), ref_scripted(x))


# --- quantized grouped convs that overrun the heap: kept in float before fusion ------------------


class GroupedConv(nn.Module):
    def __init__(self, channels: int, groups: int, relu: bool = False, dims: int = 2):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.stem = conv(3, channels, 1)
        self.grouped = conv(channels, channels, 3, padding=1, groups=groups)
        self.relu = nn.ReLU() if relu else nn.Identity()

    def forward(self, x):
        return self.relu(self.grouped(self.stem(x)))


def _safe_grouped_sqnr(how: str, dims: int, relu: bool) -> float:
    # The same network with 16 channels, 2 per group (a multiple of 8, which fbgemm's kernel
    # handles), quantized by the reference: the closeness quantization gets there.
    torch.manual_seed(1)
    model = GroupedConv(16, 8, relu, dims).eval()
    x = torch.randn((1, 3) + (6,) * dims)
    _, ref, _, _ = quantize_both(model, (x,), how, reference=True)
    return sqnr(model(x), ref(x))


@pytest.mark.parametrize(
    "how, groups, relu, dims",
    [("script", 6, False, 2), ("trace", 6, True, 2), ("script", 3, True, 2), ("trace", 6, False, 3)],
)
def test_unsafe_grouped_conv_runs_in_float(how, groups, relu, dims):
    # reference: quantized grouped conv with 12 channels and 2 or 4 per group corrupts the heap
    # ("free(): invalid next size", "double free or corruption", SIGSEGV, or outputs changing
    # from run to run); its model is never run here.
    torch.manual_seed(0)
    model = GroupedConv(12, groups, relu, dims).eval()
    x = torch.randn((1, 3) + (6,) * dims)
    _, _, ours, _ = quantize_both(model, (x,), how, reference=False)
    conv = f"conv{dims}d"
    FileCheck().check(f"quantized::{conv}_unpack").check(f"aten::{conv}").check("aten::quantize_per_tensor").run(
        str(ours.graph)
    )
    assert sum(n.kind().startswith(f"quantized::{conv}") for n in ours.graph.nodes()) == 2  # stem + unpack
    out = check_runs_well(ours, (x,))
    (record,) = float_op_records(ours)
    assert record.op == f"quantized::{conv}" + ("_relu" if relu else "")
    assert f"{12 // groups} channels per group" in record.reason
    assert float_op_records(round_trip(ours)) == [record]
    assert sqnr(model(x), out) >= _safe_grouped_sqnr(how, dims, relu) - 3.0


def test_records_saved_with_fields_since_dropped_still_read():
    # Models saved by an earlier release carry a "guard" field in each record.
    torch.manual_seed(0)
    x = torch.randn(1, 3, 6, 6)
    _, _, ours, _ = quantize_both(GroupedConv(12, 6), (x,), "script", reference=False)
    (record,) = float_op_records(ours)
    ours._c.setattr(FLOAT_OPS_ATTRIBUTE, json.dumps([{**record._asdict(), "guard": ""}]))
    assert float_op_records(round_trip(ours)) == [record]


@pytest.mark.parametrize("how", CAPTURES)
def test_safe_grouped_conv_keeps_reference_bits(how):
    # reference: runs (16 channels, 2 per group: a multiple of 8).
    torch.manual_seed(0)
    x = torch.randn(1, 3, 6, 6)
    _, ref, ours, made = quantize_both(GroupedConv(16, 8), (x,), how)
    assert made == 0
    assert not ours._c.hasattr(FLOAT_OPS_ATTRIBUTE)
    assert_bits_equal(check_runs_well(ours, (x,)), ref(x))


@pytest.mark.parametrize(
    "weight_shape, stride, padding, groups, unsafe",
    [
        ((12, 2, 3, 3), [1, 1], [1, 1], 6, True),
        ((12, 4, 3, 3), [2, 2], [1, 1], 3, True),
        ((20, 4, 3, 3), [1, 1], [1, 1], 5, True),
        ((12, 2, 3, 3, 3), [1, 1, 1], [1, 1, 1], 6, True),
        ((16, 2, 3, 3), [1, 1], [1, 1], 8, False),  # a multiple of 8
        ((8, 2, 3, 3), [1, 1], [1, 1], 4, False),  # 8 channels or fewer
        ((12, 3, 3, 3), [1, 1], [1, 1], 4, False),  # 3 per group: not the groupwise kernel
        ((12, 2, 3, 3), [1, 1], [0, 0], 6, False),  # padding 0: not the groupwise kernel
        ((12, 2, 5, 5), [1, 1], [2, 2], 6, False),  # 5x5: not the groupwise kernel
        ((24, 2, 3, 3), [1, 1], [1, 1], 6, False),  # 4 output channels per group, 2 input
        ((12, 2, 3), [1], [1], 6, False),  # conv1d
    ],
)
def test_groupwise_conv_is_unsafe_table(weight_shape, stride, padding, groups, unsafe):
    # Measured on torch 2.13.0 / fbgemm, each configuration run in a subprocess: the unsafe ones
    # crash or give run-to-run different outputs; the others match a float conv within 2 steps.
    dilation = [1] * len(stride)
    assert groupwise_conv_is_unsafe(weight_shape, stride, padding, dilation, groups, False) is unsafe


# --- rule 7: nearest interpolation (already handled upstream; pinned here) -----------------------


class Upsampling(nn.Module):
    def __init__(self, form: str):
        super().__init__()
        self.form = form
        self.conv = nn.Conv2d(3, 4, 3)
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")

    def forward(self, x):
        y = self.conv(x)
        if self.form == "scale_factor":
            return F.interpolate(y, scale_factor=2.0, mode="nearest")
        if self.form == "size":
            return F.interpolate(y, size=[9, 9], mode="nearest")
        return self.up(y)


@pytest.mark.parametrize("form", ["scale_factor", "size", "module"])
def test_scripted_nearest_interpolation_runs(form):
    # reference (scripted): rewrites it to upsample_nearest3d and raises at run time
    # ("Expected ... scale_factors->size() == spatial_dimensions" / "expected output_size equals to 3").
    torch.manual_seed(0)
    model = Upsampling(form).eval()
    x = torch.randn(1, 3, 6, 6)
    _, ref, ours, made = quantize_both(model, (x,), "script")
    with pytest.raises(RuntimeError):
        ref(x)
    assert made == 0
    out = check_runs_well(ours, (x,))
    # The traced capture of the same model is one the reference quantizes; nearest upsampling
    # copies quantized values, so the scripted model must give the traced reference's bits.
    _, ref_traced, ours_traced, _ = quantize_both(model, (x,), "trace")
    assert_bits_equal(out, ref_traced(x))
    assert_bits_equal(check_runs_well(ours_traced, (x,)), out)
    assert sqnr(model(x), out) > 20.0


# --- the analysis --------------------------------------------------------------------------------


def test_quantized_values_follow_shape_ops_containers_and_branches():
    graph = torch._C.parse_ir(
        """graph(%x : Tensor, %flag : bool):
        %scale : float = prim::Constant[value=0.1]()
        %zp : int = prim::Constant[value=0]()
        %dtype : int = prim::Constant[value=13]()
        %dim : int = prim::Constant[value=1]()
        %q : Tensor = aten::quantize_per_tensor(%x, %scale, %zp, %dtype)
        %flat : Tensor = aten::flatten(%q, %dim, %dim)
        %pair : Tensor[] = prim::ListConstruct(%q, %flat)
        %cat : Tensor = aten::cat(%pair, %dim)
        %picked : Tensor = prim::If(%flag)
          block0():
            -> (%cat)
          block1():
            -> (%x)
        %both : Tensor = prim::If(%flag)
          block0():
            -> (%cat)
          block1():
            -> (%flat)
        %f : Tensor = aten::dequantize(%both)
        %size : int = aten::size(%both, %dim)
        return (%picked, %f, %size)"""
    )
    quantized = quantized_values(graph)
    # parse_ir renumbers node outputs, so values are found by their producers.
    first = {}
    for node in graph.nodes():
        first.setdefault(node.kind(), []).append(node.output() if node.outputsSize() == 1 else None)
    branches = first["prim::If"]
    assert first["aten::quantize_per_tensor"][0] in quantized
    assert first["aten::flatten"][0] in quantized
    assert first["prim::ListConstruct"][0] in quantized
    assert first["aten::cat"][0] in quantized
    assert branches[1] in quantized  # both branches quantized
    assert branches[0] not in quantized  # one branch float
    assert first["aten::dequantize"][0] not in quantized
    assert first["aten::size"][0] not in quantized
    assert not set(graph.inputs()) & quantized


def test_legalize_rejects_non_modules():
    with pytest.raises(TypeError, match="TorchScript module"):
        legalize_quantized(torch._C.Graph())
