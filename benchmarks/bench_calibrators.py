"""Calibrators side by side: SQNR of the int8 model against fp32, and calibration time, on the zoo.

    python benchmarks/bench_calibrators.py [--models NAME ...] [--size 224] [--calibration-images 32]
                                           [--eval-images 16] [--repeats 1] [--no-ort]

Every model is quantized by qgraph with per-channel int8 weights (the x86
qconfig's) and each activation observer: min-max, PyTorch's
HistogramObserver (with them, the x86 default qconfig), and qgraph's
PercentileObserver, EntropyObserver and MSEObserver; all with reduce_range
(7-bit activations) as the x86 default has it, then MobileNetV2 also with
full 8-bit activations, under both lowerings (the oneDNN one where the CPU
has its ops), beside ONNX Runtime's quantize_static (QDQ, per-channel
int8 weights, each CalibrationMethod), which quantizes to 8 bits (qgraph's
8-bit models run on PyTorch's onednn engine, see ``quantize_with``).

Inputs are "dead leaves" images (overlapping discs of random colour and
power-law radius over a 1/f noise texture: edges, flat regions and the
spectrum of natural photographs), ImageNet-normalized; the MLP gets
token features with heavy-tailed per-token scales. Weights are random;
BatchNorm statistics are re-estimated on 16 other batches first. SQNR is
over the logits of held-out images. Times are wall seconds on one thread:
calibration (forward passes through the prepared model) and convert
(qparams, quantize and fuse), the configurations taking turns. A second
table times calculate_qparams alone on one activation, interleaved.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from common import ROOT, interleaved, median, table
from torch import nn
from torch.ao.quantization import (
    HistogramObserver,
    MinMaxObserver,
    QConfig,
    default_per_channel_weight_observer,
)

import qgraph
from examples.models import MobileNetV2Like, ResNetLike, TransformerMLP
from tests.helpers.numerics import sqnr
from tests.helpers.onednn import onednn_available

warnings.filterwarnings("ignore")

OBSERVERS: dict[str, Callable[..., nn.Module]] = {
    "min-max": MinMaxObserver,
    "histogram": HistogramObserver,
    "percentile": qgraph.PercentileObserver,
    "entropy": qgraph.EntropyObserver,
    "mse": qgraph.MSEObserver,
}
# ONNX Runtime's methods with its defaults; its Entropy defaults to 128 bins for 128 levels (one candidate,
# the whole range), so it also runs with TensorRT's 2048 bins.
ORT_METHODS = {
    "MinMax": {},
    "Entropy": {},
    "Entropy, 2048 bins": {"CalibNumBins": 2048},
    "Percentile": {},
    "Distribution": {},
}


def dead_leaves(count: int, size: int, seed: int) -> torch.Tensor:
    """``count`` RGB images, ImageNet-normalized: random discs over a 1/f texture."""
    generator = torch.Generator().manual_seed(seed)
    frequency = torch.fft.fftfreq(size).abs()
    radius = torch.sqrt(frequency[:, None] ** 2 + frequency[None, :] ** 2).clamp(min=1.0 / size)
    spectrum = torch.randn(count, 3, size, size, dtype=torch.complex64, generator=generator) / radius
    texture = torch.fft.ifft2(spectrum).real
    texture = 0.5 + 0.15 * texture / texture.std(dim=(2, 3), keepdim=True)
    images = texture.clone()
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for image in images:
        for _ in range(60):
            r = size * 0.02 * (1.0 - torch.rand(1, generator=generator).item()) ** -1.0
            cy, cx = (torch.rand(2, generator=generator) * size).tolist()
            disc = (ys - cy) ** 2 + (xs - cx) ** 2 < min(r, size) ** 2
            colour = torch.rand(3, 1, generator=generator)
            image[:, disc] = colour * 0.8 + 0.2 * image[:, disc]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (images.clamp(0, 1) - mean) / std


def token_features(count: int, seed: int, dim: int = 32, tokens: int = 16) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    scale = torch.exp(torch.randn(count, tokens, 1, generator=generator))
    return torch.randn(count, tokens, dim, generator=generator) * scale


def zoo(size: int) -> dict[str, tuple[Callable[[], nn.Module], Callable[[int, int], torch.Tensor]]]:
    def images(count: int, seed: int) -> torch.Tensor:
        return dead_leaves(count, size, seed)

    models = {
        "ResNetLike": (lambda: ResNetLike(width=16, num_classes=1000), images),
        "MobileNetV2Like": (lambda: MobileNetV2Like(width=16, num_classes=1000), images),
        "TransformerMLP": (lambda: TransformerMLP(), lambda count, seed: token_features(count, seed)),
    }
    from tests.helpers.torchvision_models import import_torchvision

    tv = import_torchvision().models
    for name, build in (
        ("resnet18", tv.resnet18),
        ("mobilenet_v2", tv.mobilenet_v2),
        ("mobilenet_v3_large", tv.mobilenet_v3_large),
        ("shufflenet_v2_x1_0", tv.shufflenet_v2_x1_0),
        ("efficientnet_b0", tv.efficientnet_b0),
    ):
        models[name] = (build, images)
    return models


def reestimated(model: nn.Module, batches: list[torch.Tensor]) -> nn.Module:
    from tests.helpers.torchvision_models import reestimate_batchnorm

    return reestimate_batchnorm(model, batches)


def batched(data: torch.Tensor, size: int) -> list[torch.Tensor]:
    return list(data.split(size))


def quantize_with(scripted, observer, reduce_range: bool, calibration, evaluation, lowering: str = "reference"):
    """(outputs, calibration s, convert s); full 8-bit activations run on the onednn engine.

    fbgemm's x86 kernels can saturate on 8-bit activations (what reduce_range is for in the x86
    qconfig): MobileNetV2 lost 1-2 dB with them; onednn computes them exactly.
    """
    qconfig = QConfig(
        activation=observer.with_args(reduce_range=reduce_range), weight=default_per_channel_weight_observer
    )
    engine = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine if reduce_range else "onednn"
    try:
        prepared = qgraph.prepare_jit(scripted, {"": qconfig})
        start = time.perf_counter()
        with torch.no_grad():
            for batch in calibration:
                prepared(batch)
        calibrated = time.perf_counter()
        quantized = qgraph.convert_jit(prepared, lowering=lowering)
        converted = time.perf_counter()
        with torch.no_grad():
            outputs = torch.cat([quantized(batch) for batch in evaluation])
    finally:
        torch.backends.quantized.engine = engine
    return outputs, calibrated - start, converted - calibrated


def ort_quantize(model: nn.Module, calibration, evaluation, method: str, folder) -> tuple[torch.Tensor, float]:
    import logging

    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, quantize_static

    ort.set_default_logger_severity(3)
    logging.getLogger().setLevel(logging.ERROR)
    float_path, int8_path = folder / "float.onnx", folder / f"int8_{len(list(folder.iterdir()))}.onnx"
    if not float_path.exists():
        torch.onnx.export(
            model, (calibration[0],), str(float_path), input_names=["x"], dynamo=False, dynamic_axes={"x": {0: "batch"}}
        )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"x": batch.numpy()}

    start = time.perf_counter()
    quantize_static(
        str(float_path),
        str(int8_path),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        calibrate_method=getattr(CalibrationMethod, method.split(",")[0]),
        extra_options=ORT_METHODS[method],
    )
    seconds = time.perf_counter() - start
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(int8_path), options, providers=["CPUExecutionProvider"])
    outputs = torch.cat([torch.from_numpy(session.run(None, {"x": batch.numpy()})[0]) for batch in evaluation])
    return outputs, seconds


def qparams_times(activations: dict[str, torch.Tensor], repeats: int) -> list[tuple]:
    """forward and calculate_qparams alone, scripted as convert calls them, on calibrated activations (interleaved)."""
    rows = []
    for label, activation in activations.items():
        observers = {name: torch.jit.script(observer(reduce_range=True)) for name, observer in OBSERVERS.items()}
        forward = interleaved({name: functools.partial(o, activation) for name, o in observers.items()}, repeats)
        qparams = interleaved({name: o.calculate_qparams for name, o in observers.items()}, repeats)
        base = median(qparams["histogram"])
        for name in observers:
            rows.append(
                (
                    f"{label}, {activation.numel()} values",
                    name,
                    f"{median(forward[name]) * 1e3:.2f}",
                    f"{median(qparams[name]) * 1e3:.2f}",
                    f"{median(qparams[name]) / base:.2f}",
                )
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", help="zoo names (default: all)")
    parser.add_argument("--size", type=int, default=224, help="image side")
    parser.add_argument("--calibration-images", type=int, default=32)
    parser.add_argument("--eval-images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1, help="rounds of the configurations, taking turns")
    parser.add_argument("--no-ort", action="store_true", help="skip ONNX Runtime (needs the bench extra)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not args.no_ort and importlib.util.find_spec("onnxruntime") is None:
        print("onnxruntime is not installed (pip install -e '.[bench]'): ONNX Runtime is left out")
        args.no_ort = True
    # The oneDNN lowering fuses relu6 into the conv before it, whose output is then quantized once, over the
    # clamped range. Its ops need VNNI or AMX: without them it is left out.
    eight_bit_lowerings = ["reference"] + (["onednn"] if onednn_available() else [])
    models = zoo(args.size)
    names = args.models or list(models)
    sqnr_rows, time_rows = [], []
    activations: dict[str, torch.Tensor] = {}
    for name in names:
        build, inputs = models[name]
        torch.manual_seed(0)  # each model's weights independent of the others run before it
        model = reestimated(build().eval(), batched(inputs(64, 1000), 4))
        calibration = batched(inputs(args.calibration_images, 1), 4)
        evaluation = batched(inputs(args.eval_images, 2), 8)
        with torch.no_grad():
            reference = torch.cat([model(batch) for batch in evaluation])
        scripted = torch.jit.script(model)
        variants = [(observer, True, "reference") for observer in OBSERVERS]
        if name == "mobilenet_v2":
            variants += [(observer, False, lowering) for lowering in eight_bit_lowerings for observer in OBSERVERS]
        results: dict[tuple[str, bool, str], tuple[float, list[float], list[float]]] = {}
        for _ in range(args.repeats):
            for observer, reduce_range, lowering in variants:
                outputs, calibrate_s, convert_s = quantize_with(
                    scripted, OBSERVERS[observer], reduce_range, calibration, evaluation, lowering
                )
                entry = results.setdefault((observer, reduce_range, lowering), (sqnr(reference, outputs), [], []))
                entry[1].append(calibrate_s)
                entry[2].append(convert_s)
        row = [name] + [f"{results[(o, True, 'reference')][0]:.2f}" for o in OBSERVERS]
        sqnr_rows.append(tuple(row))
        base = median(results[("histogram", True, "reference")][1]) + median(
            results[("histogram", True, "reference")][2]
        )
        for observer in OBSERVERS:
            _, calibrate_s, convert_s = results[(observer, True, "reference")]
            total = median(calibrate_s) + median(convert_s)
            time_rows.append(
                (
                    name,
                    observer,
                    f"{median(calibrate_s):.2f}",
                    f"{median(convert_s):.2f}",
                    f"{total:.2f}",
                    f"{total / base:.2f}",
                )
            )
        print(table(sqnr_rows[-1:], ("model (SQNR dB, 7-bit activations)", *OBSERVERS)), flush=True)
        if name == "mobilenet_v2":
            eight_bit = [
                (f"qgraph {o}, {lowering} lowering", f"{results[(o, False, lowering)][0]:.2f}", "")
                for lowering in eight_bit_lowerings
                for o in OBSERVERS
            ]
            if not args.no_ort:
                import tempfile
                from pathlib import Path

                with tempfile.TemporaryDirectory() as folder:
                    for method in ORT_METHODS:
                        outputs, seconds = ort_quantize(model, calibration, evaluation, method, Path(folder))
                        eight_bit.append((f"onnxruntime {method}", f"{sqnr(reference, outputs):.2f}", f"{seconds:.2f}"))
            print(table(eight_bit, ("mobilenet_v2, 8-bit activations", "SQNR dB", "quantize_static s")), flush=True)
        if not activations and hasattr(model, "conv1"):
            with torch.no_grad():
                stem: Any = model.conv1
                signed = stem(calibration[0])
            activations = {"conv output": signed, "after ReLU": signed.relu()}
    print()
    print(table(sqnr_rows, ("model (SQNR dB, 7-bit activations)", *OBSERVERS)))
    print()
    print(table(time_rows, ("model", "observer", "calibrate s", "convert s", "total s", "/ histogram")))
    if activations:
        print()
        print("one activation (ms per call, medians of 30 interleaved):")
        header = ("activation", "observer", "forward ms", "calculate_qparams ms", "/ histogram")
        print(table(qparams_times(activations, 30), header))


if __name__ == "__main__":
    if str(ROOT) not in __import__("sys").path:
        __import__("sys").path.insert(0, str(ROOT))
    main()
