"""Reading an RNN op: whose weights it runs on, and whether this pass can rewrite it.

The weights of an RNN op are found through the ``prim::GetAttr`` chain from
``%self`` (``_flat_weights``, a ``prim::ListConstruct`` of weight reads, or
a cell's ``weight_ih`` / ``weight_hh``), so an RNN op inlined into a
parent's graph is read too: its owner is the submodule at the chain's
``suffix`` below each instance sharing the graph. ``decide`` looks at every
RNN op of one graph before anything is rewritten, and says which to
rewrite and which stay float for a reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from passes.rnn.plans import Plan, is_tagged_reason
from passes.rnn.table import PACKED_WEIGHT, TABLE, RnnOp, overload_is
from qgraph.ir import CppModule, Graph, Node, NodeIndex, Value, getattr_path, is_constant, is_instance_of, resolve_path
from qgraph.pattern import Match, compile_pattern, match_at

__all__ = ["Site", "Context", "Decision", "decide", "sites_in", "join", "weight_tensors"]


@dataclass
class Site:
    """An RNN op found in a graph: its weights' owner, relative to ``%self``."""

    op: RnnOp
    suffix: tuple[str, ...]
    reason: str | None = None  # why it cannot be rewritten, if it cannot


def _weights_suffix(value: torch._C.Value) -> tuple[tuple[str, ...], list[list[str]]] | None:
    """Owner path of the weights in ``value`` and each weight's attribute chain."""
    chain = getattr_path(value)
    if chain:
        return tuple(chain[:-1]), [chain]
    node = value.node()
    if node.kind() != "prim::ListConstruct":
        return None
    found = [getattr_path(v) for v in node.inputs()]
    chains = [chain for chain in found if chain]
    if not chains or len(chains) != len(found):
        return None
    owners = {tuple(c[:-1]) for c in chains}
    if len(owners) != 1:
        return None
    return owners.pop(), chains


def _site_of(op: RnnOp, match: Match) -> Site | None:
    if op.name == "traced_cell_linear":
        return _traced_cell_site(op, match)
    found = _weights_suffix(match[op.params])
    if found is None:
        return None  # weights not read from a module attribute: not a module's RNN
    suffix, _ = found
    site = Site(op, suffix)
    if op.params == "params":
        flags = ("has_biases", "num_layers", "bidirectional")
        loose = [name for name in flags if not is_constant(match[name])]
        if loose:
            site.reason = f"{op.overload} with non-constant {', '.join(loose)}"
    else:
        w_hh = getattr_path(match["w_hh"])
        w_ih = getattr_path(match["w_ih"]) or []
        if w_ih[-1:] != ["weight_ih"] or w_hh is None or w_hh != [*suffix, "weight_hh"]:
            site.reason = f"{op.overload} whose weights are not the cell's weight_ih / weight_hh"
    return site


def _traced_cell_site(op: RnnOp, match: Match) -> Site | None:
    weight = getattr_path(match["weight"])
    if not weight or weight[-1] not in PACKED_WEIGHT:
        return None
    suffix = tuple(weight[:-1])
    bias_name = "bias_" + weight[-1].removeprefix("weight_")
    bias = match["bias"]
    if bias.type().kind() != "NoneType" and getattr_path(bias) != [*suffix, bias_name]:
        return Site(op, suffix, reason=f"traced cell linear on {weight[-1]} with a bias other than {bias_name}")
    return Site(op, suffix)


@dataclass
class Context:
    """The instances whose graphs are being rewritten, and what was decided for each RNN."""

    root: CppModule
    hosts: list[str]
    plans: dict[str, Plan]
    slots: set[tuple[str, str]]
    packed: dict[tuple[str, str], Any] = field(default_factory=dict)
    sites: dict[Any, Site] = field(default_factory=dict)

    def owners(self, site: Site) -> list[str]:
        return [join(host, site.suffix) for host in self.hosts]


def join(host: str, suffix: tuple[str, ...]) -> str:
    return ".".join(part for part in (host, *suffix) if part)


def _owner_plan(ctx: Context, owner: str, op: RnnOp) -> Plan | None:
    plan = ctx.plans.get(owner)
    if plan is None:
        return None
    module = resolve_path(ctx.root, owner)
    return plan if is_instance_of(module, *op.owner) else None


def _shape_problem(ctx: Context, op: RnnOp, match: Match, site: Site) -> str | None:
    if op.params != "params":
        return None
    layers = match.constant("num_layers")
    directions = 2 if match.constant("bidirectional") else 1
    per_cell = 4 if match.constant("has_biases") else 2
    for owner in ctx.owners(site):
        weights = weight_tensors(ctx.root, owner, site, match[op.params])
        if len(weights) == layers * directions * (per_cell + 1):
            return "LSTM with proj_size > 0: the quantized LSTM kernels have no projection"
        if len(weights) != layers * directions * per_cell:
            return f"{op.overload} with {len(weights)} weights for {layers} layer(s) x {directions} direction(s)"
        if any(w.dtype != torch.float32 for w in weights):
            return "weights are not float32"
    return None


def weight_tensors(root: CppModule, owner: str, site: Site, value: Value) -> list[torch.Tensor]:
    """The weight tensors an RNN op reads, of the instance at ``owner``."""
    suffix_and_chains = _weights_suffix(value)
    assert suffix_and_chains is not None, "a site's weights were read already"
    _, chains = suffix_and_chains
    module = resolve_path(root, owner)
    found = []
    for chain in chains:
        item = resolve_path(module, chain[len(site.suffix) :])
        found.extend(item if isinstance(item, list) else [item])
    return found


@dataclass
class Decision:
    """What to do with one RNN op: rewrite it at ``site``, or leave it float for ``reason``."""

    site: Site | None = None
    reason: str | None = None  # why it stays float; tagged on the op for the float-op report
    tag: bool = False
    record_on: list[str] = field(default_factory=list)  # instances that say why they stay float


def _decision(ctx: Context, op: RnnOp, match: Match) -> Decision | None:
    """The decision for a matched op of ``op``'s overload; None for an op this pass leaves alone."""
    site = _site_of(op, match)
    if site is None:
        return None
    plans = [_owner_plan(ctx, owner, op) for owner in ctx.owners(site)]
    if any(p is None for p in plans):
        return None
    if any(p.dtype is None for p in plans):  # type: ignore[union-attr]
        # Unsharing gave the owners of one graph one mode, so one reason.
        reason = plans[0].reason  # type: ignore[union-attr]
        return Decision(reason=reason, tag=is_tagged_reason(reason))
    if site.reason is None:
        site.reason = _shape_problem(ctx, op, match, site)
    if site.reason is not None:
        return Decision(reason=site.reason, tag=True, record_on=ctx.owners(site))
    return Decision(site=site)


def _rnn_ops(index: NodeIndex) -> Iterator[tuple[RnnOp, Match]]:
    """Every RNN op of the graph ``index`` covers, with the table entry it matches, in table order."""
    for op in TABLE:
        pattern = compile_pattern(op.pattern)
        for node in index.of_kind(pattern.anchor.kind()):
            match = match_at(pattern, node)
            if match is not None and overload_is(op.overload)(match):
                yield op, match


def decide(ctx: Context, index: NodeIndex) -> list[tuple[Node, Decision]]:
    """The decision for every RNN op of the graph ``index`` covers, in table order."""
    decisions = []
    for op, match in _rnn_ops(index):
        decision = _decision(ctx, op, match)
        if decision is not None:
            decisions.append((match.anchor, decision))
    return decisions


def sites_in(graph: Graph) -> list[tuple[RnnOp, Site]]:
    """RNN ops of ``graph`` whose weights come from a module, with the op they match."""
    found = []
    for op, match in _rnn_ops(NodeIndex(graph)):
        site = _site_of(op, match)
        if site is not None:
            found.append((op, site))
    return found
