"""Insert observer modules after every value that quantization will need qparams for.

Takes a script module (Conv-BN already folded, if wanted: ``fold_conv_bn``),
its graphs cleaned up (``passes.composite.observer_preprocessing_stages``:
functional linear swapped, fork/wait inlined, linear fused, traced
``aten::_convolution`` canonicalised, lists built by ``append`` folded into
their construct) and its class types unshared where qconfigs differ
(``passes.unshare_qconfig_types``), and a ``qconfig_dict``. Leaves, after
each observed value ``%v`` of a method graph,
a call of a fresh observer submodule ``_observer_N`` of the module that owns
the graph; later uses of ``%v`` read the observer's output::

    %x = prim::CallMethod[name="forward"](%conv, %input)
    %y = aten::flatten(%x, %1, %2)

becomes::

    %x = prim::CallMethod[name="forward"](%conv, %input)
    %_observer_3 : MinMaxObserver = prim::GetAttr[name="_observer_3"](%self)
    %x.1 = prim::CallMethod[name="forward"](%_observer_3, %x)
    %y = aten::flatten(%x.1, %1, %2)

and ``flatten``'s output gets no observer: observation passes through
general ops.

The rules are those of PyTorch's own graph-mode prepare (the reference):

- a Tensor (or List[Tensor]) is observed when a quantizable op produces it
  (static mode; also cat/add/mul when their inputs are observed) or a
  quantizable op consumes it; conv/linear/embedding_bag weights get the
  qconfig's weight observer, biases nothing (``_observed_values``);
- ``{linear, conv, batch_norm, add, mul} -> relu``: the relu output is
  observed instead of the value in between (``DELAYED_OBSERVATION``);
- values crossing a method call are observed at the call site, in the
  caller's graph: a callee's graph is shared by every instance of its class
  type, so an observer there would be shared too; the observers are found by
  mapping call-site values to the callee's inputs/outputs;
- a value already observed (an observer output, or an output of a general
  op whose inputs are observed, or a call output the callee observed, or an
  ``if`` output observed in every branch that does not raise) gets no
  second observer;
- instances of one class type get the same observer names; each gets its
  own observer instances.

Where qgraph goes past the reference:

- dynamic mode observes an embedding_bag weight whose qconfig's weight
  observer is a ``PlaceholderObserver`` naming an embedding_bag kernel
  (``custom_op_name="embedding_bag_byte"`` / ``"embedding_bag_4bit"``):
  weight-only quantization needs no calibration, so the dynamic API gives
  the bag what the static API gives (the reference's dynamic API leaves it
  float). Under any other qconfig the bag stays float, as in the reference.
- ``if`` branches observed differently (a conv in one, a float op such as
  ``exp`` or an op with its own observer such as ``relu6`` in the other):
  each branch is observed as its own ops dictate; when the ``if`` result
  wants an observer (a consumer quantizes it, or a branch's quantizable
  producer observes it), a branch whose result is not observed gets an
  observer of its own at the end of the branch, so each branch hands back
  a value quantized with its own range (as two convs would). A result
  defined outside its branch leaves the ``if`` output unobserved, to be
  observed after the ``if``. The ops after such an ``if`` in its block
  that read its result move into each branch first (one copy per branch),
  so they too are observed per side: a head conv after ``conv`` / ``exp``
  branches gets one output range per side instead of one widened by the
  other side (``branches.py``); ifs whose branches agree stay as they are
  (the reference's bits), and a graph grows by at most its own size (a
  thousand nodes at least). The reference raises "branches for `if` should
  return values that are observed consistently".
- ``prim::Loop`` bodies are observed like straight-line code (the reference
  only warns and leaves them float). A loop-carried parameter that a
  quantizable op reads, or that an add/mul/cat combines with a back-edge
  value wanting an observer, is observed at the start of the body: one
  observer sees the value on entry and on every back edge. A back-edge
  value produced in the body that wants an observer uses that same
  observer submodule, so quantizing it at the end of an iteration and
  requantizing it at the start of the next agree exactly. Carried values
  stay float between iterations; loop outputs count as unobserved and get
  an observer after the loop when a consumer wants one::

      %y = prim::Loop(%n, %true, %x)
        block0(%i : int, %x.2 : Tensor):
          %_observer_1 = prim::GetAttr[name="_observer_1"](%self)
          %x.3 = prim::CallMethod[name="forward"](%_observer_1, %x.2)
          %c = prim::CallMethod[name="forward"](%conv, %x.3)
          ... (%c observed by _observer_2)
          %s = aten::add(%c.1, %x.3, %one)
          %_observer_1.1 = prim::GetAttr[name="_observer_1"](%self)
          %s.1 = prim::CallMethod[name="forward"](%_observer_1.1, %s)
          -> (%true, %s.1)

- A traced call of a ReLU module whose result was unused returns None; it
  never takes the observation of the conv/add/mul before it.

A value that ops under different qconfigs read (a model input, a float op's
output, a submodule's output) is observed once, where it is produced, with
the first observer found in this order: the one its producer asks for (a
quantizable op of the graph, under the qconfig of the module owning the
graph; a submodule call, under that submodule's qconfig); the one an op of
the owning graph itself asks for by reading it (same qconfig); the one the
first submodule call, in program order, asks for by reading it (under the
qconfig of that submodule; calls whose qconfig is None ask for nothing).
Every quantized consumer reads that one quantized value (each keeps its own
weight observer, per-tensor or per-channel); a consumer whose qconfig is
None reads the dequantized float value and runs in float. The reference does
the same when one side is None and raises "Expecting all values in the graph
only configured with one observer" when two qconfigs would observe it.

The work is in three objects: ``ObserverAnalysis`` (``analysis.py``) reads
what the module call graph says of each value; ``ObserverPlacement``
(``placement.py``) walks the method and decides which values get which
observer, changing nothing; ``insertion.py`` puts the observers in. Cost:
one walk per method graph for the analysis (callees first, shared graphs
once) and one walk per call site for the placement, since whether a
callee's inputs arrive observed depends on the caller.
"""

from __future__ import annotations

from typing import Any

from passes.observe.branches import place_observers
from passes.observe.insertion import insert_placed_observers
from qgraph.ir import CppModule, as_cpp
from qgraph.quant.mapping_resolver import MappingResolver
from qgraph.quant.qconfig import is_scripted_qconfig, resolve_qconfigs, script_qconfig
from qgraph.quant.qconfig_mapping import is_qconfig_mapping, map_qconfigs
from qgraph.quant.quant_type import parse_quant_type

__all__ = ["insert_observers_in_place"]


def _scripted_one(qconfig: Any) -> Any:
    return qconfig if qconfig is None or is_scripted_qconfig(qconfig) else script_qconfig(qconfig)


def _scripted(qconfig_dict: Any) -> Any:
    if is_qconfig_mapping(qconfig_dict):
        return map_qconfigs(qconfig_dict, _scripted_one)
    return {key: _scripted_one(qconfig) for key, qconfig in qconfig_dict.items()}


def insert_observers_in_place(module: Any, method_name: str, qconfig_dict: Any, quant_type: Any) -> CppModule:
    """Observers into ``module`` itself, whose graphs are cleaned up and whose types are unshared already.

    The insert-observers step of ``passes.composite``, after the observer
    preprocessing steps and ``unshare_qconfig_types``. ``qconfig_dict`` may
    hold QConfigs or scripted QConfigs, or be a ``QConfigMapping``, whose
    op entries give single ops a qconfig of their own; ``quant_type`` is a
    ``QuantType`` or ``"static"`` / ``"dynamic"``. Returns ``module``.
    """
    root = as_cpp(module)
    if not root._has_method(method_name):
        raise ValueError(f"module {root._type().qualified_name()} has no method {method_name!r}")
    kind = parse_quant_type(quant_type)
    scripted = _scripted(qconfig_dict)
    qconfigs = resolve_qconfigs(root, scripted)
    op_qconfigs = (
        MappingResolver(root, scripted, method_name).op_qconfigs_by_node() if is_qconfig_mapping(scripted) else {}
    )
    insert_placed_observers(place_observers(root, qconfigs, kind, method_name, op_qconfigs))
    return root
