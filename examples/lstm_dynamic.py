"""Dynamically quantize a small LSTM language model with qgraph.

    python examples/lstm_dynamic.py [--dtype int8|fp16]

The model (embedding, 2-layer LSTM, linear decoder) is scripted; qgraph
quantizes the LSTM to ``aten::quantized_lstm`` with weights prepacked once
and the decoder to ``quantized::linear_dynamic``, in one call to
``qgraph.quantize_dynamic_jit``. The script prints the saved size, the
latency on one thread and the largest output difference, each against the
fp32 model, and checks the outputs against eager
``torch.ao.quantization.quantize_dynamic``.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
import warnings

import torch
import torch.nn as nn
from models import LSTMLanguageModel
from torch.ao.quantization import default_dynamic_qconfig, float16_dynamic_qconfig, quantize_dynamic

import qgraph

QCONFIGS = {"int8": (torch.qint8, default_dynamic_qconfig), "fp16": (torch.float16, float16_dynamic_qconfig)}


def quantize(scripted: torch.jit.ScriptModule, qconfig) -> torch.jit.ScriptModule:
    return qgraph.quantize_dynamic_jit(scripted, {"": qconfig})


def saved_size(model: torch.jit.ScriptModule) -> int:
    buffer = io.BytesIO()
    torch.jit.save(model, buffer)
    return len(buffer.getvalue())


def latency_ms(models: dict, tokens: torch.Tensor, repeats: int = 15) -> dict[str, float]:
    """Median milliseconds per call, the models run in alternation."""
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for model in models.values():
            model(tokens)
        for _ in range(repeats):
            for name, model in models.items():
                start = time.perf_counter()
                model(tokens)
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=sorted(QCONFIGS), default="int8")
    args = parser.parse_args()
    # PyTorch's notices that its quantized dtypes and torch.ao.quantization are
    # deprecated (see the README) would bury the figures.
    warnings.filterwarnings("ignore", message=".*quantiz.*deprecated", category=UserWarning)
    warnings.filterwarnings("ignore", message="torch.ao.quantization is deprecated", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message="The .grad attribute of a Tensor", category=UserWarning)
    torch.set_num_threads(1)
    torch.manual_seed(0)

    dtype, qconfig = QCONFIGS[args.dtype]
    model = LSTMLanguageModel().eval()
    tokens = torch.randint(0, 2000, (35, 4))  # 35 steps, batch 4
    scripted = torch.jit.script(model)
    quantized = quantize(scripted, qconfig)
    eager = quantize_dynamic(model, {nn.LSTM, nn.Linear}, dtype=dtype)

    with torch.no_grad():
        reference = scripted(tokens)
        output = quantized(tokens)
        same_as_eager = torch.equal(output, eager(tokens))
    kinds = {node.kind() for node in quantized.graph.nodes()}
    print(f"dynamic {args.dtype} LSTM language model (vocab 2000, embed 128, hidden 256, 2 layers)")
    print(f"  quantized ops: {sorted(k for k in kinds if 'quantized' in k)}")
    print(f"  saved size: fp32 {saved_size(scripted) / 1e6:.2f} MB, {args.dtype} {saved_size(quantized) / 1e6:.2f} MB")
    times = latency_ms({"fp32": scripted, "qgraph": quantized, "eager": eager}, tokens)
    print(
        f"  latency (1 thread, median): fp32 {times['fp32']:.2f} ms, qgraph {times['qgraph']:.2f} ms, "
        f"eager quantize_dynamic {times['eager']:.2f} ms"
    )
    print(f"  max |output - fp32 output|: {(output - reference).abs().max().item():.5f}")
    print(f"  equal to eager quantize_dynamic: {same_as_eager}")


if __name__ == "__main__":
    main()
