"""prepare_qat_jit: where the fake-quants go, that the result trains, and what it refuses."""

import pytest
import torch
import torch.ao.quantization as tq
import torch.nn.functional as F
from torch import nn
from torch.testing import FileCheck

import qgraph
from helpers.qat_models import INPUT, Net, float_state, graph_qat
from qgraph.ir import as_cpp, method_graph, named_modules, walk
from qgraph.quant.qat_modules import is_conv_bn_module, is_fake_quant

X86 = tq.get_default_qat_qconfig("x86")


def _sites(model):
    """(owner path, what the observed value comes from) for every observer call, in graph order."""
    found = []
    for path, module in named_modules(as_cpp(model)):
        if not module._has_method("forward"):
            continue
        for node in walk(method_graph(module)):
            receiver = node.inputsAt(0).node() if node.kind() == "prim::CallMethod" else None
            if receiver is None or receiver.kind() != "prim::GetAttr" or "_observer_" not in receiver.s("name"):
                continue
            producer = node.inputsAt(1).node()
            if producer.kind() == "prim::CallMethod":
                found.append((path, "call " + producer.inputsAt(0).node().s("name")))
            elif producer.kind() == "prim::GetAttr":
                found.append((path, "attribute " + producer.s("name")))
            else:
                found.append((path, producer.kind()))
    return found


def test_fake_quants_go_where_prepare_jit_puts_observers():
    state = float_state()
    qat = graph_qat(state, X86)
    net = Net()
    net.load_state_dict(state)
    ptq = qgraph.prepare_jit(torch.jit.script(net.eval()), {"": tq.get_default_qconfig("x86")})
    # prepare_jit folded each BatchNorm into its conv, whose weight it observes inside the conv;
    # a QAT Conv-BatchNorm fake-quantizes its BatchNorm-scaled weight itself.
    conv_bn_weights = {("stem", "attribute weight"), ("b1.dw", "attribute weight"), ("b1.pw", "attribute weight")}
    assert [s for s in _sites(ptq) if s not in conv_bn_weights] == _sites(qat)
    fused = [path for path, m in named_modules(as_cpp(qat)) if is_conv_bn_module(m)]
    assert fused == ["stem", "b1.dw", "b1.pw"]
    for path in fused:
        conv_bn = as_cpp(qat)
        for name in path.split("."):
            conv_bn = conv_bn.getattr(name)
        assert is_fake_quant(conv_bn.getattr("weight_fake_quant"))
    FileCheck().check('prim::GetAttr[name="_observer_').check("prim::CallMethod").check(
        'ConvBn2d = prim::GetAttr[name="stem"]'
    ).check_next('prim::CallMethod[name="forward"](%stem').check_next(
        'prim::CallMethod[name="forward"](%relu'
    ).check_next('FusedMovingAvgObsFakeQuantize = prim::GetAttr[name="_observer_').run(qat.graph)


def test_gradients_reach_every_parameter_and_the_input():
    qat = graph_qat(float_state(), X86)
    parameters = dict(qat.named_parameters())
    assert all(p.is_leaf and isinstance(p, nn.Parameter) for p in parameters.values())
    optimizer = torch.optim.SGD(qat.parameters(), lr=0.1)
    x = torch.randn(4, *INPUT, requires_grad=True)
    F.cross_entropy(qat(x), torch.tensor([0, 1, 2, 0])).backward()
    assert sorted(n for n, p in parameters.items() if p.grad is None or not p.grad.abs().sum() > 0) == []
    assert x.grad is not None and x.grad.abs().sum() > 0
    before = parameters["stem.weight"].detach().clone()
    optimizer.step()
    assert not torch.equal(before, parameters["stem.weight"])


def test_parameters_have_eager_qat_names():
    names = [n for n, _ in graph_qat(float_state(), X86).named_parameters()]
    assert names[:4] == ["stem.weight", "stem.bias", "stem.bn.weight", "stem.bn.bias"]
    assert "b1.dw.bn.weight" in names and not any("_bn" in n for n in names)


def test_the_callers_model_is_left_as_it_was():
    net = Net()
    net.load_state_dict(float_state())
    model = torch.jit.script(net.train())
    code, state = model.code, {k: v.clone() for k, v in model.state_dict().items()}
    prepared = qgraph.prepare_qat_jit(model, {"": X86})
    with torch.no_grad():
        prepared(torch.randn(4, *INPUT))
    assert model.code == code
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_inplace_prepares_the_given_object():
    net = Net()
    model = torch.jit.script(net.train())
    assert qgraph.prepare_qat_jit(model, {"": X86}, inplace=True) is model
    assert "_observer_" in model.code and model.training


class TwoBlocks(nn.Module):
    """One class type, two instances: their shared graph is swapped once, each with its own statistics."""

    def __init__(self):
        super().__init__()
        self.a = Conv1dBn()
        self.b = Conv1dBn()

    def forward(self, x):
        return self.b(self.a(x))


class Conv1dBn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm1d(3)

    def forward(self, x):
        return self.bn(self.conv(x))


def test_instances_of_one_type_each_get_their_own_conv_bn():
    torch.manual_seed(0)
    eager = TwoBlocks()
    qat = qgraph.prepare_qat_jit(torch.jit.script(eager.train()), {"": X86})
    assert [p for p, m in named_modules(as_cpp(qat)) if is_conv_bn_module(m)] == ["a.conv", "b.conv"]
    assert not torch.equal(qat.a.conv.weight, qat.b.conv.weight)
    qgraph.qat.disable_fake_quant(qat)
    x = torch.randn(8, 3, 5)
    with torch.no_grad():
        # With fake-quant off a QAT Conv-BatchNorm computes what conv then BatchNorm compute, up to rounding.
        torch.testing.assert_close(qat(x), eager(x), rtol=1e-5, atol=1e-5)


class Traced(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(2, 3, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm3d(3)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


def test_a_traced_conv_bn_is_swapped_with_its_traced_hyper_parameters():
    torch.manual_seed(0)
    eager = Traced().eval()
    x = torch.randn(2, 2, 6, 6, 6)
    traced = torch.jit.trace(eager, (x,))
    qat = qgraph.prepare_qat_jit(traced.train(), {"": X86})
    assert is_conv_bn_module(as_cpp(qat).getattr("conv")) and not as_cpp(qat).hasattr("bn")
    assert list(qat.conv.stride) == [2, 2, 2] and list(qat.conv.padding) == [1, 1, 1]
    qgraph.qat.disable_fake_quant(qat)
    with torch.no_grad():
        torch.testing.assert_close(qat(x), eager.train()(x), rtol=1e-5, atol=1e-5)


class Unswappable(nn.Module):
    def __init__(self):
        super().__init__()
        self.no_affine = nn.Conv2d(2, 2, 1)
        self.no_affine_bn = nn.BatchNorm2d(2, affine=False)
        self.off = nn.Conv2d(2, 2, 1)
        self.off_bn = nn.BatchNorm2d(2)

    def forward(self, x):
        return self.off_bn(self.off(self.no_affine_bn(self.no_affine(x))))


def test_pairs_eager_qat_would_not_fuse_stay_as_they_are():
    model = torch.jit.script(Unswappable().train())
    qat = qgraph.prepare_qat_jit(model, {"": X86, "off": None})
    assert not any(is_conv_bn_module(m) for _, m in named_modules(as_cpp(qat)))
    assert as_cpp(qat).hasattr("no_affine_bn") and as_cpp(qat).hasattr("off_bn")


def test_a_model_in_eval_mode_is_refused():
    with pytest.raises(ValueError, match=r"training mode.*model\.train\(\)"):
        qgraph.prepare_qat_jit(torch.jit.script(Net().eval()), {"": X86})


@pytest.mark.parametrize("qconfig", [tq.get_default_qconfig("x86"), tq.default_qconfig], ids=["x86_ptq", "default_ptq"])
def test_a_post_training_qconfig_is_refused_with_the_qat_one_named(qconfig):
    with pytest.raises(ValueError, match=r"not a QAT qconfig.*get_default_qat_qconfig"):
        qgraph.prepare_qat_jit(torch.jit.script(Net().train()), {"": X86, "fc": qconfig})


def test_a_dynamic_qconfig_and_an_eager_module_are_refused():
    with pytest.raises(ValueError, match="dynamic qconfig"):
        qgraph.prepare_qat_jit(torch.jit.script(Net().train()), {"": tq.default_dynamic_qconfig})
    with pytest.raises(ValueError, match="TorchScript module"):
        qgraph.prepare_qat_jit(Net().train(), {"": X86})


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)
        self.other = nn.Conv2d(2, 2, 1)
        self.fc = nn.Linear(2, 2)

    def forward(self, x, flag: bool):
        if flag:
            y = self.conv(x)
        else:
            y = self.other(x)
        for _ in range(2):
            y = torch.relu(self.conv(y))
        return self.fc(y.mean([2, 3]))


def test_if_and_loop_models_get_fake_quants_where_prepare_jit_puts_observers():
    model = Branchy()
    qat = qgraph.prepare_qat_jit(torch.jit.script(model.train()), {"": X86})
    ptq = qgraph.prepare_jit(torch.jit.script(model.eval()), {"": tq.get_default_qconfig("x86")})
    assert _sites(qat) == _sites(ptq) and len(_sites(qat)) >= 6
    assert str(qat.graph).count("prim::CallMethod") == str(ptq.graph).count("prim::CallMethod")
    x = torch.randn(2, 2, 3, 3)
    (F.mse_loss(qat(x, True), torch.zeros(2, 2)) + F.mse_loss(qat(x, False), torch.zeros(2, 2))).backward()
    assert all(p.grad is not None for p in qat.parameters())


def test_a_qconfig_mapping_prepares_as_the_qconfig_dict_it_spells():
    from torch.ao.quantization import QConfigMapping

    state = float_state()
    by_dict = graph_qat(state, X86)
    net = Net()
    net.load_state_dict(state)
    mapping = QConfigMapping().set_global(X86).set_module_name("fc", None)
    by_mapping = qgraph.prepare_qat_jit(torch.jit.script(net.train()), mapping)
    fc_sites = {("", "call fc"), ("fc", "attribute weight")}
    assert fc_sites <= set(_sites(by_dict))
    assert [s for s in _sites(by_dict) if s not in fc_sites] == _sites(by_mapping)
    assert [p for p, m in named_modules(as_cpp(by_mapping)) if is_conv_bn_module(m)] == ["stem", "b1.dw", "b1.pw"]
    with pytest.raises(ValueError, match="QConfigMapping global is not a QAT qconfig"):
        qgraph.prepare_qat_jit(torch.jit.script(net.train()), QConfigMapping().set_global(tq.default_qconfig))


def test_the_default_qat_qconfig_mapping_trains_and_converts():
    qat = qgraph.prepare_qat_jit(torch.jit.script(Net().train()), tq.get_default_qat_qconfig_mapping("x86"))
    x = torch.randn(8, *INPUT)
    F.cross_entropy(qat(x), torch.zeros(8, dtype=torch.long)).backward()
    qat.eval()
    FileCheck().check("quantized::conv2d_relu").check("quantized::add_relu").check("quantized::linear").run(
        qgraph.convert_jit(qat).graph
    )
