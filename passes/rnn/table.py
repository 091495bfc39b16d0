"""The RNN ops dynamic quantization rewrites, one entry per float op overload, and the names it stores.

``params`` is the pattern input holding the weights (the weights list of a
fused op, ``weight_ih`` of a cell, the weight of a traced cell's linear);
``owner`` is the module class the weights must belong to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from qgraph.pattern import Match

__all__ = [
    "RNN_MODULE_CLASSES",
    "FLOAT_REASON_ATTR",
    "PACKED_CELL_PARAMS",
    "PACKED_WEIGHT",
    "RnnOp",
    "TABLE",
    "RNN_KINDS",
    "QUANTIZED_FUSED",
    "QUANTIZED_CELL",
    "overload_is",
]

nn = torch.nn

# Classes whose instances this pass owns; the observer-insertion pass leaves
# their graphs alone (a traced cell's ``aten::linear`` is the cell's math).
RNN_MODULE_CLASSES = (nn.LSTM, nn.GRU, nn.LSTMCell, nn.GRUCell, nn.RNNCell, nn.RNN)

FLOAT_REASON_ATTR = "_rnn_float_reason"
PACKED_CELL_PARAMS = "_packed_cell_params"
PACKED_WEIGHT = {"weight_ih": "_packed_weight_ih", "weight_hh": "_packed_weight_hh"}

_FUSED_ARGS = "%has_biases, %num_layers, %dropout, %train, %bidirectional"


@dataclass(frozen=True)
class RnnOp:
    name: str
    overload: str
    pattern: str
    owner: tuple[type, ...]
    params: str


TABLE: tuple[RnnOp, ...] = (
    RnnOp(
        name="lstm",
        overload="aten::lstm.input",
        pattern=f"""graph(%input, %hx, %params, {_FUSED_ARGS}, %batch_first):
            %out, %h, %c = aten::lstm(%input, %hx, %params, {_FUSED_ARGS}, %batch_first)
            return (%out, %h, %c)""",
        owner=(nn.LSTM,),
        params="params",
    ),
    RnnOp(
        name="lstm_packed_sequence",
        overload="aten::lstm.data",
        pattern=f"""graph(%data, %batch_sizes, %hx, %params, {_FUSED_ARGS}):
            %out, %h, %c = aten::lstm(%data, %batch_sizes, %hx, %params, {_FUSED_ARGS})
            return (%out, %h, %c)""",
        owner=(nn.LSTM,),
        params="params",
    ),
    RnnOp(
        name="gru",
        overload="aten::gru.input",
        pattern=f"""graph(%input, %hx, %params, {_FUSED_ARGS}, %batch_first):
            %out, %h = aten::gru(%input, %hx, %params, {_FUSED_ARGS}, %batch_first)
            return (%out, %h)""",
        owner=(nn.GRU,),
        params="params",
    ),
    RnnOp(
        name="gru_packed_sequence",
        overload="aten::gru.data",
        pattern=f"""graph(%data, %batch_sizes, %hx, %params, {_FUSED_ARGS}):
            %out, %h = aten::gru(%data, %batch_sizes, %hx, %params, {_FUSED_ARGS})
            return (%out, %h)""",
        owner=(nn.GRU,),
        params="params",
    ),
    RnnOp(
        name="lstm_cell",
        overload="aten::lstm_cell",
        pattern="""graph(%input, %hx, %w_ih, %w_hh, %b_ih, %b_hh):
            %h, %c = aten::lstm_cell(%input, %hx, %w_ih, %w_hh, %b_ih, %b_hh)
            return (%h, %c)""",
        owner=(nn.LSTMCell,),
        params="w_ih",
    ),
    *(
        RnnOp(
            name=name,
            overload=f"aten::{name}",
            pattern=f"""graph(%input, %hx, %w_ih, %w_hh, %b_ih, %b_hh):
                %h = aten::{name}(%input, %hx, %w_ih, %w_hh, %b_ih, %b_hh)
                return (%h)""",
            owner=owner,
            params="w_ih",
        )
        for name, owner in (
            ("gru_cell", (nn.GRUCell,)),
            ("rnn_tanh_cell", (nn.RNNCell,)),
            ("rnn_relu_cell", (nn.RNNCell,)),
        )
    ),
    # Last: a traced cell's decomposition. Only linears on a cell's own
    # weight_ih / weight_hh match (see _linear_of_traced_cell).
    RnnOp(
        name="traced_cell_linear",
        overload="aten::linear",
        pattern="""graph(%input, %weight, %bias):
            %out = aten::linear(%input, %weight, %bias)
            return (%out)""",
        owner=(nn.LSTMCell, nn.GRUCell, nn.RNNCell),
        params="weight",
    ),
)

QUANTIZED_FUSED = {"lstm": "aten::quantized_lstm", "gru": "aten::quantized_gru"}
QUANTIZED_CELL = {
    "lstm_cell": "quantized::quantized_lstm_cell_dynamic",
    "gru_cell": "quantized::quantized_gru_cell_dynamic",
    "rnn_tanh_cell": "quantized::quantized_rnn_tanh_cell_dynamic",
    "rnn_relu_cell": "quantized::quantized_rnn_relu_cell_dynamic",
}

RNN_KINDS = tuple({op.overload.split(".")[0] for op in TABLE})


def overload_is(overload: str) -> Callable[[Match], bool]:
    def check(match: Match) -> bool:
        return match.anchor.schema().split("(", 1)[0] == overload

    check.__name__ = f"overload_is({overload})"
    return check
