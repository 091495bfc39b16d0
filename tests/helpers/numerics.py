"""Comparing model outputs: bit-exact equality with a readable failure, and SQNR.

``assert_bitwise_equal`` says how far apart two tensors are when they are
not identical (how many elements differ, by how much at most), which tells
a one-quantization-step rounding difference from a wrong model at a glance.
``sqnr`` is the signal-to-quantization-noise ratio in decibels of an
approximation against its float reference.
"""

from __future__ import annotations

import math

import torch


def sqnr(reference: torch.Tensor, approximation: torch.Tensor) -> float:
    """10 * log10(signal power / noise power); ``inf`` when the two are identical."""
    reference = reference.detach().float()
    noise = (reference - approximation.detach().float()).pow(2).sum().item()
    signal = reference.pow(2).sum().item()
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(signal / noise)


def difference_summary(actual: torch.Tensor, expected: torch.Tensor) -> str:
    if actual.shape != expected.shape:
        return f"shapes differ: {tuple(actual.shape)} vs {tuple(expected.shape)}"
    if actual.dtype != expected.dtype:
        return f"dtypes differ: {actual.dtype} vs {expected.dtype}"
    differing = actual != expected
    if not differing.any():
        return "identical"
    largest = (actual.float() - expected.float()).abs().max().item()
    return f"{int(differing.sum())} of {actual.numel()} elements differ, by at most {largest:.6g}"


def assert_bitwise_equal(actual: torch.Tensor, expected: torch.Tensor, what: str = "outputs") -> None:
    assert torch.equal(actual, expected), f"{what} are not bit-identical: {difference_summary(actual, expected)}"
