"""quantize_rnn: LSTM / GRU modules and their cells into PyTorch's dynamic quantized kernels."""

from passes.rnn.quantize_rnn import RNN_MODULE_CLASSES, is_rnn_module, quantize_rnn, rnn_float_reasons

__all__ = ["quantize_rnn", "rnn_float_reasons", "is_rnn_module", "RNN_MODULE_CLASSES"]
