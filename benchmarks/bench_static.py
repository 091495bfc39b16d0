"""Static int8 quantization: qgraph against torch.ao.quantization.quantize_jit, side by side.

For a ResNet-18-style and a MobileNetV2-style net (scripted), in one process
with interleaved repeats, it reports:
- prepare + convert wall time of each and their ratio (qgraph / reference);
- calibration time per batch through each prepared model;
- int8 latency (1 thread, batch 1, median) of both quantized models and of
  the fp32 model;
- whether the two quantized models' outputs are equal.

Run: python benchmarks/bench_static.py [--repeats N]
"""

from __future__ import annotations

import argparse
import warnings

import torch
from common import interleaved, median, ms, table  # noqa: E402  (benchmarks/ is the script's folder)
from torch.ao.quantization import get_default_qconfig
from torch.ao.quantization import quantize_jit as ref_quantize_jit
from torch.ao.quantization.quantize_jit import convert_jit as ref_convert_jit
from torch.ao.quantization.quantize_jit import prepare_jit as ref_prepare_jit

import qgraph
from examples.models import MobileNetV2Like, ResNetLike, calibrate, calibration_batches, randomize_batchnorm

MODELS = {
    "resnet18-like": (lambda: ResNetLike(width=32), (1, 3, 64, 64)),
    "mobilenetv2-like": (lambda: MobileNetV2Like(width=8), (1, 3, 64, 64)),
}


def bench_model(name: str, repeats: int) -> list[tuple]:
    build, shape = MODELS[name]
    torch.manual_seed(0)
    float_model = torch.jit.script(randomize_batchnorm(build().eval()))
    qconfig = {"": get_default_qconfig("fbgemm")}
    batches = calibration_batches(shape, count=4)
    example = batches[0]

    def prepare_convert(prepare, convert):
        def run():
            prepared = prepare(float_model, qconfig)
            calibrate(prepared, batches[:1])
            return convert(prepared)

        return run

    build_times = interleaved(
        {
            "qgraph": prepare_convert(qgraph.prepare_jit, qgraph.convert_jit),
            "reference": prepare_convert(ref_prepare_jit, ref_convert_jit),
        },
        repeats=repeats,
        warmup=0,
    )

    prepared = {"qgraph": qgraph.prepare_jit(float_model, qconfig), "reference": ref_prepare_jit(float_model, qconfig)}
    calib_times = interleaved({k: (lambda m=m: calibrate(m, batches)) for k, m in prepared.items()}, repeats=repeats)
    quantized = {
        "qgraph": qgraph.quantize_jit(float_model, qconfig, calibrate, [batches]),
        "reference": ref_quantize_jit(float_model, qconfig, calibrate, [batches]),
    }
    same = torch.equal(quantized["qgraph"](example), quantized["reference"](example))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    calls = 10
    contenders = {f"{k} int8": (lambda m=m: calibrate(m, [example] * calls)) for k, m in quantized.items()}
    contenders["fp32"] = lambda: calibrate(float_model, [example] * calls)
    run_times = interleaved(contenders, repeats=repeats * 3)
    torch.set_num_threads(threads)

    q_build, r_build = median(build_times["qgraph"]), median(build_times["reference"])
    q_lat = median(run_times["qgraph int8"]) / calls
    r_lat = median(run_times["reference int8"]) / calls
    return [
        (name, "prepare+convert (s)", f"{q_build:.3f}", f"{r_build:.3f}", f"{q_build / r_build:.2f}"),
        (
            name,
            "calibration / batch",
            ms(median(calib_times["qgraph"]) / len(batches)),
            ms(median(calib_times["reference"]) / len(batches)),
            f"{median(calib_times['qgraph']) / median(calib_times['reference']):.2f}",
        ),
        (name, "int8 latency (1 thread)", ms(q_lat), ms(r_lat), f"{q_lat / r_lat:.3f}"),
        (name, "fp32 latency (1 thread)", ms(median(run_times["fp32"]) / calls), "", ""),
        (name, "outputs equal", str(same), "", ""),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", choices=sorted(MODELS), action="append")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    rows = []
    for name in args.model or list(MODELS):
        rows += bench_model(name, args.repeats)
    print(table(rows, ("model", "measure", "qgraph", "reference", "ratio qgraph/ref")))


if __name__ == "__main__":
    main()
