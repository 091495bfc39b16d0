"""Activations the oneDNN conv and linear ops run as post-ops, and the arguments they take.

Each ``Activation`` names the aten ops it stands for (in-place forms too),
the names of their extra inputs as the pattern tables bind them, and how the
op's ``attr`` / ``scalars`` / ``algorithm`` arguments are made from a match.
A clamp-like activation (relu, relu6, hardtanh, clamp) whose bounds the
output's integer range already enforces needs no post-op at all: the
saturation to 0..255 does the clamp ("folded into the output range").

| activation        | conv2d post-op   | linear post-op          |
|-------------------|------------------|-------------------------|
| relu              | relu (or range)  | relu (or range)         |
| relu6, hardtanh   | hardtanh (or range) | hardtanh (or range)  |
| clamp (constants) | hardtanh (or range) | hardtanh (or range)  |
| hardswish         | hardswish        | hardswish               |
| silu              | swish            | swish                   |
| gelu              | -                | gelu (erf or tanh)      |
| leaky_relu        | -                | leaky_relu              |
| tanh              | -                | tanh                    |

Sigmoid and hardsigmoid have no post-op in either op.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from passes.lower_onednn.qparams import QParams
from qgraph.pattern import Match

__all__ = ["Activation", "ACTIVATIONS", "PostOp", "NO_POST_OP", "activations_for"]


@dataclass(frozen=True)
class PostOp:
    """The post-op arguments of a oneDNN op: ``attr``, ``scalars``, ``algorithm``."""

    attr: str
    scalars: tuple[float, ...] = ()
    algorithm: str = ""


NO_POST_OP = PostOp("none")
_NOT_CONSTANT = object()


@dataclass(frozen=True)
class Activation:
    name: str
    kinds: tuple[str, ...]
    arguments: tuple[str, ...] = ()
    linear_only: bool = False

    def is_static(self, match: Match) -> bool:
        """Whether the activation's extra arguments are constants, as post-op arguments must be."""
        for name in self.arguments:
            value = match.constant(name, default=_NOT_CONSTANT)
            if value is _NOT_CONSTANT:
                return False
            if name == "approximate" and value not in ("none", "tanh"):
                return False
            if name != "approximate" and value is not None and not isinstance(value, (int, float)):
                return False
        return True

    @property
    def bounds_known(self) -> bool:
        """Whether this is a clamp, whose ``bounds`` say what it lets through."""
        return self.name in ("relu", "relu6", "hardtanh", "clamp")

    def bounds(self, match: Match) -> tuple[float, float] | None:
        """The clamp an activation applies, for the clamp-like ones; None for the others."""
        if self.name == "relu":
            return 0.0, math.inf
        if self.name == "relu6":
            return 0.0, 6.0
        if self.name in ("hardtanh", "clamp"):
            low, high = (match.constant(name, None) for name in self.arguments)
            return (-math.inf if low is None else float(low)), (math.inf if high is None else float(high))
        return None

    def post_op(self, match: Match, output: QParams | None) -> PostOp:
        """The post-op for this match; ``output`` None means a float output (no range to fold into)."""
        bounds = self.bounds(match)
        if bounds is not None:
            low, high = bounds
            if output is not None:
                q_low, q_high = output.bounds
                if output.quantize(low) <= q_low and (high == math.inf or output.quantize(high) >= q_high):
                    return NO_POST_OP
            if low == 0.0 and high == math.inf:
                return PostOp("relu")
            return PostOp("hardtanh", (max(low, -3.0e38), min(high, 3.0e38)))
        if self.name == "hardswish":
            return PostOp("hardswish")
        if self.name == "silu":
            return PostOp("swish")
        if self.name == "gelu":
            return PostOp("gelu", (), "tanh" if match.constant("approximate", "none") == "tanh" else "none")
        if self.name == "leaky_relu":
            return PostOp("leaky_relu", (float(match.constant("slope")),))
        if self.name == "tanh":
            return PostOp("tanh")
        raise ValueError(f"no post-op for {self.name}")


ACTIVATIONS = (
    Activation("relu", ("aten::relu", "aten::relu_")),
    Activation("relu6", ("aten::relu6", "aten::relu6_")),
    Activation("hardtanh", ("aten::hardtanh", "aten::hardtanh_"), ("low", "high")),
    Activation("clamp", ("aten::clamp", "aten::clamp_"), ("low", "high")),
    Activation("hardswish", ("aten::hardswish", "aten::hardswish_")),
    Activation("silu", ("aten::silu", "aten::silu_")),
    Activation("gelu", ("aten::gelu", "aten::gelu_"), ("approximate",), linear_only=True),
    Activation("leaky_relu", ("aten::leaky_relu", "aten::leaky_relu_"), ("slope",), linear_only=True),
    Activation("tanh", ("aten::tanh", "aten::tanh_"), linear_only=True),
)


def activations_for(op_kind: str) -> tuple[Activation, ...]:
    """The activations ``aten::conv2d`` or ``aten::linear`` can fuse."""
    return tuple(a for a in ACTIVATIONS if op_kind == "aten::linear" or not a.linear_only)
