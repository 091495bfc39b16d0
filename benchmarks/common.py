"""Measuring helpers shared by the benchmarks: interleaved repeats, medians, ratios.

Machines are shared and noisy, so every comparison runs its contenders in
alternation (A, B, A, B, ...) inside one process and reports medians and the
ratio of medians; nothing here asserts a time.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def interleaved(contenders: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each contender, run in alternation ``repeats`` times after ``warmup`` rounds."""
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def latency(model: Callable, example: torch.Tensor, calls: int = 20) -> Callable[[], None]:
    """A contender that runs ``model(example)`` ``calls`` times (use with ``per_call``)."""

    def run() -> None:
        with torch.no_grad():
            for _ in range(calls):
                model(example)

    run.calls = calls  # type: ignore[attr-defined]
    return run


def table(rows: list[tuple], header: tuple) -> str:
    cells = [tuple(str(c) for c in header)] + [tuple(str(c) for c in row) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"
