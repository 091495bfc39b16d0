"""torchvision's classification architectures, small enough for the test suite.

torchvision is installed beside the CPU torch with ``--no-deps`` (its wheel
is a CUDA build): its model code is pure Python, but its C++ extension
cannot load, and ``import torchvision`` registers fake kernels for the
``torchvision::nms`` / ``torchvision::qnms`` operators the extension would
have defined. The set-up puts it in a folder of its own, ``torchvision``
inside the virtual environment, off ``sys.path``, so that nothing else
imports it by accident. ``import_torchvision`` defines those two schemas
first, once per process, then imports it from that folder.

Each family has one representative built from torchvision's own classes
(the same modules, block code and control flow as the named model) with
fewer and narrower layers where the constructor allows, so a model scripts,
traces, calibrates and converts in about a second. Random weights make deep
nets degenerate (activations collapse or explode), so BatchNorm statistics
are re-estimated on random batches first, as a trained model would have them.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn

_OPERATOR_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library: torch.library.Library | None = None


# Where the set-up installs torchvision (Makefile: pip install --target).
_TORCHVISION_FOLDER = Path(sys.prefix) / "torchvision"


def torchvision_installed() -> bool:
    return (_TORCHVISION_FOLDER / "torchvision").is_dir() or importlib.util.find_spec("torchvision") is not None


def import_torchvision():
    """``torchvision``, importable beside a CPU torch (see the module docstring)."""
    global _library
    if _TORCHVISION_FOLDER.is_dir() and str(_TORCHVISION_FOLDER) not in sys.path:
        sys.path.append(str(_TORCHVISION_FOLDER))
    if _library is None:
        _library = torch.library.Library("torchvision", "FRAGMENT")
        for name, schema in _OPERATOR_SCHEMAS.items():
            if not torch._C._dispatch_has_kernel(f"torchvision::{name}") and not _has_schema(name):
                _library.define(schema)
    import torchvision

    return torchvision


def _has_schema(name: str) -> bool:
    try:
        getattr(torch.ops.torchvision, name)
    except (AttributeError, RuntimeError):
        return False
    return True


@dataclass(frozen=True)
class Architecture:
    """One torchvision family: how to build a small instance and the input size it needs."""

    name: str
    build: Callable[[], nn.Module]
    size: int  # square input side


def _resnet(models):
    return models.ResNet(models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=10)


def _resnext(models):
    # Bottleneck blocks with grouped 3x3 convs: resnext50_32x4d's block, one per stage.
    return models.ResNet(models.resnet.Bottleneck, [1, 1, 1, 1], num_classes=10, groups=4, width_per_group=8)


def _narrow_head(in_features: int) -> list[nn.Module]:
    """AlexNet's and VGG's classifier layers (two 4096-wide linears) at width 64, without their dropouts."""
    return [nn.Linear(in_features, 64), nn.ReLU(True), nn.Linear(64, 64), nn.ReLU(True), nn.Linear(64, 10)]


def _alexnet(models):
    model = models.alexnet(num_classes=10)
    first, relu, second, relu2, last = _narrow_head(256 * 6 * 6)
    model.classifier = nn.Sequential(nn.Dropout(), first, relu, nn.Dropout(), second, relu2, last)
    return model


def _vgg(models):
    layers = models.vgg.make_layers([8, "M", 16, "M", 16, 16, "M", 32, "M", 32, "M"], batch_norm=True)
    model = models.VGG(layers, num_classes=10)
    first, relu, second, relu2, last = _narrow_head(32 * 7 * 7)
    model.classifier = nn.Sequential(first, relu, nn.Dropout(), second, relu2, nn.Dropout(), last)
    return model


def _densenet(models):
    return models.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, num_classes=10)


def _mobilenet_v3(models):
    return models.mobilenet_v3_small(num_classes=10, width_mult=0.25)


def _quantizable_mobilenet_v3(models):
    from torchvision.models.mobilenetv3 import _mobilenet_v3_conf
    from torchvision.models.quantization.mobilenetv3 import QuantizableMobileNetV3

    settings, last_channel = _mobilenet_v3_conf("mobilenet_v3_large", width_mult=0.25)
    return QuantizableMobileNetV3(settings, last_channel, num_classes=10)


def _efficientnet_b0(models):
    settings, last_channel = models.efficientnet._efficientnet_conf("efficientnet_b0", width_mult=0.25, depth_mult=0.25)
    return models.EfficientNet(settings, 0.2, last_channel=last_channel, num_classes=10)


def _efficientnet_v2(models):
    from torchvision.models.efficientnet import FusedMBConvConfig, MBConvConfig

    settings = [
        FusedMBConvConfig(1, 3, 1, 8, 8, 1),
        FusedMBConvConfig(4, 3, 2, 8, 16, 1),
        MBConvConfig(4, 3, 2, 16, 24, 1),
        MBConvConfig(6, 3, 1, 24, 32, 2),
    ]
    return models.EfficientNet(settings, 0.2, last_channel=64, num_classes=10)


def _regnet(models):
    params = models.regnet.BlockParams.from_init_params(depth=4, w_0=16, w_a=8.0, w_m=2.0, group_width=8, se_ratio=0.25)
    return models.RegNet(params, stem_width=16, num_classes=10)


def _convnext(models):
    from torchvision.models.convnext import CNBlockConfig

    settings = [CNBlockConfig(16, 32, 1), CNBlockConfig(32, 64, 1), CNBlockConfig(64, None, 1)]
    return models.ConvNeXt(settings, stochastic_depth_prob=0.1, num_classes=10)


def _vit(models):
    model = models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
    )
    # torchvision starts the classifier head at zero (fine-tuning fills it); the output would be zero.
    nn.init.normal_(model.heads.head.weight, std=0.5)
    return model


def _swin(models):
    return models.SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=[4, 4], num_classes=10
    )


def _maxvit(models):
    return models.MaxVit(
        input_size=(32, 32),
        stem_channels=8,
        partition_size=2,
        block_channels=[16, 32],
        block_layers=[1, 1],
        head_dim=8,
        stochastic_depth_prob=0.1,
        num_classes=10,
    )


def architectures() -> dict[str, Architecture]:
    """One small model per torchvision classification family, by family name."""
    models = import_torchvision().models
    families = [
        ("alexnet", partial(_alexnet, models), 64),
        ("vgg", partial(_vgg, models), 32),
        ("resnet", partial(_resnet, models), 32),
        ("resnext", partial(_resnext, models), 32),
        ("densenet", partial(_densenet, models), 32),
        ("squeezenet", partial(models.squeezenet1_1, num_classes=10), 48),
        ("googlenet", partial(models.googlenet, num_classes=10, aux_logits=True, init_weights=True), 32),
        ("inception_v3", partial(models.inception_v3, num_classes=10, aux_logits=True, init_weights=True), 75),
        ("mobilenet_v2", partial(models.mobilenet_v2, num_classes=10, width_mult=0.25), 32),
        ("mobilenet_v3", partial(_mobilenet_v3, models), 32),
        ("quantizable_mobilenet_v3", partial(_quantizable_mobilenet_v3, models), 32),
        ("mnasnet", partial(models.mnasnet0_5, num_classes=10), 64),
        ("shufflenet_v2", partial(models.shufflenet_v2_x0_5, num_classes=10), 64),
        ("efficientnet_b0", partial(_efficientnet_b0, models), 32),
        ("efficientnet_v2", partial(_efficientnet_v2, models), 32),
        ("regnet", partial(_regnet, models), 32),
        ("convnext", partial(_convnext, models), 32),
        ("vit", partial(_vit, models), 32),
        ("swin", partial(_swin, models), 32),
        ("maxvit", partial(_maxvit, models), 32),
    ]
    return {name: Architecture(name, build, size) for name, build, size in families}


def reestimate_batchnorm(model: nn.Module, batches: list[torch.Tensor]) -> nn.Module:
    """BatchNorm running statistics recomputed from ``batches``; ``model`` comes back in eval mode.

    Only the BatchNorm modules run in training mode (momentum None: a plain
    average over the batches), so dropout, stochastic depth and training-only
    heads stay as inference has them.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    with torch.no_grad():
        for batch in batches:
            model(batch)
    return model.eval()


def logits(output) -> torch.Tensor:
    """The classification output of a torchvision model (GoogLeNet and Inception return named tuples)."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    return output[0]
