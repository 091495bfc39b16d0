"""passes.quantize_rnn: dynamic int8 / fp16 LSTM, GRU and cells in graph mode.

The oracle is eager ``torch.ao.quantization.quantize_dynamic`` on the same
float model: outputs must be equal, not close. The reference's graph mode
leaves RNNs in float, so it has nothing to compare with here.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn as nn
from torch.ao.quantization import (
    MinMaxObserver,
    QConfig,
    default_dynamic_qconfig,
    float16_dynamic_qconfig,
    per_channel_dynamic_qconfig,
    quantize_dynamic,
)
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence
from torch.testing import FileCheck

from helpers.models import capture
from passes.rnn import is_rnn_module, quantize_rnn, rnn_float_reasons
from qgraph.ir import as_python, clone_module
from qgraph.quant.qconfig import script_qconfig

QCONFIGS = {"int8": (torch.qint8, default_dynamic_qconfig), "fp16": (torch.float16, float16_dynamic_qconfig)}
RNN_TYPES = {nn.LSTM, nn.GRU, nn.LSTMCell, nn.GRUCell, nn.RNNCell}


def _capture(model: nn.Module, example: tuple, how: str) -> torch.jit.ScriptModule:
    captured = capture(model, example, how)
    # A fresh clone: the pass rewrites class types in place, and a traced
    # module's methods already ran (the trace check) with their own plans.
    return as_python(clone_module(captured._c))


def _flat(output) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, PackedSequence):
        return [output.data]
    return [t for item in output for t in _flat(item)]


def _assert_equal(actual, expected) -> None:
    actual, expected = _flat(actual), _flat(expected)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert torch.equal(a, e), (a - e).abs().max()


def _eager(model: nn.Module, qconfig: QConfig, dtype: torch.dtype) -> nn.Module:
    return quantize_dynamic(model, {cls: qconfig for cls in RNN_TYPES}, dtype=dtype)


def _with_zero_biases(model: nn.Module, **rebuild) -> nn.Module:
    """The bias-free ``model`` as eager can quantize it: biases present, all zero."""
    twin = type(model)(**rebuild).eval()
    state = {k: v for k, v in model.state_dict().items()}
    twin.load_state_dict(state, strict=False)
    with torch.no_grad():
        for name, param in twin.named_parameters():
            if "bias" in name:
                param.zero_()
    return twin


def _reloaded(module: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


# --- LSTM / GRU ---------------------------------------------------------------


class LSTMModel(nn.Module):
    def __init__(self, bias=True, **options):
        super().__init__()
        self.rnn = nn.LSTM(4, 6, bias=bias, **options)

    def forward(self, x, state: tuple[torch.Tensor, torch.Tensor]):
        return self.rnn(x, state)


class GRUModel(nn.Module):
    def __init__(self, bias=True, **options):
        super().__init__()
        self.rnn = nn.GRU(4, 6, bias=bias, **options)

    def forward(self, x, state: torch.Tensor):
        return self.rnn(x, state)


# Each option set once per dtype would double the run time for little: the
# dtypes alternate over the option sets instead.
RNN_CASES = [
    (dict(num_layers=1), "int8"),
    (dict(num_layers=1), "fp16"),
    (dict(num_layers=2, bidirectional=True), "int8"),
    (dict(num_layers=3, batch_first=True), "fp16"),
    (dict(num_layers=2, bidirectional=True, batch_first=True), "int8"),
]


def _case_id(case) -> str:
    options, quant = case
    return "-".join([f"{k}={v}" for k, v in options.items()] + [quant])


def _rnn_inputs(model_cls, options):
    directions = 2 if options.get("bidirectional") else 1
    batch_first = options.get("batch_first", False)
    x = torch.randn(2, 3, 4) if batch_first else torch.randn(3, 2, 4)
    shape = (options["num_layers"] * directions, 2, 6)
    state = (torch.randn(shape), torch.randn(shape)) if model_cls is LSTMModel else torch.randn(shape)
    return x, state


@pytest.mark.parametrize("how", ["script", "trace"])
@pytest.mark.parametrize("case", RNN_CASES, ids=_case_id)
@pytest.mark.parametrize("model_cls", [LSTMModel, GRUModel], ids=["lstm", "gru"])
def test_fused_rnn_matches_eager_quantize_dynamic(model_cls, case, how):
    torch.manual_seed(0)
    options, quant = case
    dtype, qconfig = QCONFIGS[quant]
    model = model_cls(**options).eval()
    example = _rnn_inputs(model_cls, options)
    quantized = quantize_rnn(_capture(model, example, how), {"": qconfig})
    _assert_equal(quantized(*example), _eager(model, qconfig, dtype)(*example))
    _assert_equal(_reloaded(quantized)(*example), quantized(*example))


@pytest.mark.parametrize("how", ["script", "trace"])
@pytest.mark.parametrize("model_cls", [LSTMModel, GRUModel], ids=["lstm", "gru"])
def test_fused_rnn_graph_reads_prepacked_cell_params(model_cls, how):
    torch.manual_seed(0)
    options = dict(num_layers=2, bidirectional=True)
    model = model_cls(**options)
    example = _rnn_inputs(model_cls, options)
    quantized = quantize_rnn(_capture(model, example, how), {"": default_dynamic_qconfig})
    op = "lstm" if model_cls is LSTMModel else "gru"
    methods = ["forward__0", "forward__1"] if how == "script" else ["forward"]
    for method in methods:
        graph = str(quantized.rnn._c._get_method(method).graph)
        checker = FileCheck()
        for k in range(4):  # 2 layers x 2 directions, in eager's order
            checker.check(f'prim::GetAttr[name="_packed_cell_params_{k}"]')
        checker.check("prim::ListConstruct").check(f"aten::quantized_{op}").check_not(f"aten::{op}(")
        checker.check_not("quantized::linear_prepack").check_not("make_quantized_cell_params").run(graph)
    assert 'name="_flat_weights"' not in str(quantized.rnn._c._get_method(methods[0]).graph)


def test_lstm_int8_graph_passes_dtype_and_use_dynamic():
    torch.manual_seed(0)
    example = _rnn_inputs(LSTMModel, dict(num_layers=1))
    quantized = quantize_rnn(_capture(LSTMModel(), example, "trace"), {"": default_dynamic_qconfig})
    node = quantized.rnn.graph.findNode("aten::quantized_lstm")
    flags = [value.toIValue() for value in list(node.inputs())[-2:]]
    assert flags == [12, True]  # torch.qint8's ScalarType, use_dynamic
    assert node.inputsAt(3).toIValue() is True  # has_biases


@pytest.mark.parametrize(
    "model_cls, quant, how",
    [
        (LSTMModel, "int8", "script"),
        (LSTMModel, "fp16", "trace"),
        (GRUModel, "int8", "trace"),
        (GRUModel, "fp16", "script"),
    ],
    ids=["lstm-int8-script", "lstm-fp16-trace", "gru-int8-trace", "gru-fp16-script"],
)
def test_rnn_without_bias_is_quantized_like_zero_biases(model_cls, quant, how):
    # Eager asserts bias=True; here bias-free weights are packed without one,
    # which equals eager on the same weights with zero biases.
    torch.manual_seed(0)
    dtype, qconfig = QCONFIGS[quant]
    options = dict(num_layers=2)
    model = model_cls(bias=False, **options).eval()
    example = _rnn_inputs(model_cls, options)
    expected = _eager(_with_zero_biases(model, bias=True, **options), qconfig, dtype)(*example)
    quantized = quantize_rnn(_capture(model, example, how), {"": qconfig})
    _assert_equal(quantized(*example), expected)


class LSTMNoState(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(4, 6, num_layers=2)

    def forward(self, x):
        out, (h, c) = self.rnn(x)
        return out, h, c


class GRUNoState(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(4, 6, num_layers=2, bidirectional=True)

    def forward(self, x):
        return self.rnn(x)


@pytest.mark.parametrize("how, quant", [("script", "int8"), ("trace", "fp16")])
@pytest.mark.parametrize("model_cls", [LSTMNoState, GRUNoState])
def test_rnn_without_initial_state(model_cls, how, quant):
    torch.manual_seed(0)
    model = model_cls().eval()
    x = torch.randn(5, 2, 4)
    dtype, qconfig = QCONFIGS[quant]
    quantized = quantize_rnn(_capture(model, (x,), how), {"": qconfig})
    _assert_equal(quantized(x), _eager(model, qconfig, dtype)(x))


def test_per_channel_weight_observer():
    torch.manual_seed(0)
    model = LSTMModel(num_layers=2).eval()
    example = _rnn_inputs(LSTMModel, dict(num_layers=2))
    quantized = quantize_rnn(_capture(model, example, "script"), {"": per_channel_dynamic_qconfig})
    _assert_equal(quantized(*example), _eager(model, per_channel_dynamic_qconfig, torch.qint8)(*example))


def test_scripted_qconfig_gives_the_same_weights():
    torch.manual_seed(0)
    model = GRUModel(num_layers=2).eval()
    example = _rnn_inputs(GRUModel, dict(num_layers=2))
    quantized = quantize_rnn(_capture(model, example, "script"), {"": script_qconfig(default_dynamic_qconfig)})
    _assert_equal(quantized(*example), _eager(model, default_dynamic_qconfig, torch.qint8)(*example))


class PackedLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(4, 6, num_layers=2)

    def forward(self, x: PackedSequence):
        out, (h, c) = self.rnn(x)
        return out.data, h, c


def test_packed_sequence_input():
    torch.manual_seed(0)
    model = PackedLSTM().eval()
    packed = pack_padded_sequence(torch.randn(4, 3, 4), torch.tensor([4, 3, 1]))
    quantized = quantize_rnn(_capture(model, (), "script"), {"": default_dynamic_qconfig})
    FileCheck().check("aten::quantized_lstm").check_not("aten::lstm(").run(
        str(quantized.rnn._c._get_method("forward__1").graph)
    )
    _assert_equal(quantized(packed), _eager(model, default_dynamic_qconfig, torch.qint8)(packed))


# --- cells --------------------------------------------------------------------


class LSTMCellModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.cell = nn.LSTMCell(4, 6)

    def forward(self, x, state: tuple[torch.Tensor, torch.Tensor]):
        return self.cell(x, state)


class CellModel(nn.Module):
    def __init__(self, cell: nn.Module):
        super().__init__()
        self.cell = cell

    def forward(self, x, h: torch.Tensor):
        return self.cell(x, h)


class CellNoState(nn.Module):
    def __init__(self, cell: nn.Module):
        super().__init__()
        self.cell = cell

    def forward(self, x):
        return self.cell(x)


CELLS = {
    "lstm_cell": lambda: nn.LSTMCell(4, 6),
    "gru_cell": lambda: nn.GRUCell(4, 6),
    "rnn_tanh_cell": lambda: nn.RNNCell(4, 6),
    "rnn_relu_cell": lambda: nn.RNNCell(4, 6, nonlinearity="relu"),
}


def _cell_case(name: str, with_state: bool):
    cell = CELLS[name]()
    x = torch.randn(3, 4)
    if not with_state:
        return CellNoState(cell).eval(), (x,)
    if name == "lstm_cell":
        model = LSTMCellModel().eval()
        model.cell = cell
        return model, (x, (torch.randn(3, 6), torch.randn(3, 6)))
    return CellModel(cell).eval(), (x, torch.randn(3, 6))


@pytest.mark.parametrize("how", ["script", "trace"])
@pytest.mark.parametrize("with_state, quant", [(True, "int8"), (False, "fp16")], ids=["hx-int8", "no_hx-fp16"])
@pytest.mark.parametrize("name", list(CELLS))
def test_cell_matches_eager_quantize_dynamic(name, with_state, quant, how):
    torch.manual_seed(0)
    dtype, qconfig = QCONFIGS[quant]
    model, example = _cell_case(name, with_state)
    quantized = quantize_rnn(_capture(model, example, how), {"": qconfig})
    _assert_equal(quantized(*example), _eager(model, qconfig, dtype)(*example))
    _assert_equal(_reloaded(quantized)(*example), quantized(*example))


@pytest.mark.parametrize("name", list(CELLS))
def test_scripted_cell_becomes_the_quantized_cell_op(name):
    torch.manual_seed(0)
    model, example = _cell_case(name, with_state=True)
    quantized = quantize_rnn(_capture(model, example, "script"), {"": default_dynamic_qconfig})
    FileCheck().check('prim::GetAttr[name="_packed_weight_ih"]').check('prim::GetAttr[name="_packed_weight_hh"]').check(
        f"quantized::quantized_{name}_dynamic"
    ).check_not(f"aten::{name}").run(str(quantized.cell.graph))


@pytest.mark.parametrize("quant", ["int8", "fp16"])
def test_traced_cell_linears_become_dynamic_linears(quant):
    # Tracing records the cell's math (two linears and the gates), not the
    # cell op; its linears get the cell's packed weights.
    torch.manual_seed(0)
    dtype, qconfig = QCONFIGS[quant]
    model, example = _cell_case("gru_cell", with_state=True)
    quantized = quantize_rnn(_capture(model, example, "trace"), {"": qconfig})
    op = "quantized::linear_dynamic_fp16" if quant == "fp16" else "quantized::linear_dynamic"
    FileCheck().check_count(op + "(", 2, exactly=True).check_not("aten::linear").run(str(quantized.cell.graph))


class BiasFreeCell(nn.Module):
    def __init__(self, bias=True):
        super().__init__()
        self.cell = nn.GRUCell(4, 6, bias=bias)

    def forward(self, x, h: torch.Tensor):
        return self.cell(x, h)


@pytest.mark.parametrize("how", ["script", "trace"])
def test_cell_without_bias_is_quantized_like_zero_biases(how):
    torch.manual_seed(0)
    model = BiasFreeCell(bias=False).eval()
    example = (torch.randn(3, 4), torch.randn(3, 6))
    expected = _eager(_with_zero_biases(model, bias=True), default_dynamic_qconfig, torch.qint8)(*example)
    quantized = quantize_rnn(_capture(model, example, how), {"": default_dynamic_qconfig})
    _assert_equal(quantized(*example), expected)


# --- qconfig scope, type sharing, float reasons ----------------------------------


class ThreeLSTMs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.LSTM(4, 6)
        self.b = nn.LSTM(4, 6)
        self.c = nn.LSTM(4, 6)

    def forward(self, x):
        return self.a(x)[0], self.b(x)[0], self.c(x)[0]


def test_instances_sharing_a_type_are_quantized_per_their_own_qconfig():
    torch.manual_seed(0)
    model = ThreeLSTMs().eval()
    x = torch.randn(3, 2, 4)
    scripted = _capture(model, (x,), "script")
    assert scripted.a._c._type() == scripted.b._c._type() == scripted.c._c._type()
    qconfig_dict = {"": default_dynamic_qconfig, "b": float16_dynamic_qconfig, "c": None}
    quantized = quantize_rnn(scripted, qconfig_dict)
    expected = copy.deepcopy(model)
    expected.a = _eager(nn.Sequential(model.a), default_dynamic_qconfig, torch.qint8)[0]
    expected.b = _eager(nn.Sequential(model.b), float16_dynamic_qconfig, torch.float16)[0]
    _assert_equal(quantized(x), expected(x))
    assert "aten::lstm(" in str(quantized.c._c._get_method("forward__0").graph)
    assert rnn_float_reasons(quantized) == [("c", "no qconfig applies to this module")]
    _assert_equal(_reloaded(quantized)(x), quantized(x))


class TwoOfEach(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm_a = nn.LSTM(4, 6)
        self.lstm_b = nn.LSTM(4, 6)
        self.cell_a = nn.GRUCell(4, 6)
        self.cell_b = nn.GRUCell(4, 6)

    def forward(self, x):
        return self.lstm_a(x)[0], self.lstm_b(x)[0], self.cell_a(x[0]), self.cell_b(x[0])


def test_instances_sharing_a_type_each_get_their_own_weights():
    torch.manual_seed(0)
    model = TwoOfEach().eval()
    x = torch.randn(3, 2, 4)
    scripted = _capture(model, (x,), "script")
    assert scripted.lstm_a._c._type() == scripted.lstm_b._c._type()
    assert scripted.cell_a._c._type() == scripted.cell_b._c._type()
    quantized = quantize_rnn(scripted, {"": default_dynamic_qconfig})
    assert quantized.lstm_a._c._type() == quantized.lstm_b._c._type()  # same plan: no need to unshare
    _assert_equal(quantized(x), _eager(model, default_dynamic_qconfig, torch.qint8)(x))
    _assert_equal(_reloaded(quantized)(x), quantized(x))


class Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.projected = nn.LSTM(4, 6, proj_size=3)
        self.plain_rnn = nn.RNN(4, 6)
        self.uint8_weights = nn.GRU(4, 6)

    def forward(self, x):
        return self.projected(x)[0], self.plain_rnn(x)[0], self.uint8_weights(x)[0]


@pytest.mark.parametrize("how", ["script", "trace"])
def test_unsupported_rnns_stay_float_with_a_reason(how):
    torch.manual_seed(0)
    model = Unsupported().eval()
    x = torch.randn(3, 2, 4)
    uint8_weights = QConfig(
        activation=default_dynamic_qconfig.activation, weight=MinMaxObserver.with_args(dtype=torch.quint8)
    )
    quantized = quantize_rnn(_capture(model, (x,), how), {"": default_dynamic_qconfig, "uint8_weights": uint8_weights})
    _assert_equal(quantized(x), model(x))
    reasons = dict(rnn_float_reasons(quantized))
    assert set(reasons) == {"projected", "plain_rnn", "uint8_weights"}
    assert "proj_size" in reasons["projected"]
    assert "nn.RNN" in reasons["plain_rnn"]
    assert "torch.quint8" in reasons["uint8_weights"]


def test_float_reasons_are_foreseen_from_the_qconfig_dict():
    scripted = _capture(Unsupported(), (torch.randn(3, 2, 4),), "script")
    before = str(scripted.projected._c._get_method("forward__0").graph)
    foreseen = rnn_float_reasons(scripted, {"": default_dynamic_qconfig, "uint8_weights": None})
    assert [path for path, _ in foreseen] == ["projected", "plain_rnn", "uint8_weights"]
    assert dict(foreseen)["uint8_weights"] == "no qconfig applies to this module"
    assert rnn_float_reasons(scripted) == []  # nothing was changed or recorded
    assert str(scripted.projected._c._get_method("forward__0").graph) == before


def test_qconfig_on_one_path_only():
    torch.manual_seed(0)
    model = ThreeLSTMs().eval()
    x = torch.randn(3, 2, 4)
    quantized = quantize_rnn(_capture(model, (x,), "trace"), {"b": default_dynamic_qconfig})
    expected = copy.deepcopy(model)
    expected.b = _eager(nn.Sequential(model.b), default_dynamic_qconfig, torch.qint8)[0]
    _assert_equal(quantized(x), expected(x))
    assert [path for path, _ in rnn_float_reasons(quantized)] == ["a", "c"]


# --- pipeline shapes: inlined graphs, freezing, kinds of input --------------------


class LanguageModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 4)
        self.rnn = nn.LSTM(4, 6, num_layers=2)
        self.cell = nn.LSTMCell(6, 6)
        self.head = nn.Linear(6, 20)

    def forward(self, tokens):
        out, _ = self.rnn(self.embed(tokens))
        h, _ = self.cell(out[-1])
        return self.head(h)


def test_rnn_ops_inlined_into_the_parent_graph():
    torch.manual_seed(0)
    model = LanguageModel().eval()
    tokens = torch.randint(0, 20, (5, 2))
    scripted = _capture(model, (tokens,), "script")
    torch._C._jit_pass_inline(scripted.graph)
    quantized = quantize_rnn(scripted, {"": default_dynamic_qconfig})
    FileCheck().check('prim::GetAttr[name="_packed_cell_params_1"]').check("aten::quantized_lstm").check(
        "quantized::quantized_lstm_cell_dynamic"
    ).check("aten::linear").run(str(quantized.graph))
    expected = quantize_dynamic(model, {nn.LSTM, nn.LSTMCell}, dtype=torch.qint8)
    _assert_equal(quantized(tokens), expected(tokens))


@pytest.mark.parametrize("how", ["script", "trace"])
def test_frozen_quantized_model_saves_and_loads(how):
    torch.manual_seed(0)
    model = LanguageModel().eval()
    tokens = torch.randint(0, 20, (5, 2))
    quantized = quantize_rnn(_capture(model, (tokens,), how), {"": default_dynamic_qconfig})
    frozen = torch.jit.freeze(quantized.eval())
    FileCheck().check_not("aten::lstm(").check_not("weight_ih_l0").run(str(frozen.graph))
    _assert_equal(frozen(tokens), quantized(tokens))
    _assert_equal(_reloaded(frozen)(tokens), quantized(tokens))


def test_with_qgraph_dynamic_linear_equals_eager_on_the_whole_model():
    from qgraph.api import quantize_dynamic_jit

    torch.manual_seed(0)
    model = LanguageModel().eval()
    tokens = torch.randint(0, 20, (5, 2))
    with_rnn = quantize_rnn(_capture(model, (tokens,), "script"), {"": default_dynamic_qconfig})
    quantized = quantize_dynamic_jit(with_rnn, {"": default_dynamic_qconfig}, inplace=True)
    FileCheck().check("aten::quantized_lstm").check("quantized::quantized_lstm_cell_dynamic").check(
        "quantized::linear_dynamic"
    ).check_not("aten::linear").run(str(quantized.graph))
    expected = quantize_dynamic(model, {nn.LSTM, nn.LSTMCell, nn.Linear}, dtype=torch.qint8)
    _assert_equal(quantized(tokens), expected(tokens))


def test_c_module_in_c_module_out():
    torch.manual_seed(0)
    model = GRUNoState().eval()
    x = torch.randn(3, 2, 4)
    cpp = _capture(model, (x,), "script")._c
    result = quantize_rnn(cpp, {"": default_dynamic_qconfig})
    assert isinstance(result, torch._C.ScriptModule)
    _assert_equal(as_python(result)(x), _eager(model, default_dynamic_qconfig, torch.qint8)(x))


def test_model_without_rnns_is_unchanged():
    model = _capture(nn.Sequential(nn.Linear(4, 4)), (torch.randn(2, 4),), "script")
    before = str(model.graph)
    assert quantize_rnn(model, {"": default_dynamic_qconfig}) is model
    assert str(model.graph) == before


def test_eager_module_is_rejected():
    with pytest.raises(TypeError, match="TorchScript module"):
        quantize_rnn(LSTMModel(), {"": default_dynamic_qconfig})


def test_non_str_qconfig_key_is_rejected():
    scripted = _capture(GRUNoState(), (torch.randn(3, 2, 4),), "script")
    with pytest.raises(ValueError, match="str"):
        quantize_rnn(scripted, {nn.GRU: default_dynamic_qconfig})


def test_is_rnn_module():
    scripted = _capture(LanguageModel(), (torch.randint(0, 20, (5, 2)),), "script")
    assert is_rnn_module(scripted.rnn) and is_rnn_module(scripted.cell)
    assert not is_rnn_module(scripted.head) and not is_rnn_module(scripted)
