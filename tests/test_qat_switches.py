"""qgraph.qat: observer, fake-quant and BatchNorm switches on a scripted QAT model."""

import pytest
import torch
import torch.ao.quantization as tq

import qgraph
from helpers.qat_models import INPUT, Net, float_state, graph_qat
from qgraph.ir import as_cpp, named_modules
from qgraph.quant.qat_modules import is_fake_quant

X86 = tq.get_default_qat_qconfig("x86")


@pytest.fixture
def qat():
    model = graph_qat(float_state(), X86)
    with torch.no_grad():
        model(torch.randn(8, *INPUT))
    return model


def _fake_quants(model):
    return [m for _, m in named_modules(as_cpp(model)) if is_fake_quant(m)]


def _scales(model):
    return [m.getattr("scale").clone() for m in _fake_quants(model)]


def test_disable_observer_fixes_every_qparam_and_enable_releases_them(qat):
    count = len(_fake_quants(qat))
    buffers = [m.getattr("observer_enabled") for m in _fake_quants(qat)]
    assert qgraph.qat.disable_observer(qat) == count == 12
    # In place: the same buffers, which DDP and device moves hold on to.
    assert all(b is m.getattr("observer_enabled") and b.item() == 0 for b, m in zip(buffers, _fake_quants(qat)))
    before = _scales(qat)
    with torch.no_grad():
        qat(3 * torch.randn(8, *INPUT))
    assert all(torch.equal(a, b) for a, b in zip(before, _scales(qat)))
    assert qgraph.qat.enable_observer(qat) == count
    with torch.no_grad():
        qat(3 * torch.randn(8, *INPUT))
    assert sum(not torch.equal(a, b) for a, b in zip(before, _scales(qat))) >= count - 2


def test_disable_fake_quant_gives_the_float_computation(qat):
    x = torch.randn(8, *INPUT)
    net = Net()
    net.load_state_dict(float_state())
    assert qgraph.qat.disable_fake_quant(qat) == 12
    qgraph.qat.freeze_bn_stats(qat)
    qat.eval()
    with torch.no_grad():
        # Running statistics were updated once by the fixture's batch: copy them into the float model.
        for bn_float, conv_bn in ((net.stem_bn, qat.stem), (net.b1.dw_bn, qat.b1.dw), (net.b1.pw_bn, qat.b1.pw)):
            bn_float.load_state_dict(conv_bn.bn.state_dict())
        torch.testing.assert_close(qat(x), net.eval()(x), rtol=1e-4, atol=1e-5)
    qgraph.qat.enable_fake_quant(qat)
    with torch.no_grad():
        assert not torch.allclose(qat(x), net(x), rtol=1e-4, atol=1e-5)


def test_freeze_bn_stats_keeps_running_statistics_also_after_train(qat):
    stem_bn = qat.stem.bn
    assert qgraph.qat.freeze_bn_stats(qat) == 3
    qat.train()
    running_var, tracked = stem_bn.running_var.clone(), stem_bn.num_batches_tracked.item()
    qgraph.qat.disable_observer(qat)
    x = torch.randn(8, *INPUT)
    with torch.no_grad():
        frozen_train = qat(x)
        assert torch.equal(stem_bn.running_var, running_var) and stem_bn.num_batches_tracked.item() == tracked
        qat.eval()
        assert torch.equal(frozen_train, qat(x))
    assert qgraph.qat.update_bn_stats(qat) == 3
    qat.train()
    with torch.no_grad():
        qat(x)
    assert not torch.equal(stem_bn.running_var, running_var) and stem_bn.num_batches_tracked.item() == tracked + 1


def test_a_model_without_fake_quants_is_refused():
    ptq = qgraph.prepare_jit(torch.jit.script(Net().eval()), {"": tq.get_default_qconfig("x86")})
    with pytest.raises(ValueError, match="prepare_qat_jit"):
        qgraph.qat.disable_observer(ptq)
    with pytest.raises(ValueError, match="prepare_qat_jit"):
        qgraph.qat.freeze_bn_stats(ptq)
    with pytest.raises(ValueError, match="TorchScript module"):
        qgraph.qat.enable_fake_quant(Net())
