"""The QAT Conv-BatchNorm module against PyTorch's ``torch.ao.nn.intrinsic.qat.ConvBn{1,2,3}d``: forward and backward.

Same float weights, inputs and weight fake-quant; several SGD steps, the
BatchNorm frozen half-way or not at all. Outputs, input and parameter
gradients, running statistics and the weight fake-quant's scale must be
equal, not close: the module copies eager's arithmetic operation for
operation.
"""

import pytest
import torch
import torch.ao.nn.intrinsic.qat as nniqat
import torch.ao.quantization as tq
from torch import nn

from qgraph.ir import as_python
from qgraph.quant.qat_modules import build_conv_bn, is_conv_bn_module

EAGER = {1: nniqat.ConvBn1d, 2: nniqat.ConvBn2d, 3: nniqat.ConvBn3d}
CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
QCONFIGS = {"x86": tq.get_default_qat_qconfig("x86"), "per_tensor": tq.default_qat_qconfig}


def _pair(dim, bias, groups, padding_mode, qconfig):
    torch.manual_seed(dim)
    conv = CONV[dim](4, 4, 3, padding=1, groups=groups, bias=bias, padding_mode=padding_mode)
    bn = BN[dim](4)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.3, 0.3)
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
    eager = EAGER[dim](4, 4, 3, padding=1, groups=groups, bias=bias, padding_mode=padding_mode, qconfig=qconfig).train()
    eager.weight = nn.Parameter(conv.weight.detach().clone())
    eager.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())
    eager.bn.load_state_dict(bn.state_dict())
    ours = as_python(build_conv_bn(conv, bn, torch.jit.script(qconfig.weight())._c)).train()
    return eager, ours


@pytest.mark.parametrize("qconfig", sorted(QCONFIGS))
@pytest.mark.parametrize(
    "dim, bias, groups, padding_mode",
    [(1, True, 1, "zeros"), (2, False, 4, "zeros"), (2, True, 1, "circular"), (3, False, 1, "zeros")],
    ids=["1d", "2d_depthwise_no_bias", "2d_circular", "3d_no_bias"],
)
def test_forward_and_backward_equal_eager(dim, bias, groups, padding_mode, qconfig):
    eager, ours = _pair(dim, bias, groups, padding_mode, QCONFIGS[qconfig])
    assert is_conv_bn_module(ours._c)
    opt_eager = torch.optim.SGD(eager.parameters(), lr=0.1)
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(0)
    for step in range(4):
        if step == 2:
            eager.freeze_bn_stats()
            ours.freeze_bn_stats()
        x = torch.randn(3, 4, *([5] * dim), generator=generator)
        xe, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
        out_eager, out_ours = eager(xe), ours(xo)
        assert torch.equal(out_eager, out_ours), step
        (out_eager**2).sum().backward()
        (out_ours**2).sum().backward()
        assert torch.equal(xe.grad, xo.grad)
        for (name, pe), (_, po) in zip(eager.named_parameters(), ours.named_parameters()):
            assert torch.equal(pe.grad, po.grad), (step, name)
        opt_eager.step()
        opt_ours.step()
        opt_eager.zero_grad()
        opt_ours.zero_grad()
    assert torch.equal(eager.bn.running_var, ours.bn.running_var)
    assert torch.equal(eager.bn.num_batches_tracked, ours.bn.num_batches_tracked)
    assert torch.equal(eager.weight_fake_quant.scale, ours.weight_fake_quant.scale)


def test_eval_mode_uses_running_statistics():
    eager, ours = _pair(2, True, 1, "zeros", QCONFIGS["x86"])
    x = torch.randn(3, 4, 5, 5)
    with torch.no_grad():
        ours(x)  # the weight fake-quant observes once
        eager(x)
        ours.eval()
        eager.eval()
        running_var = ours.bn.running_var.clone()
        assert torch.equal(ours(x), eager(x))
        assert torch.equal(ours.bn.running_var, running_var) and ours.bn.num_batches_tracked.item() == 1
