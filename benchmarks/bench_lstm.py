"""Dynamic quantization: an LSTM language model and a linear-heavy MLP, fp32 vs int8.

In one process, one thread, with interleaved repeats and medians:
- LSTM language model (embedding 512, 2-layer LSTM with hidden 512, linear
  decoder to 10k words; 35 steps, batch 4): fp32 scripted, qgraph's
  ``quantize_dynamic_jit`` and eager ``torch.ao.quantization.quantize_dynamic``; the
  reference's graph mode leaves LSTMs in float, so eager is the comparison.
- MLP (4 x Linear(1024, 1024) + ReLU, batch 16): fp32 scripted, qgraph's
  ``quantize_dynamic_jit``, the reference's ``quantize_dynamic_jit`` and eager
  ``quantize_dynamic``.
Each table gives median latency per call, the ratio to qgraph's model, and
whether the int8 outputs equal eager's (LSTM) or the reference's (MLP).

Run: python benchmarks/bench_lstm.py [--repeats N]
"""

from __future__ import annotations

import argparse
import warnings

import torch
import torch.nn as nn
from common import interleaved, latency, median, ms, table  # noqa: E402  (benchmarks/ is the script's folder)
from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic
from torch.ao.quantization import quantize_dynamic_jit as ref_quantize_dynamic_jit

from examples.models import LSTMLanguageModel
from qgraph import quantize_dynamic_jit

QCONFIG_DICT = {"": default_dynamic_qconfig}


class MLP(nn.Module):
    def __init__(self, width: int = 1024, depth: int = 4):
        super().__init__()
        self.layers = nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(width, width), nn.ReLU())])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def qgraph_dynamic(scripted: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    return quantize_dynamic_jit(scripted, QCONFIG_DICT)


def measure(contenders: dict, example: torch.Tensor, repeats: int, calls: int) -> dict[str, float]:
    runs = {name: latency(model, example, calls) for name, model in contenders.items()}
    times = interleaved(runs, repeats=repeats)
    return {name: median(values) / calls for name, values in times.items()}


def report(title: str, per_call: dict[str, float], equal: str) -> None:
    base = per_call["qgraph int8"]
    rows = [(name, ms(seconds), f"{seconds / base:.2f}") for name, seconds in per_call.items()]
    print(f"\n{title}")
    print(table(rows, ("model", "median latency", "vs qgraph int8")))
    print(equal)


def bench_lstm(repeats: int) -> None:
    torch.manual_seed(0)
    model = LSTMLanguageModel(vocab=10000, embed=512, hidden=512).eval()
    tokens = torch.randint(0, 10000, (35, 4))
    scripted = torch.jit.script(model)
    ours = qgraph_dynamic(scripted)
    eager = quantize_dynamic(model, {nn.LSTM, nn.Linear}, dtype=torch.qint8)
    with torch.no_grad():
        same = torch.equal(ours(tokens), eager(tokens))
    per_call = measure(
        {"fp32 (scripted)": scripted, "qgraph int8": ours, "eager quantize_dynamic int8": eager},
        tokens,
        repeats,
        calls=2,
    )
    ratio = per_call["qgraph int8"] / per_call["eager quantize_dynamic int8"]
    report(
        "LSTM language model (2-layer LSTM, hidden 512, vocab 10k; 35 steps x batch 4), 1 thread",
        per_call,
        f"qgraph int8 / eager quantize_dynamic int8 latency: {ratio:.2f} (below 1: qgraph faster)\n"
        f"qgraph int8 output equals eager quantize_dynamic's: {same}",
    )


def bench_mlp(repeats: int) -> None:
    torch.manual_seed(0)
    model = MLP().eval()
    x = torch.randn(16, 1024)
    scripted = torch.jit.script(model)
    ours = quantize_dynamic_jit(scripted, QCONFIG_DICT)
    reference = ref_quantize_dynamic_jit(scripted, QCONFIG_DICT)
    eager = quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    with torch.no_grad():
        same = torch.equal(ours(x), reference(x))
    per_call = measure(
        {
            "fp32 (scripted)": scripted,
            "qgraph int8": ours,
            "reference quantize_dynamic_jit int8": reference,
            "eager quantize_dynamic int8": eager,
        },
        x,
        repeats,
        calls=20,
    )
    report(
        "MLP (4 x Linear 1024 + ReLU; batch 16), 1 thread",
        per_call,
        f"qgraph int8 output equals the reference quantize_dynamic_jit's: {same}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    # PyTorch's deprecation notices for its quantization APIs and dtypes.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*quantiz.*deprecated", category=UserWarning)
    warnings.filterwarnings("ignore", message="The .grad attribute of a Tensor", category=UserWarning)
    torch.set_num_threads(1)
    bench_lstm(args.repeats)
    bench_mlp(args.repeats)


if __name__ == "__main__":
    main()
