"""Which ops a quantized model still runs in float, and why.

``float_op_report(model)`` analyses a model after convert (finalized and
frozen, or the ``debug=True`` model) and lists every op that computes on
float tensors, with the module it came from, its source line and one of four
reasons:

- ``no qconfig``: the op belongs to a module whose effective qconfig is None
  (the ``qconfig_dict`` rule of ``qgraph.quant.qconfig.qconfig_for_path``: the
  longest matching prefix wins; known only when the ``qconfig_dict`` is
  passed in);
- ``unsupported op``: no quantized kernel or pattern exists for the op kind
  (``aten::exp``, ``aten::softmax``, ``aten::matmul``, ...), or for this use
  of it (an LSTM with ``proj_size > 0`` under dynamic quantization);
- ``unobserved input``: the op could run quantized, but its input is a float
  tensor (a model input nobody observed, the output of a float op, ...);
- ``kept in float by a safety rule``: a known PyTorch kernel bug makes the
  quantized op unsafe for this op's arguments, so convert's
  keep-unsafe-convs-in-float stage leaves it in float (a grouped conv on fbgemm's
  broken groupwise path: 2 or 4 channels per group, a channel count above 8
  that is not a multiple of 8, 3x3 kernel, padding 1, ...).

Convert records the ops it leaves in float on purpose (the safety rules, and
RNNs that dynamic quantization cannot handle) in the model, with their
reason and module (``qgraph.quant.float_ops``); those ops are reported from
their records, every other op from the graph. A model made with
``lowering="onednn"`` holds no quantized dtype to tell integer code from
float code by, so that lowering records every op it leaves in float, and the
report lists exactly those records (with ``no qconfig`` where the
``qconfig_dict`` switched the op's module off).

The report is computed on demand from the model, so convert keeps returning
just the model (as the reference does) and a model loaded back with
``torch.jit.load`` can be analysed as well (there the module of an op is
known only from its record: loading drops the graph's module call stacks)::

    report = float_op_report(quantized, qconfig_dict)
    print(report.format())

    4 ops left in float
    module   op              source           reason             detail
    ------   -------------   --------------   ----------------   -----------------------------
    head     aten::exp       model.py:31      unsupported op     no quantized kernel for aten::exp
    ...

Which values are quantized is ``qgraph.quant.quantized_values``:
quantize ops' results, quantized kernels' quantized results, and what shape
and value ops, lists, tuples, ``if`` and loops make of them. Dynamic
quantization keeps activations in float by design, so for
``QuantType.DYNAMIC`` only the ops dynamic quantization handles (linear,
LSTM/GRU and their cells, embedding_bag), the RNN ops it has no kernel
for (``nn.RNN``) and the convs it leaves in float are reported;
``detected_quant_type`` tells the two kinds of model apart by their ops.

A model that is not quantized (no quantize op, no quantized op) or only
prepared (it holds observers) gets no entries: ``FloatOpReport.state``
says which, and ``format`` says so in one line.

The report is put together from three modules: ``qgraph.report.analysis``
(the walk of the model and the report), ``qgraph.report.reasons`` (why an
op is float) and ``qgraph.report.state`` (what the model is).
"""

from qgraph.quant.float_ops import NO_QCONFIG, SAFETY_RULE, UNOBSERVED_INPUT, UNSUPPORTED_OP
from qgraph.report.analysis import FloatOp, FloatOpReport, float_op_report
from qgraph.report.reasons import DYNAMIC_QUANTIZABLE, STATIC_QUANTIZABLE
from qgraph.report.state import NOT_QUANTIZED, PREPARED, QUANTIZED, detected_quant_type, quantization_state

__all__ = [
    "FloatOp",
    "FloatOpReport",
    "float_op_report",
    "NO_QCONFIG",
    "UNSUPPORTED_OP",
    "UNOBSERVED_INPUT",
    "SAFETY_RULE",
    "QUANTIZED",
    "PREPARED",
    "NOT_QUANTIZED",
    "quantization_state",
    "detected_quant_type",
    "STATIC_QUANTIZABLE",
    "DYNAMIC_QUANTIZABLE",
]
