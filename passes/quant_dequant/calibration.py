"""What calibration left in the observers, checked before qparams are computed (static quantization).

- statistics that hold NaN or an infinity: a ValueError naming the first
  observed value (in forward's order) that saw them, with its module and
  source line;
- observers that saw no data although forward always reaches them: one
  warning listing them (they get the observer's default qparams);
- activations beyond ``qgraph.quant.observer_state.QUANTIZABLE_RANGE``: one
  warning listing them (their qparams come from the whole observed range).

``observed_sites`` lists every observed value of a prepared model where the
model computes it, which the driver also uses to explain a calibration that
failed on non-finite data.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from passes.quant_dequant.calls import is_weight_anywhere
from qgraph.ir import CppModule, Value, getattr_path, method_graph, resolve_path, source_location, walk
from qgraph.quant import observer_state
from qgraph.quant.observers import observer_name

__all__ = [
    "ObservedSite",
    "observed_sites",
    "first_non_finite_site",
    "non_finite_calibration_message",
    "check_calibration",
]


@dataclass(frozen=True)
class ObservedSite:
    """One observed value of a calibrated model, where the model computes it."""

    path: str  # dotted path of the module whose graph observes the value; "" is the model
    module: CppModule
    observer: str  # the ``_observer_N`` submodule of ``module``
    value: Value  # the observed value (the observer's input)
    conditional: bool  # inside an ``if`` or loop (here or around a call on the way from forward)

    def describe(self) -> str:
        """``%x in module 'features.3' (model.py:31)``: what a user finds in their code."""
        where = f"module '{self.path}'" if self.path else "the model"
        node = self.value.node()
        if node.kind() == "prim::Param":
            return f"%{self.value.debugName()}, an input of {where}"
        source = source_location(node)
        described = f"%{self.value.debugName()} in {where}"
        callee = getattr_path(node.inputsAt(0)) if node.kind() == "prim::CallMethod" else None
        if callee:
            # A traced call keeps no source line: the submodule tells where it is.
            described += f", the output of '{'.'.join([self.path, *callee] if self.path else callee)}'"
        return described + (f" ({source})" if source else "")

    def is_weight(self) -> bool:
        call = next(use.user for use in self.value.uses() if observer_name(use.user.output()) == self.observer)
        return is_weight_anywhere(self.module, call.output())


def observed_sites(module: CppModule, method: str = "forward", path: str = "") -> list[ObservedSite]:
    """Every observed value of ``module.<method>``, callees included, in the order forward computes them.

    A value observed in a method called twice is listed once, as
    unconditional if one of its calls is.
    """
    sites: dict[tuple[str, str], ObservedSite] = {}
    visited: set[tuple[str, str, bool]] = set()

    def visit(current: CppModule, name: str, current_path: str, conditional: bool) -> None:
        if (current_path, name, conditional) in visited:
            return
        visited.add((current_path, name, conditional))
        graph = method_graph(current, name)
        self_value = next(graph.inputs())
        for node in walk(graph):
            if node.kind() != "prim::CallMethod":
                continue
            branch = conditional or node.owningBlock().owningNode() is not None
            observer = observer_name(node.output()) if node.outputsSize() == 1 else None
            if observer is not None:
                known = sites.get((current_path, observer))
                if known is None or (known.conditional and not branch):
                    sites[(current_path, observer)] = ObservedSite(
                        current_path, current, observer, node.inputsAt(1), branch
                    )
                continue
            receiver = node.inputsAt(0)
            if receiver == self_value:
                visit(current, node.s("name"), current_path, branch)
                continue
            names = getattr_path(receiver) or []
            target = resolve_path(current, names) if names else None
            if isinstance(target, CppModule):
                visit(target, node.s("name"), ".".join(p for p in [current_path, *names] if p), branch)

    visit(module, method, path, False)
    return list(sites.values())


def first_non_finite_site(module: CppModule, method: str = "forward") -> ObservedSite | None:
    """The first observed value (in forward's order) whose observer's statistics hold NaN or inf."""
    for site in observed_sites(module, method):
        if observer_state.saw_non_finite(site.module.getattr(site.observer)):
            return site
    return None


def non_finite_calibration_message(site: ObservedSite | None, failure: str = "") -> str:
    """What to tell a user whose calibration data held NaN or inf (``failure``: the observer's own error)."""
    if site is not None:
        where = f"the first observed value that saw them is {site.describe()}"
    else:
        where = f"an observer failed on them ({failure})" if failure else "an observer failed on them"
    return f"calibration data holds non-finite values (NaN or inf): {where}; calibrate with finite data"


_LISTED = 10


def _listing(items: list[str]) -> str:
    shown = "; ".join(items[:_LISTED])
    return shown if len(items) <= _LISTED else f"{shown}; and {len(items) - _LISTED} more"


def check_calibration(module: CppModule, method: str = "forward") -> None:
    """Refuse or flag what calibration left the observers of a static model with.

    - statistics that hold NaN or an infinity: ValueError naming the first
      observed value (in forward's order) that saw them, with its module
      and source line; the qparams would be NaN or the histogram unusable;
    - observers that saw no data although forward always reaches them
      (calibration never ran, or fed only empty tensors): one UserWarning
      listing those values; they get the observer's default qparams (scale
      1.0, zero point 0). Observers inside an ``if`` or a loop stay quiet: a
      branch calibration never took (a training-only head, the other side
      of a block class's ``if``) is usually one inference never takes;
    - activations larger than ``QUANTIZABLE_RANGE``: one UserWarning
      listing them (their qparams come from the whole observed range).
    """
    unseen, too_large = [], []
    for site in observed_sites(module, method):
        observer = site.module.getattr(site.observer)
        if observer_state.saw_non_finite(observer):
            raise ValueError(non_finite_calibration_message(site))
        if observer_state.saw_no_data(observer):
            if not site.conditional:
                unseen.append(site.describe())
        elif observer_state.observed_magnitude(observer) > observer_state.QUANTIZABLE_RANGE and not site.is_weight():
            too_large.append(f"{site.describe()}: {observer_state.observed_magnitude(observer):.3g}")
    if unseen:
        warnings.warn(
            f"{len(unseen)} observed value(s) saw no calibration data (calibration never ran the model, or gave "
            "it only empty tensors), so they are quantized with default qparams (scale 1.0, zero point 0): "
            + _listing(unseen),
            UserWarning,
            stacklevel=3,
        )
    if too_large:
        warnings.warn(
            f"{len(too_large)} activation(s) are out of a quantizable range (magnitude above "
            f"{observer_state.QUANTIZABLE_RANGE:.0e}; int8 cannot represent them usefully), so their qparams cover "
            "the whole observed range: " + _listing(too_large),
            UserWarning,
            stacklevel=3,
        )
