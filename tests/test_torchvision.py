"""torchvision's classification architectures: prepare -> calibrate -> convert, scripted and traced.

One small model per family (``helpers.torchvision_models``), BatchNorm
statistics re-estimated, per-channel weights and MinMax activations (the
x86 qconfig's weights; MinMax keeps calibration cheap, the histogram
observer is covered in test_quantize_jit.py), two calibration batches,
quantized by qgraph and, on the same captured model, by PyTorch's graph mode
(the reference). Where the reference works the outputs are equal bit for
bit. Where it fails (``REFERENCE_FAILS`` says how), qgraph's model must come
as close to the float model as the reference's model of the same
architecture traced (within half a dB: a scripted graph can quantize other
ops than the traced one, e.g. attention keeps both of its paths), or reach
20 dB SQNR.

Random weights make these nets far less accurate than trained ones (some
under 0 dB); the bit-exact comparison, not the SQNR, is the check there.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch.ao.quantization import MinMaxObserver, QConfig, default_per_channel_weight_observer
from torch.ao.quantization import convert_jit as reference_convert_jit
from torch.ao.quantization import prepare_jit as reference_prepare_jit

import qgraph
from helpers.numerics import assert_bitwise_equal, sqnr
from helpers.torchvision_models import architectures, logits, reestimate_batchnorm, torchvision_installed

pytestmark = [
    pytest.mark.skipif(not torchvision_installed(), reason="torchvision is not installed (make test installs it)"),
    # torchvision's models check input sizes in Python (torch._assert, window
    # padding in Swin, .item() in ViT): each trace here runs at the shape it
    # was traced with, so the constants the tracer warns about are right.
    pytest.mark.filterwarnings("ignore:Converting a tensor to a Python:torch.jit.TracerWarning"),
    # Scripted GoogLeNet / Inception3 announce their tuple output in eval
    # mode; the tests read the logits from it.
    pytest.mark.filterwarnings("ignore:Scripted (GoogleNet|Inception3) always returns:UserWarning"),
    # Scripting a torchvision model whose __init__ annotates an empty
    # container on the instance: TorchScript infers the attribute's type.
    pytest.mark.filterwarnings("ignore:The TorchScript type system doesn't support instance-level annotations"),
]

QCONFIG_DICT = {
    "": QConfig(activation=MinMaxObserver.with_args(reduce_range=True), weight=default_per_channel_weight_observer)
}
NAMES = [
    "alexnet",
    "vgg",
    "resnet",
    "resnext",
    "densenet",
    "squeezenet",
    "googlenet",
    "inception_v3",
    "mobilenet_v2",
    "mobilenet_v3",
    "quantizable_mobilenet_v3",
    "mnasnet",
    "shufflenet_v2",
    "efficientnet_b0",
    "efficientnet_v2",
    "regnet",
    "convnext",
    "vit",
    "swin",
    "maxvit",
]
CAPTURES = ("script", "trace")

# Scripted models PyTorch's graph mode cannot quantize (torch 2.13.0), and how it fails.
REFERENCE_FAILS = {
    ("googlenet", "script"): "observes the Optional[Tensor] of the eval-mode aux branches; calibration fails "
    "(aten::numel on Tensor?)",
    ("inception_v3", "script"): "'branches for `if` should return values that are observed consistently' "
    "(transform_input)",
    ("quantizable_mobilenet_v3", "script"): "prepare_jit crashes the process (SIGSEGV): a FloatFunctional forward "
    "never calls keeps an empty observer slot",
    ("efficientnet_b0", "script"): "'branches for `if` should return values that are observed consistently' "
    "(stochastic depth)",
    ("efficientnet_v2", "script"): "'branches for `if` should return values that are observed consistently' "
    "(stochastic depth)",
    ("swin", "script"): "'branches for `if` should return values that are observed consistently' (stochastic depth)",
    ("maxvit", "script"): "'branches for `if` should return values that are observed consistently' (stochastic depth)",
    ("vit", "script"): "prepare_jit crashes the process (SIGSEGV)",
}
SQNR_ENOUGH = 20.0
SQNR_MARGIN = 0.5


@functools.cache
def _float_model(name: str):
    """(eval-mode model, calibration batches, test batch) for one architecture."""
    architecture = architectures()[name]
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(2, 3, architecture.size, architecture.size, generator=generator) for _ in range(5)]
    model = reestimate_batchnorm(architecture.build(), batches[:2])
    return model, batches[2:4], batches[4]


def _capture(name: str, how: str) -> torch.jit.ScriptModule:
    model, calibration, _ = _float_model(name)
    return torch.jit.trace(model, calibration[0], check_trace=False) if how == "trace" else torch.jit.script(model)


def _quantize(prepare, convert, captured, calibration):
    prepared = prepare(captured, QCONFIG_DICT)
    with torch.no_grad():
        for batch in calibration:
            prepared(batch)
    return convert(prepared)


@functools.cache
def _reference_traced_sqnr(name: str) -> float:
    model, calibration, test_input = _float_model(name)
    reference = _quantize(reference_prepare_jit, reference_convert_jit, _capture(name, "trace"), calibration)
    with torch.no_grad():
        return sqnr(logits(model(test_input)), logits(reference(test_input)))


@pytest.mark.parametrize("how", CAPTURES)
@pytest.mark.parametrize("name", NAMES)
def test_architecture_quantizes_like_the_reference(name, how):
    model, calibration, test_input = _float_model(name)
    captured = _capture(name, how)
    ours = _quantize(qgraph.prepare_jit, qgraph.convert_jit, captured, calibration)
    with torch.no_grad():
        got = logits(ours(test_input))
        expected_float = logits(model(test_input))
    assert got.shape == expected_float.shape and not got.is_quantized
    if (name, how) in REFERENCE_FAILS:
        floor = min(SQNR_ENOUGH, _reference_traced_sqnr(name)) - SQNR_MARGIN
        assert sqnr(expected_float, got) >= floor, REFERENCE_FAILS[(name, how)]
        return
    reference = _quantize(reference_prepare_jit, reference_convert_jit, captured, calibration)
    with torch.no_grad():
        assert_bitwise_equal(got, logits(reference(test_input)), f"{name} ({how}) outputs")
