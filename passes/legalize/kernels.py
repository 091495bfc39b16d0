"""Quantized kernels that compute something else than the model for some inputs, made to compute it.

- ``quantized::group_norm`` and ``quantized::instance_norm`` on a 4-D
  channels-last input with fewer than 512 spatial positions (every
  quantized conv or norm output, and every 1x1 map) run a kernel that
  steps through the batch modulo the number of elements per group instead
  of the batch size: with more samples than elements per group (a batch of
  3 on a 1x1 map with 2 channels per group, of 5 on a 2x2 map with
  instance norm) the outputs of the later samples are never written and
  hold whatever memory was there. A run-time guard sends exactly those
  inputs through a 3-D view of the same data (``[N, C, H * W]``), where the
  kernel's other path computes the same group statistics, and reshapes the
  result back; every other input runs the kernel as before, so no op runs
  in float::

      %y = quantized::group_norm(%x, %groups, %weight, %bias, %eps, %scale, %zp)
    becomes
      %y = prim::If(<channels-last, H * W < 512, N > C / groups * H * W>)
        block0():
          %flat = aten::reshape(%x, [N, C, H * W])
          %y_flat = quantized::group_norm(%flat, %groups, %weight, %bias, %eps, %scale, %zp)
          -> (aten::reshape(%y_flat, aten::size(%x)))
        block1():
          -> (quantized::group_norm(%x, %groups, %weight, %bias, %eps, %scale, %zp))

- ``quantized::add_scalar_relu`` and ``quantized::add_scalar_relu_out``
  given their scalar as a 0-dim tensor (a trace records ``x + 0.5`` with a
  tensor constant) leave out the relu: their ``Tensor`` overloads compute
  ``add_scalar``. The constant is passed as a number, which takes the
  overload that applies the relu (for every other scalar op the two
  overloads give the same bits, and they are left alone)::

      %b : Tensor = prim::Constant[value={0.5}]()
      %r = quantized::add_scalar_relu(%a_q, %b)
    becomes
      %b.1 : float = prim::Constant[value=0.5]()
      %r = quantized::add_scalar_relu(%a_q, %b.1)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch

from qgraph.ir import Graph, Node, Value, insert_constant, insert_op, insert_scripted, nested_blocks, walk
from qgraph.pattern import Match, Rewrite

__all__ = ["NORM_GUARDS", "TENSOR_SCALAR_REWRITES"]


def norm_kernel_skips_samples(x: torch.Tensor, num_groups: int) -> bool:
    # The channels-last kernel of quantized group/instance norm (4-D input,
    # fewer than 512 spatial positions) wraps the sample index at the number
    # of elements per group: later samples are never written.
    if x.dim() != 4 or not x.is_contiguous(memory_format=torch.channels_last):
        return False
    spatial = x.size(2) * x.size(3)
    return spatial < 512 and x.size(0) > x.size(1) // num_groups * spatial


def _samples_flattened(x: torch.Tensor) -> torch.Tensor:
    # [N, C, H * W]: the same group statistics, and a 3-D input takes the kernel's other path.
    return x.reshape([x.size(0), x.size(1), x.size(2) * x.size(3)])


def group_norm_guarded(
    x: torch.Tensor,
    num_groups: int,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    eps: float,
    output_scale: float,
    output_zero_point: int,
) -> torch.Tensor:
    if norm_kernel_skips_samples(x, num_groups):
        flat = _samples_flattened(x)
        return torch.ops.quantized.group_norm(
            flat, num_groups, weight, bias, eps, output_scale, output_zero_point
        ).reshape(x.size())
    return torch.ops.quantized.group_norm(x, num_groups, weight, bias, eps, output_scale, output_zero_point)


def instance_norm_guarded(
    x: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    eps: float,
    output_scale: float,
    output_zero_point: int,
) -> torch.Tensor:
    if norm_kernel_skips_samples(x, x.size(1)):
        flat = _samples_flattened(x)
        return torch.ops.quantized.instance_norm(flat, weight, bias, eps, output_scale, output_zero_point).reshape(
            x.size()
        )
    return torch.ops.quantized.instance_norm(x, weight, bias, eps, output_scale, output_zero_point)


def _nodes_inserted_before(before: Node, previous: Node) -> list[Node]:
    """The nodes between ``previous`` and ``before`` (which were adjacent), nested ones included."""
    top = []
    node = before.prev()
    while node != previous:
        top.append(node)
        node = node.prev()
    found = []
    for node in reversed(top):
        found.append(node)
        for block in nested_blocks(node):
            found.extend(walk(block))
    return found


def _guard(
    function: Callable[..., torch.Tensor], names: tuple[str, ...]
) -> Callable[[Graph, Match, Node], list[Value]]:
    def replace(graph: Graph, match: Match, before: Node) -> list[Value]:
        previous = before.prev()
        outputs = insert_scripted(graph, function, [match[name] for name in names], before=before)
        for node in _nodes_inserted_before(before, previous):
            # The guard stands for the model's op: its source line and module, not this file's.
            node.copyMetadata(match.anchor)
        return outputs

    return replace


def _not_yet_guarded(match: Match) -> bool:
    # The guard's own kernel calls must not be guarded again when the pass
    # runs a second time. They are the two branches of an ``if``: one calls
    # the kernel on a reshape of the value the other calls it on.
    owner = match.anchor.owningBlock().owningNode()
    if owner is None or owner.kind() != "prim::If":
        return True
    calls = [[n for n in block.nodes() if n.kind() == match.anchor.kind()] for block in nested_blocks(owner)]
    if len(calls) != 2 or any(len(found) != 1 for found in calls):
        return True
    (on_view,), (direct,) = calls
    view = on_view.inputsAt(0).node()
    return view.kind() != "aten::reshape" or view.inputsAt(0) != direct.inputsAt(0)


NORM_GUARDS = [
    Rewrite(
        name="group_norm_guarded_against_skipped_samples",
        pattern="""graph(%x, %groups, %weight, %bias, %eps, %scale, %zero_point):
            %y = quantized::group_norm(%x, %groups, %weight, %bias, %eps, %scale, %zero_point)
            return (%y)""",
        replacement=_guard(group_norm_guarded, ("x", "groups", "weight", "bias", "eps", "scale", "zero_point")),
        filters=(_not_yet_guarded,),
    ),
    Rewrite(
        name="instance_norm_guarded_against_skipped_samples",
        pattern="""graph(%x, %weight, %bias, %eps, %scale, %zero_point):
            %y = quantized::instance_norm(%x, %weight, %bias, %eps, %scale, %zero_point)
            return (%y)""",
        replacement=_guard(instance_norm_guarded, ("x", "weight", "bias", "eps", "scale", "zero_point")),
        filters=(_not_yet_guarded,),
    ),
]


def _is_tensor_constant(match: Match) -> bool:
    node = match["b"].node()
    return (
        match["b"].type().kind() == "TensorType"
        and node.kind() == "prim::Constant"
        and node.hasAttribute("value")
        and node.kindOf("value") == "t"
        and node.t("value").dim() == 0
    )


def _scalar_as_number(graph: Graph, match: Match, before: Node) -> list[Value]:
    number = insert_constant(graph, match["b"].node().t("value").item(), before=before)
    inputs = [match["a"], number] + ([match["out"]] if match.anchor.kind().endswith("_out") else [])
    return [insert_op(graph, match.anchor.kind(), inputs, before=before, source=match.anchor).output()]


TENSOR_SCALAR_REWRITES = [
    Rewrite(
        name=f"{op}_with_a_number",
        pattern=f"""graph(%a, %b{out}):
            %r = quantized::{op}(%a, %b{out})
            return (%r)""",
        replacement=_scalar_as_number,
        filters=(_is_tensor_constant,),
    )
    for op, out in (("add_scalar_relu", ""), ("add_scalar_relu_out", ", %out"))
]
