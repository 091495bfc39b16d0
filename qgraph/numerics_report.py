"""The numbers of ``qgraph.compare`` and ``qgraph.sensitivity``: SQNR and errors summed over runs, and their tables."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "COMPARED",
    "NOT_RUN",
    "NO_FLOAT_VALUE",
    "ErrorSum",
    "NumericsReport",
    "OpNumerics",
    "format_table",
    "output_errors",
    "sqnr",
]


def sqnr(signal_power: float, noise_power: float) -> float:
    """10 log10(signal / noise) in dB; inf when there is no noise."""
    if noise_power == 0:
        return math.inf
    if signal_power == 0:
        return -math.inf
    return 10 * math.log10(signal_power / noise_power)


COMPARED = "compared"
NOT_RUN = "not run"
NO_FLOAT_VALUE = "no float value"


@dataclass(frozen=True)
class OpNumerics:
    """One quantized op's output against the float model's value (numbers None when unmatched)."""

    module_path: str
    kind: str
    source: str | None
    sqnr: float | None
    max_abs_error: float | None
    relative_error: float | None
    status: str = "compared"  # COMPARED, NOT_RUN (no input reached it) or NO_FLOAT_VALUE


@dataclass
class NumericsReport:
    """Every quantized op, in graph order, and the SQNR of the model's output."""

    ops: list[OpNumerics] = field(default_factory=list)
    output_sqnr: float | None = None

    def __len__(self) -> int:
        return len(self.ops)

    def __iter__(self):
        return iter(self.ops)

    def worst_first(self) -> list[OpNumerics]:
        """Ops sorted by SQNR, lowest first; unmatched ops last, in graph order."""
        matched = [op for op in self.ops if op.sqnr is not None]
        unmatched = [op for op in self.ops if op.sqnr is None]
        return sorted(matched, key=lambda op: op.sqnr if op.sqnr is not None else math.inf) + unmatched

    def format(self, limit: int | None = None, width: int = 100) -> str:
        """A table worst SQNR first (``limit`` rows at most), no wider than ``width`` columns."""
        count = len(self.ops)
        title = f"{count} quantized op{'s' if count != 1 else ''}"
        if self.output_sqnr is not None:
            title += f"; model output SQNR {_decibels(self.output_sqnr)} dB"
        if not self.ops:
            return title
        shown = self.worst_first()[: limit if limit is not None else count]
        rows = [
            (
                _decibels(op.sqnr),
                "-" if op.max_abs_error is None else f"{op.max_abs_error:.2e}",
                "-" if op.relative_error is None else f"{op.relative_error:.1e}",
                op.kind,
                op.module_path or "<model>",
                op.source or "-",
            )
            for op in shown
        ]
        header = ("SQNR dB", "max abs err", "rel err", "op", "module", "source")
        table = format_table(header, rows, width=width, right_aligned=(0, 1, 2), shrinkable=(3, 4, 5))
        more = f"\n({count - len(shown)} more)" if len(shown) < count else ""
        notes = ""
        for status, says in ((NOT_RUN, "not reached by the inputs"), (NO_FLOAT_VALUE, "without a float value")):
            number = sum(1 for op in self.ops if op.status == status)
            if number:
                notes += f"\n{number} op{'s' if number != 1 else ''} {says} (-)"
        return f"{title}\n{table}{more}{notes}"


def _decibels(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.2f}"


def format_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    width: int = 100,
    right_aligned: Iterable[int] = (),
    shrinkable: Iterable[int] = (),
) -> str:
    """Columns two spaces apart; the widest ``shrinkable`` column loses its head (``…tail``) until it fits."""
    right = set(right_aligned)
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    flexible = list(shrinkable)
    while sum(widths) + 2 * (len(widths) - 1) > width and flexible:
        widest = max(flexible, key=lambda i: widths[i])
        if widths[widest] <= max(len(header[widest]), 8):
            flexible.remove(widest)
            continue
        widths[widest] -= 1

    def cell(text: str, i: int) -> str:
        if len(text) > widths[i]:
            text = "…" + text[len(text) - widths[i] + 1 :]
        return text.rjust(widths[i]) if i in right else text.ljust(widths[i])

    lines = ["  ".join(cell(str(c), i) for i, c in enumerate(row)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


@dataclass
class ErrorSum:
    signal: float = 0.0
    noise: float = 0.0
    max_abs: float = 0.0
    seen: bool = False
    shape_mismatch: bool = False

    def add(self, expected: torch.Tensor, actual: torch.Tensor) -> None:
        if actual.is_quantized:
            actual = actual.dequantize()
        if expected.is_quantized:
            expected = expected.dequantize()
        if expected.shape != actual.shape:
            # The same elements in another view (a mean legalized to keepdim and squeeze).
            if expected.numel() != actual.numel():
                self.shape_mismatch = True
                return
            actual = actual.reshape(expected.shape)
        expected = expected.detach().to(torch.float64)
        difference = actual.detach().to(torch.float64) - expected
        self.signal += float((expected * expected).sum())
        self.noise += float((difference * difference).sum())
        if difference.numel():
            self.max_abs = max(self.max_abs, float(difference.abs().max()))
        self.seen = True

    def numbers(self) -> tuple[float | None, float | None, float | None]:
        if not self.seen or self.shape_mismatch:
            return None, None, None
        relative = math.sqrt(self.noise / self.signal) if self.signal > 0 else (0.0 if self.noise == 0 else math.inf)
        return sqnr(self.signal, self.noise), self.max_abs, relative


def output_errors(expected: Any, actual: Any, errors: ErrorSum | None = None) -> ErrorSum:
    """Errors of every tensor in a (nested) model output against the float model's."""
    errors = errors if errors is not None else ErrorSum()
    if isinstance(expected, torch.Tensor) and isinstance(actual, torch.Tensor):
        errors.add(expected, actual)
    elif isinstance(expected, (tuple, list)) and isinstance(actual, (tuple, list)) and len(expected) == len(actual):
        for e, a in zip(expected, actual):
            output_errors(e, a, errors)
    elif isinstance(expected, dict) and isinstance(actual, dict):
        for key in expected:
            if key in actual:
                output_errors(expected[key], actual[key], errors)
    return errors
