"""Turn calibrated observers into quantize / dequantize pairs (convert, first half).

Takes a module prepared by observer insertion and calibrated: every observed
value ``%v`` of a method graph is followed by a call of an ``_observer_N``
submodule of the module owning the graph. Each observer's qparams (from its
``calculate_qparams``) become attributes of that module, named after the
observed value (``<value>_scale_<k>``, ``<value>_zero_point_<k>``,
``<value>_axis_<k>`` for per-channel, ``<value>_scalar_type_<k>``; ``k`` is
the first index free on the module), and the observer call becomes a
quantize / dequantize pair reading them::

    %_observer_1 = prim::GetAttr[name="_observer_1"](%self)
    %x.1 = prim::CallMethod[name="forward"](%_observer_1, %x)
    %y = aten::conv2d(%x.1, ...)

becomes::

    %x_scale_0 : float = prim::GetAttr[name="x_scale_0"](%self)
    %x_zero_point_0 : int = prim::GetAttr[name="x_zero_point_0"](%self)
    %x_scalar_type_0 : int = prim::GetAttr[name="x_scalar_type_0"](%self)
    %x.quant = aten::quantize_per_tensor(%x, %x_scale_0, %x_zero_point_0, %x_scalar_type_0)
    %x.dequant.0 = aten::dequantize(%x.quant)
    %y = aten::conv2d(%x.dequant.0, ...)

Observer submodules are removed. Instances that share a class type share one
rewritten graph; each keeps its own qparams values under the same names.

Before qparams are computed (static quantization), what calibration left
is checked (``check_calibration``): a weight whose observer saw no data (a
branch calibration never took, or no calibration at all) is observed from
the weight itself, as eager convert does; statistics holding NaN or inf are
a ValueError naming the first observed value that saw them; values forward
always computes that saw no data, and activations beyond
``qgraph.quant.observer_state.QUANTIZABLE_RANGE``, are each listed in one
warning.

Dynamic quantization (``QuantType.DYNAMIC``): weights are quantized with
their observer's qparams (the weight observers run here, on the weights, so
no calibration is needed); activations get ``aten::_choose_qparams_per_tensor``
at run time; fp16 observers give ``aten::_saturate_weight_to_fp16`` instead.
Embedding bags observed for weight-only quantization become their quantized
kernels (``embedding_bag.py``).

The graphs are left with their calls: the quant_dequant sequence of
``passes.composite`` then inlines the method and carries quantization
through the ops that need no observer (``propagate.py``), which gives the
``debug=True`` model of convert.
"""

from __future__ import annotations

from typing import Any

import torch

from passes.quant_dequant.calibration import check_calibration
from passes.quant_dequant.calls import invoked_methods, is_weight_anywhere
from passes.quant_dequant.embedding_bag import quantize_embedding_bag
from passes.quant_dequant.nodes import choose_qparams_quant_dequant, dequantize
from passes.quant_dequant.qparams import observer_qparams, qparam_type
from passes.quant_dequant.weights import WeightObservers
from qgraph.ir import (
    TENSOR,
    CppModule,
    Graph,
    Node,
    NodeBuilder,
    Value,
    as_cpp,
    drop_attributes,
    erase_nodes,
    instances_by_type,
    method_graph,
    method_key,
    outputs_of,
    stack_order,
)
from qgraph.quant.observers import is_placeholder, observer_name
from qgraph.quant.quant_type import QuantType, parse_quant_type
from qgraph.quant.scalar_types import is_dtype

__all__ = ["insert_quant_dequant_in_place"]

_INT = torch._C.IntType.get()


class _QuantDequantInserter:
    """State of one run: observers found per method graph, qparams attribute names per observer."""

    def __init__(self, quant_type: QuantType):
        self.quant_type = quant_type
        self.observers: dict[tuple[str, str], list[Node]] = {}
        self.attr_names: dict[Node, dict[str, str]] = {}
        self.observer_attrs: dict[str, set[str]] = {}
        self.doomed: list[Node] = []
        self.instances: dict[str, list[CppModule]] = {}

    # -- observers to quantize / dequantize --------------------------------

    def run(self, module: CppModule, method: str) -> None:
        for callee, name in invoked_methods(module, method):
            self.run(callee, name)
        key = method_key(module, method)
        graph = method_graph(module, method)
        if key in self.observers:
            # Another instance of this class type: the graph is rewritten
            # already, only this instance's qparams values are new.
            for observer in self.observers[key]:
                _, qparams = observer_qparams(module, observer)
                names = self.attr_names[observer]
                for suffix, value in qparams:
                    module.setattr(names[suffix], value)
            return
        found = []
        for node in stack_order(graph):
            for value in outputs_of(node):
                observed_by = observer_name(value)
                if value.type().isSubtypeOf(TENSOR) and observed_by is not None:
                    found.append(node)
                    self.observer_attrs.setdefault(module._type().qualified_name(), set()).add(observed_by)
                    self.doomed.extend([node, node.inputsAt(0).node()])
        if not found:
            return
        self.observers[key] = found
        self_value = next(graph.inputs())
        for observer in found:
            per_channel, qparams = observer_qparams(module, observer)
            original = observer.inputsAt(1)
            names = {}
            for suffix, value in qparams:
                uid = 0
                while module.hasattr(name := f"{original.debugName()}{suffix}_{uid}"):
                    uid += 1
                module._register_attribute(name, qparam_type(value), value)
                # Every instance of the class type gets the slot; one that
                # forward never calls is never visited and keeps these values.
                for instance in self.instances.get(module._type().qualified_name(), []):
                    instance.setattr(name, value)
                names[suffix] = name
            self.attr_names[observer] = names
            self.insert_ops(module, graph, self_value, observer, per_channel, names)

    def insert_ops(
        self,
        module: CppModule,
        graph: Graph,
        self_value: Value,
        observer: Node,
        per_channel: bool,
        names: dict[str, str],
    ) -> None:
        observed = observer.output()
        original = observer.inputsAt(1)
        obs = module.getattr(str(observer_name(observed)))
        cursor = NodeBuilder(graph, after=observer)
        quantize = "aten::quantize_per_channel" if per_channel else "aten::quantize_per_tensor"

        custom_op = obs.getattr("custom_op") if obs.hasattr("custom_op") else None
        if custom_op is not None and is_placeholder(observer.inputsAt(0).type()) and "embedding_bag_" in custom_op:
            if is_weight_anywhere(module, observed):
                quantize_embedding_bag(graph, cursor, observed, custom_op)
            observed.replaceAllUsesWith(original)
            return

        dequant: Node
        if self.quant_type == QuantType.DYNAMIC and is_dtype(obs.getattr("dtype"), torch.float16):
            dequant = cursor.op("aten::_saturate_weight_to_fp16", [observed])
        elif self.quant_type == QuantType.DYNAMIC and not is_weight_anywhere(module, observed):
            if not is_dtype(obs.getattr("dtype"), torch.quint8, torch.qint8):
                observed.replaceAllUsesWith(original)
                return
            dtype = cursor.get_attr(self_value, names["_scalar_type"], _INT)
            dequant = choose_qparams_quant_dequant(cursor, observed, dtype, quantize)
        else:
            inputs = [observed]
            for name in names.values():
                inputs.append(cursor.get_attr(self_value, name, qparam_type(module.getattr(name))))
            quant = cursor.op(quantize, inputs, name=f"{original.debugName()}.quant", type_=TENSOR)
            dequant = dequantize(cursor, quant.output(), original)
        observed.replaceAllUsesWith(original)
        original.replaceAllUsesAfterNodeWith(dequant, dequant.output())

    def remove_observer_calls(self) -> None:
        erase_nodes(self.doomed)
        self.doomed.clear()


def insert_quant_dequant_in_place(
    module: Any, method_name: str = "forward", quant_type: Any = QuantType.STATIC
) -> CppModule:
    """Observers of ``module.<method_name>`` (and what it calls) into quantize / dequantize pairs, on ``module`` itself.

    For a pipeline that cloned the caller's model already. Returns the
    converted module as a ``torch._C.ScriptModule``: a new root (removing
    the observers gives the class types new layouts), after which ``module``
    must not be used.
    """
    quant_type = parse_quant_type(quant_type)
    work = as_cpp(module)
    if not work._has_method(method_name):
        raise ValueError(f"module has no method {method_name!r} to convert")
    weight_observers = WeightObservers()
    if quant_type == QuantType.DYNAMIC:
        weight_observers.run(work, method_name)
    else:
        weight_observers.run(work, method_name, only_unseen=True)
        check_calibration(work, method_name)
    inserter = _QuantDequantInserter(quant_type)
    inserter.instances = instances_by_type(work)
    inserter.run(work, method_name)
    inserter.remove_observer_calls()
    # Dropping the observers rebuilds the module with new class types, hence
    # new method objects: inlining after this must not see call targets whose
    # optimized graphs were cached (by calibration runs) before the rewrite.
    return drop_attributes(work, inserter.observer_attrs)
