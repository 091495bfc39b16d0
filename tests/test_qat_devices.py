"""Devices: a prepared QAT model, its fake-quants and its Conv-BatchNorm state live on one device.

Eager QAT builds fake-quants on the device of the module they belong to;
``prepare_qat_jit`` moves the ones it inserts to the model's device, and the
prepared model moves as a whole with ``.to()``. Convert takes it back on
the CPU. The ``meta`` device stands in for an accelerator where there is
none; the CUDA test runs where CUDA is present.
"""

import pytest
import torch
import torch.ao.quantization as tq
import torch.nn.functional as F

import qgraph
from helpers.qat_models import INPUT, Net, float_state, graph_qat, train_step

X86 = tq.get_default_qat_qconfig("x86")


def _devices(model):
    return {t.device.type for t in [*model.parameters(), *model.buffers()]}


def test_a_model_prepared_on_another_device_has_its_fake_quants_there():
    net = Net()
    net.load_state_dict(float_state())
    prepared = qgraph.prepare_qat_jit(torch.jit.script(net.to("meta").train()), {"": X86})
    assert _devices(prepared) == {"meta"}
    assert prepared(torch.randn(2, *INPUT, device="meta")).device.type == "meta"


def test_the_prepared_model_moves_whole_with_to():
    # nn.Module.to asserts that each parameter is an nn.Parameter when it cannot swap its data in place.
    prepared = graph_qat(float_state(), X86)
    assert _devices(prepared.to("meta")) == {"meta"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_trains_on_cuda_and_converts_on_the_cpu():
    torch.manual_seed(0)
    on_cpu = graph_qat(float_state(), X86)
    on_cuda = graph_qat(float_state(), X86).to("cuda")
    assert _devices(on_cuda) == {"cuda"}
    x, y = torch.randn(16, *INPUT), torch.randint(0, 3, (16,))
    for model, device in ((on_cpu, "cpu"), (on_cuda, "cuda")):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        for _ in range(2):
            train_step(model, optimizer, x.to(device), y.to(device))
    assert _devices(on_cuda) == {"cuda"}
    for name, p in on_cpu.named_parameters():
        torch.testing.assert_close(p, dict(on_cuda.named_parameters())[name].cpu(), rtol=1e-3, atol=1e-4)
    on_cuda.eval()
    int8 = qgraph.convert_jit(on_cuda)
    assert _devices(on_cuda) == {"cuda"}
    with torch.no_grad():
        out = int8(x)
    assert out.device.type == "cpu" and F.softmax(out, 1).shape == (16, 3)
