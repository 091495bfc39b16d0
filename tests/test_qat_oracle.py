"""Quantization-aware training against eager QAT, the oracle: same float weights, qconfig, data and optimizer.

Eager ``fuse_modules_qat`` + ``prepare_qat`` -> train -> ``convert`` and
``prepare_qat_jit`` -> train -> ``convert_jit`` agree bit for bit: the
fake-quants after the first (calibration-only) forward, the training
outputs and weights at every step, and the int8 outputs after convert. The
tolerance is zero because nothing in the graph-mode path computes in
another order; one float op reordered in the Conv-BatchNorm arithmetic
makes the two runs drift apart by whole quantization steps within a few
steps, which any tolerance would hide.
"""

import warnings

import pytest
import torch
import torch.ao.quantization as tq
from torch.ao.nn.intrinsic.qat import freeze_bn_stats
from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver, QConfig
from torch.testing import FileCheck

import qgraph
from helpers.numerics import sqnr
from helpers.onednn import assert_close_to_reference, on_onednn_engine, requires_onednn
from helpers.qat_models import INPUT, Net, eager_qat, fake_quant_scales, float_state, graph_qat, train_step

# Weights on -127..127: eager clamps the quantized weight to it, the JIT quantize ops do not.
RESTRICTED = QConfig(
    activation=tq.default_fake_quant,
    weight=FakeQuantize.with_args(
        observer=MovingAverageMinMaxObserver,
        quant_min=-127,
        quant_max=127,
        dtype=torch.qint8,
        qscheme=torch.per_tensor_symmetric,
    ),
)
QCONFIGS = {
    "x86": tq.get_default_qat_qconfig("x86"),
    "default_qat_qconfig": tq.default_qat_qconfig,
    "restricted_range": RESTRICTED,
}


def _data(seed=1, n=48):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, *INPUT, generator=generator), torch.randint(0, 3, (n,), generator=generator)


def _optimizers(eager, graph):
    pe, pg = dict(eager.named_parameters()), dict(graph.named_parameters())
    assert sorted(pe) == sorted(pg)
    names = sorted(pe)
    return (
        torch.optim.SGD([pe[n] for n in names], lr=0.05, momentum=0.9),
        torch.optim.SGD([pg[n] for n in names], lr=0.05, momentum=0.9),
    )


def _convert_both(eager, graph):
    eager.eval()
    graph.eval()
    return tq.convert(eager), qgraph.convert_jit(graph)


def test_the_calibration_forward_gives_the_fake_quants_eager_gives():
    state = float_state()
    eager, graph = eager_qat(state, QCONFIGS["x86"]), graph_qat(state, QCONFIGS["x86"])
    x, _ = _data()
    with torch.no_grad():
        assert torch.equal(eager(x), graph(x))
    assert fake_quant_scales(eager) == fake_quant_scales(graph)


@pytest.mark.parametrize("name", sorted(QCONFIGS))
def test_training_and_convert_are_bit_exact_with_eager_qat(name):
    state = float_state()
    eager, graph = eager_qat(state, QCONFIGS[name]), graph_qat(state, QCONFIGS[name])
    opt_eager, opt_graph = _optimizers(eager, graph)
    x, y = _data()
    for step in range(6):
        if step == 4:
            eager.apply(tq.disable_observer)
            qgraph.qat.disable_observer(graph)
        if step == 5:
            eager.apply(freeze_bn_stats)
            qgraph.qat.freeze_bn_stats(graph)
        batch = slice(8 * step, 8 * step + 8)
        out_eager = train_step(eager, opt_eager, x[batch], y[batch])
        out_graph = train_step(graph, opt_graph, x[batch], y[batch])
        assert torch.equal(out_eager, out_graph), step
    for (name_e, p_e), (name_g, p_g) in zip(sorted(eager.named_parameters()), sorted(graph.named_parameters())):
        assert name_e == name_g and torch.equal(p_e, p_g), name_e
    assert fake_quant_scales(eager) == fake_quant_scales(graph)
    int8_eager, int8_graph = _convert_both(eager, graph)
    with torch.no_grad():
        assert torch.equal(int8_eager(x), int8_graph(x))


def test_the_int8_graph_is_the_one_prepare_jit_gives():
    state = float_state()
    graph = graph_qat(state, QCONFIGS["x86"])
    x, _ = _data()
    with torch.no_grad():
        graph(x)
    graph.eval()
    qat_int8 = qgraph.convert_jit(graph)
    net = Net()
    net.load_state_dict(state)
    ptq = qgraph.prepare_jit(torch.jit.script(net.eval()), {"": tq.get_default_qconfig("x86")})
    with torch.no_grad():
        ptq(x)
    ptq_int8 = qgraph.convert_jit(ptq)

    def quantized_ops(model):
        return [n.kind() for n in model.graph.nodes() if n.kind().startswith(("quantized::", "aten::quantize"))]

    assert quantized_ops(qat_int8) == quantized_ops(ptq_int8)
    checks = FileCheck().check("aten::quantize_per_tensor").check("quantized::conv2d_relu")
    checks.check("quantized::conv2d_relu").check("quantized::conv2d").check("quantized::add_relu")
    checks.check("quantized::conv2d").check("quantized::linear").check("aten::dequantize").run(qat_int8.graph)
    FileCheck().check_not("fake_quant").check_not("batch_norm").run(qat_int8.graph)


def test_convert_in_training_mode_says_call_eval_and_converts_in_eval_mode():
    state = float_state()
    graph = graph_qat(state, QCONFIGS["x86"])
    x, _ = _data()
    with torch.no_grad():
        graph(x)
    with pytest.warns(UserWarning, match=r"model\.eval\(\)"):
        in_training = qgraph.convert_jit(graph)
    graph.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        in_eval = qgraph.convert_jit(graph)
    with torch.no_grad():
        assert torch.equal(in_training(x), in_eval(x))


def test_debug_convert_gives_the_same_outputs():
    state = float_state()
    graph = graph_qat(state, QCONFIGS["default_qat_qconfig"])
    x, _ = _data()
    with torch.no_grad():
        graph(x)
    graph.eval()
    with torch.no_grad():
        assert torch.equal(qgraph.convert_jit(graph, debug=True)(x), qgraph.convert_jit(graph)(x))


@requires_onednn
def test_a_trained_model_lowers_to_onednn_as_close_as_the_reference_lowering():
    # QAT with 8-bit activations (the onednn engine's qconfig), then either lowering of the same trained model:
    # the oneDNN one fuses BatchNorm-folded convs with their relu and the residual add, and holds no fake-quant.
    state = float_state()
    graph = graph_qat(state, tq.get_default_qat_qconfig("onednn"))
    optimizer = torch.optim.SGD(graph.parameters(), lr=0.05, momentum=0.9)
    x, y = _data()
    for step in range(4):
        train_step(graph, optimizer, x[8 * step : 8 * step + 8], y[8 * step : 8 * step + 8])
    graph.eval()
    with on_onednn_engine():
        lowered, reference = qgraph.convert_jit(graph, lowering="onednn"), qgraph.convert_jit(graph)
    FileCheck().check("onednn::qconv2d_pointwise").check("onednn::qlinear_pointwise").run(lowered.graph)
    for absent in ("fake_quant", "batch_norm", "quantize_per_tensor", "quantized::"):
        FileCheck().check_not(absent).run(lowered.graph)
    with torch.no_grad():
        trained = graph(x)
    # Both round the same int32 accumulators, with different requantization arithmetic: a step apart at most.
    assert_close_to_reference(lowered, reference, x, steps=1)
    with torch.no_grad():
        assert sqnr(trained, lowered(x)) >= 25.0
