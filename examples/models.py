"""Small float models in the shapes people quantize: ResNet, MobileNetV2, a transformer MLP.

Used by the examples, the benchmarks and the end-to-end tests. Widths and
depths are parameters so the same architecture serves a quick test and a
benchmark.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out = out + identity
        return self.relu(out)


class ResNetLike(nn.Module):
    """ResNet-18's layout (stem, 4 stages of 2 basic blocks, pooled classifier), scaled by ``width``."""

    def __init__(self, width: int = 16, num_classes: int = 10, blocks_per_stage: int = 2):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages = []
        in_ch = width
        for i, mult in enumerate((1, 2, 4, 8)):
            out_ch = width * mult
            blocks = [BasicBlock(in_ch, out_ch, 1 if i == 0 else 2)]
            blocks += [BasicBlock(out_ch, out_ch) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            in_ch = out_ch
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


class ConvBNReLU6(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU6(),
        )


class InvertedResidual(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int):
        super().__init__()
        hidden = in_ch * expand
        self.use_residual = stride == 1 and in_ch == out_ch
        layers = [] if expand == 1 else [ConvBNReLU6(in_ch, hidden, kernel=1)]
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2Like(nn.Module):
    """MobileNetV2's inverted-residual layout (depthwise convs, ReLU6, residual adds), scaled by ``width``."""

    # (expansion, output channels as a multiple of width, repeats, first stride)
    SETTINGS = ((1, 1, 1, 1), (6, 2, 2, 2), (6, 2, 2, 2), (6, 4, 2, 2), (6, 6, 1, 1))

    def __init__(self, width: int = 8, num_classes: int = 10):
        super().__init__()
        layers = [ConvBNReLU6(3, width * 2, stride=2)]
        in_ch = width * 2
        for expand, mult, repeats, stride in self.SETTINGS:
            out_ch = width * mult
            for i in range(repeats):
                layers.append(InvertedResidual(in_ch, out_ch, stride if i == 0 else 1, expand))
                in_ch = out_ch
        layers.append(ConvBNReLU6(in_ch, width * 16, kernel=1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(width * 16, num_classes)

    def forward(self, x):
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class MLPBlock(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return x + self.fc2(self.relu(self.fc1(self.norm(x))))


class TransformerMLP(nn.Module):
    """The feed-forward half of a transformer stack: layer norm, linear-relu-linear, residual add."""

    def __init__(self, dim: int = 32, hidden: int = 64, depth: int = 3, num_classes: int = 10):
        super().__init__()
        self.embed = nn.Linear(dim, dim)
        self.blocks = nn.Sequential(*[MLPBlock(dim, hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        return self.head(self.norm(self.blocks(self.embed(x))))


class EncoderBlock(nn.Module):
    """A pre-norm transformer encoder block, ViT-B/16's by default: 12 heads of 64, an MLP 4x wide, GELU.

    Attention is written out (one linear for queries, keys and values, two
    matmuls, a softmax), so the block scripts, traces and exports to ONNX
    the same way on every PyTorch version.
    """

    def __init__(self, dim: int = 768, heads: int = 12, mlp_ratio: int = 4):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(mlp_ratio * dim, dim)

    def forward(self, x):
        n, tokens, dim = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(n, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attention = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * self.scale, dim=-1)
        mixed = torch.matmul(attention, v).transpose(1, 2).reshape(n, tokens, dim)
        x = x + self.proj(mixed)
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class DeepConvStack(nn.Module):
    """``depth`` conv-relu layers in a row: a model whose size makes pass costs visible."""

    def __init__(self, depth: int = 1000, channels: int = 4):
        super().__init__()
        self.layers = nn.Sequential(*[nn.Sequential(nn.Conv2d(channels, channels, 1), nn.ReLU()) for _ in range(depth)])

    def forward(self, x):
        return self.layers(x)


class LSTMLanguageModel(nn.Module):
    """Embedding, multi-layer LSTM, linear decoder: the model dynamic quantization is for."""

    def __init__(self, vocab: int = 2000, embed: int = 128, hidden: int = 256, layers: int = 2):
        super().__init__()
        self.embedding = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, layers)
        self.decoder = nn.Linear(hidden, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embedding(tokens))
        return self.decoder(out)


def calibration_batches(shape: tuple[int, ...], count: int = 4, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=generator) for _ in range(count)]


def calibrate(model: torch.nn.Module, batches) -> None:
    """The calibration loop: ``run_fn`` for ``quantize_jit``."""
    with torch.no_grad():
        for batch in batches:
            model(batch)


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give batch norms non-trivial statistics, as a trained model has, so folding does real work."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            if module.affine:
                module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
    return model


__all__ = [
    "ResNetLike",
    "MobileNetV2Like",
    "TransformerMLP",
    "EncoderBlock",
    "DeepConvStack",
    "LSTMLanguageModel",
    "calibration_batches",
    "calibrate",
    "randomize_batchnorm",
]
