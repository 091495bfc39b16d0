"""Quantization-aware training of a TorchScript model: where post-training int8 loses accuracy, QAT wins it back.

    pip install -e '.[examples]'        # scikit-learn, for its bundled digits data set
    python examples/qat.py [--seed N] [--fp32-epochs N] [--qat-epochs N]

Trains a small depthwise-separable CNN on scikit-learn's 8x8 handwritten
digits (1,797 images shipped inside the package: nothing is downloaded),
then prints the test accuracy of

1. the float model;
2. the int8 model ``qgraph.quantize_jit`` gives after calibration, with
   per-tensor weights (``default_qconfig``);
3. the int8 model after a few epochs of quantization-aware training
   (``qgraph.prepare_qat_jit`` with ``default_qat_qconfig``, the same
   per-tensor weights), converted with ``qgraph.convert_jit``.

Why per-tensor int8 hurts here: the 1x1 expansion convs have a bias and a
ReLU but no BatchNorm, so the channels they feed to the depthwise conv
differ widely in range; folding the depthwise conv's BatchNorm scales each
of its channels by the inverse spread of its input, and one weight scale
for the whole tensor rounds the weakest channels to zero. QAT trains the
weights with that rounding in the loop.
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization import default_qat_qconfig, default_qconfig

import qgraph


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    __constants__ = ["residual"]

    def __init__(self, cin: int, cout: int, expand: int, stride: int):
        super().__init__()
        hidden = cin * expand
        self.expand = nn.Sequential(nn.Conv2d(cin, hidden, 1), nn.ReLU())
        self.depthwise = conv_bn(hidden, hidden, 3, stride, groups=hidden)
        self.project = conv_bn(hidden, cout, 1, relu=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return y + x if self.residual else y


class DigitsNet(nn.Module):
    def __init__(self, width: int = 4, expand: int = 6):
        super().__init__()
        self.stem = conv_bn(1, width, 3)
        self.blocks = nn.Sequential(
            InvertedResidual(width, width, expand, 1),
            InvertedResidual(width, 2 * width, expand, 2),
            InvertedResidual(2 * width, 2 * width, expand, 1),
        )
        self.fc = nn.Linear(2 * width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def digits(seed: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """scikit-learn's digits scaled to [0, 1]: 1,400 training images, 397 test images."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("this example needs scikit-learn: pip install -e '.[examples]'") from None
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


def train(model, x, y, epochs: int, lr: float, seed: int, before_epoch=None) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        if before_epoch is not None:
            before_epoch(epoch)
        model.train()
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), 64):
            batch = order[start : start + 64]
            optimizer.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
        schedule.step()


def accuracy(model, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fp32-epochs", type=int, default=30)
    parser.add_argument("--qat-epochs", type=int, default=15)
    parser.add_argument("--qat-lr", type=float, default=0.01, help="small: QAT from a trained model diverges at 0.05")
    args = parser.parse_args(argv)
    (x_train, y_train), (x_test, y_test) = digits()

    torch.manual_seed(args.seed)
    float_model = DigitsNet()
    train(float_model, x_train, y_train, args.fp32_epochs, 0.05, args.seed)
    float_model.eval()
    results = {"fp32": accuracy(float_model, x_test, y_test)}

    scripted = torch.jit.script(copy.deepcopy(float_model).eval())
    ptq = qgraph.quantize_jit(scripted, {"": default_qconfig}, lambda model, x: model(x), [x_train])
    results["int8, post-training"] = accuracy(ptq, x_test, y_test)

    qat = qgraph.prepare_qat_jit(torch.jit.script(copy.deepcopy(float_model).train()), {"": default_qat_qconfig})

    def before_epoch(epoch: int) -> None:
        # The usual QAT recipe: BatchNorm statistics frozen, then qparams, for the last epochs.
        if epoch == args.qat_epochs - 2:
            qgraph.qat.freeze_bn_stats(qat)
        if epoch == args.qat_epochs - 1:
            qgraph.qat.disable_observer(qat)

    train(qat, x_train, y_train, args.qat_epochs, args.qat_lr, args.seed + 100, before_epoch)
    qat.eval()
    results[f"int8, after {args.qat_epochs} QAT epochs"] = accuracy(qgraph.convert_jit(qat), x_test, y_test)
    for name, value in results.items():
        print(f"{name:>26}: {100 * value:.1f}% of {len(y_test)} test digits")
    return results


if __name__ == "__main__":
    main()
