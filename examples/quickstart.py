"""Quantize a small ResNet to int8 with qgraph and show what every stage did.

    python examples/quickstart.py [--dump-dir DIR]

Prints, for each pipeline stage, its time and how the node counts changed;
then the quantized model's forward code, the ops left in float, the
accuracy against the float model, and the size of the saved model.
"""

from __future__ import annotations

import argparse
import io
import warnings

import torch
from models import ResNetLike, calibrate, calibration_batches, randomize_batchnorm
from torch.ao.quantization import get_default_qconfig

import qgraph
from qgraph.pipeline import inspect
from qgraph.report import float_op_report


def sqnr_db(reference: torch.Tensor, approximation: torch.Tensor) -> float:
    noise = (reference - approximation).pow(2).mean()
    return float(10 * torch.log10(reference.pow(2).mean() / noise))


def saved_size(model: torch.jit.ScriptModule) -> int:
    buffer = io.BytesIO()
    torch.jit.save(model, buffer)
    return buffer.tell()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dump-dir", help="write every method graph after every stage to this directory")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # TorchScript and quantized-dtype deprecation notices
    torch.manual_seed(0)

    model = randomize_batchnorm(ResNetLike(width=16).eval())
    scripted = qgraph.capture(model)
    batches = calibration_batches((1, 3, 32, 32), count=8)
    qconfig_dict = {"": get_default_qconfig("fbgemm")}

    with inspect(dump_dir=args.dump_dir, count_nodes=True, time=True, lint=True) as report:
        quantized = qgraph.quantize_jit(scripted, qconfig_dict, calibrate, [batches])

    print("== what each stage did")
    print(report.format())
    print("\n== quantized forward, as TorchScript code")
    print(quantized.code)
    print("== ops left in float")
    print(float_op_report(quantized, qconfig_dict).format())

    example = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected, actual = model(example), quantized(example)
    print("\n== result")
    print(f"SQNR vs float: {sqnr_db(expected, actual):.1f} dB")
    print(f"saved size: float {saved_size(scripted) / 1024:.0f} KiB, int8 {saved_size(quantized) / 1024:.0f} KiB")
    if args.dump_dir:
        print(f"graphs after every stage: {args.dump_dir}/")


if __name__ == "__main__":
    main()
