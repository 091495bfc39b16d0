"""Int8 latency against ONNX Runtime: qgraph's oneDNN lowering, its reference lowering, PyTorch, fp32.

For torchvision's ResNet-18, ResNet-50, MobileNetV2, MobileNetV3-Large,
ShuffleNetV2 x1.0 and EfficientNet-B0 (random weights, BatchNorm statistics
re-estimated on random batches as a trained model has them) and a ViT-B/16
transformer encoder block (197 tokens), one table per model with, for
each of these:

- fp32 TorchScript (scripted, frozen);
- reference int8: ``torch.ao.quantization.quantize_jit`` with the x86
  qconfig on the x86 engine, and with the onednn qconfig on the onednn
  engine (a scripted model the reference cannot quantize is traced);
- qgraph ``lowering="reference"`` (x86 qconfig: the reference's bits);
- qgraph ``lowering="onednn"`` (onednn qconfig: full 8-bit activations);
- ONNX Runtime static int8 (QDQ, per-channel weights, MinMax), with int8
  activations (S8S8, ``quantize_static``'s default, which the goals are
  compared against) and with uint8 activations (U8S8);

the latency (1 thread, batch 1; CPU time of the process by default, as a
shared machine's load makes wall time swing; wall time beside it), the
ratio to each ONNX Runtime model, and the output SQNR against the fp32
model on held-out random inputs. Contenders run in interleaved rounds and
the table gives medians. Nothing here asserts a time.

    python benchmarks/bench_onednn.py [--model NAME ...] [--rounds N] [--profile]

``--profile`` adds, for the oneDNN-lowered model, the ops its time goes
to (``torch.autograd.profiler`` on the TorchScript model).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable

import onnxruntime_int8  # noqa: E402  (benchmarks/ is the script's folder)
import torch
from common import ROOT, table  # noqa: E402
from torch.ao.quantization import get_default_qconfig
from torch.ao.quantization import quantize_jit as reference_quantize_jit

import qgraph
from examples.models import EncoderBlock

CNNS = ("resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_large", "shufflenet_v2_x1_0", "efficientnet_b0")
MODELS = (*CNNS, "encoder")
# Goals of the oneDNN lowering (issue 13), against ORT's default (S8S8).
TIGHT_GOAL = {"mobilenet_v2": 0.8, "resnet18": 0.8}
REFERENCE_SPEEDUP_GOAL = {"mobilenet_v2", "mobilenet_v3_large", "shufflenet_v2_x1_0", "efficientnet_b0"}
FP32, REF_X86, REF_ONEDNN = "fp32 TorchScript (frozen)", "reference int8 (x86)", "reference int8 (onednn engine)"
QGRAPH_REF, QGRAPH_ONEDNN = 'qgraph lowering="reference"', 'qgraph lowering="onednn"'
ORT = {kind: f"ONNX Runtime int8 {kind}" for kind in onnxruntime_int8.ACTIVATION_TYPES}


def build(name: str, generator: torch.Generator) -> tuple[torch.nn.Module, tuple[int, ...]]:
    if name == "encoder":
        return EncoderBlock().eval(), (1, 197, 768)
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from helpers.torchvision_models import import_torchvision, reestimate_batchnorm

    model = getattr(import_torchvision().models, name)(weights=None)
    batches = [torch.randn(4, 3, 224, 224, generator=generator) for _ in range(16)]
    return reestimate_batchnorm(model, batches), (1, 3, 224, 224)


def calibrate(model, batches) -> None:
    with torch.no_grad():
        for batch in batches:
            model(batch)


def _reference(model, qconfig_name: str, batches) -> Callable:
    torch.backends.quantized.engine = qconfig_name
    qconfig = {"": get_default_qconfig(qconfig_name)}
    try:
        quantized = reference_quantize_jit(torch.jit.script(model), qconfig, calibrate, [batches])
    except RuntimeError:
        # The reference fails on some scripted models (EfficientNet's stochastic depth); it traces them.
        quantized = reference_quantize_jit(torch.jit.trace(model, batches[0][:1]), qconfig, calibrate, [batches])
    return _on_engine(quantized, qconfig_name)


def _on_engine(model, engine: str) -> Callable:
    def run(x):
        torch.backends.quantized.engine = engine
        return model(x)

    return run


def contenders(name: str, model, shape, batches, samples) -> dict[str, Callable]:
    scripted = torch.jit.script(model)
    runs: dict[str, Callable] = {FP32: torch.jit.freeze(torch.jit.script(model))}
    runs[REF_X86] = _reference(model, "x86", batches)
    runs[REF_ONEDNN] = _reference(model, "onednn", batches)
    torch.backends.quantized.engine = "x86"
    x86 = {"": get_default_qconfig("x86")}
    runs[QGRAPH_REF] = _on_engine(qgraph.quantize_jit(scripted, x86, calibrate, [batches]), "x86")
    onednn = {"": get_default_qconfig("onednn")}
    runs[QGRAPH_ONEDNN] = qgraph.quantize_jit(scripted, onednn, calibrate, [batches], lowering="onednn")
    if onnxruntime_int8.available():
        exported = onnxruntime_int8.OrtModels(model, torch.zeros(shape))
        for kind, label in ORT.items():
            runs[label] = exported.int8(kind, samples)
    return runs


def sqnr(reference: torch.Tensor, other: torch.Tensor) -> float:
    noise = (reference - other).pow(2).sum()
    return float("inf") if noise == 0 else float(10 * torch.log10(reference.pow(2).sum() / noise))


def measure(runs: dict[str, Callable], x: torch.Tensor, rounds: int) -> dict[str, tuple[float, float]]:
    """(CPU seconds, wall seconds) per call of each contender: medians over interleaved rounds."""
    with torch.no_grad():
        calls = {}
        for label, run in runs.items():
            for _ in range(3):
                run(x)  # the first calls pack weights and let TorchScript optimize
            start = time.process_time()
            run(x)
            calls[label] = max(3, int(0.3 / max(time.process_time() - start, 1e-4)))
        cpu: dict[str, list[float]] = {label: [] for label in runs}
        wall: dict[str, list[float]] = {label: [] for label in runs}
        for _ in range(rounds):
            for label, run in runs.items():
                cpu_start, wall_start = time.process_time(), time.perf_counter()
                for _ in range(calls[label]):
                    run(x)
                cpu[label].append((time.process_time() - cpu_start) / calls[label])
                wall[label].append((time.perf_counter() - wall_start) / calls[label])
    return {label: (statistics.median(cpu[label]), statistics.median(wall[label])) for label in runs}


def bench_model(name: str, rounds: int, profile: bool) -> list[str]:
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model, shape = build(name, generator)
    batches = [torch.randn(2, *shape[1:], generator=generator) for _ in range(4)]
    samples = [sample.unsqueeze(0) for batch in batches for sample in batch]
    held_out = [torch.randn(shape, generator=generator) for _ in range(8)]
    torch.set_num_threads(1)
    runs = contenders(name, model, shape, batches, samples)
    with torch.no_grad():
        expected = torch.cat([model(x) for x in held_out])
        quality = {label: sqnr(expected, torch.cat([run(x) for x in held_out])) for label, run in runs.items()}
    times = measure(runs, held_out[0], rounds)
    rows = []
    for label, (cpu, wall) in times.items():
        ratios = [f"{cpu / times[ORT[kind]][0]:.2f}" if ORT[kind] in times else "-" for kind in ORT]
        rows.append((label, f"{cpu * 1e3:.2f}", f"{wall * 1e3:.2f}", *ratios, f"{quality[label]:.2f}"))
    header = ("variant", "CPU ms", "wall ms", "/ ORT S8S8", "/ ORT U8S8", "SQNR dB")
    lines = [f"== {name}: input {list(shape)}, 1 thread, medians of {rounds} interleaved rounds", table(rows, header)]
    lines += goals(name, {label: cpu for label, (cpu, _) in times.items()})
    if profile:
        lines.append(profile_table(runs[QGRAPH_ONEDNN], held_out[0]))
    return lines


def goals(name: str, cpu: dict[str, float]) -> list[str]:
    onednn = cpu[QGRAPH_ONEDNN]
    checks = [(f"int8 faster than fp32 ({cpu[FP32] / onednn:.2f}x)", onednn < cpu[FP32])]
    if ORT["S8S8"] in cpu:
        bound = TIGHT_GOAL.get(name, 1.0)
        ratio = onednn / cpu[ORT["S8S8"]]
        checks.append((f"<= {bound} x ONNX Runtime S8S8 ({ratio:.2f})", ratio <= bound))
    if name in REFERENCE_SPEEDUP_GOAL:
        speedup = cpu[REF_X86] / onednn
        checks.append((f">= 2x faster than reference int8 x86 ({speedup:.2f}x)", speedup >= 2.0))
    return [f"goal: {text}: {'met' if met else 'NOT met'}" for text, met in checks]


def profile_table(run: Callable, x: torch.Tensor, calls: int = 20) -> str:
    with torch.no_grad(), torch.autograd.profiler.profile() as profiler:
        for _ in range(calls):
            run(x)
    averages = profiler.key_averages()
    total = sum(event.self_cpu_time_total for event in averages)
    onednn = sum(event.self_cpu_time_total for event in averages if event.key.startswith("onednn::"))
    heading = f"profile of {QGRAPH_ONEDNN}: {100 * onednn / total:.0f}% of the self CPU time in onednn:: ops"
    return heading + "\n" + averages.table(sort_by="self_cpu_time_total", row_limit=12)


def machine() -> str:
    flags = ""
    if os.path.exists("/proc/cpuinfo"):
        text = open("/proc/cpuinfo").read()
        model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
        found = [flag for flag in ("avx512_vnni", "avx_vnni", "amx_int8") if f" {flag}" in text]
        flags = f"{model}; int8 instructions: {', '.join(found) or 'none'}"
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    return f"{platform.machine()} {flags}; load average {load}; torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, action="append")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    print(machine(), flush=True)
    if not onnxruntime_int8.available():
        print(onnxruntime_int8.missing_message(), flush=True)
    for name in args.model or MODELS:
        print("\n".join(bench_model(name, args.rounds, args.profile)), flush=True)
    print(f"load average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
