"""How prepare + convert time grows with model depth, qgraph against the reference.

A stack of ``depth`` conv-relu submodules is prepared, calibrated on one
batch and converted. qgraph's passes index nodes by kind and visit each
(class type, method) graph once, so its time should grow linearly; the
reference is measured on the smaller depths only unless ``--reference-all``
is given, because it takes minutes at depth 1000. The qconfig is
``default_qconfig`` (min/max observers), so the figures measure the passes
rather than the histogram observer's own qparams search, which costs the
same in both.

Run: python benchmarks/bench_scaling.py [--depths 100 300 1000] [--reference-all]
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from torch.ao.quantization import default_qconfig
from torch.ao.quantization import quantize_jit as ref_quantize_jit

from common import table  # noqa: E402

import qgraph
from examples.models import DeepConvStack, calibrate, calibration_batches


def seconds(quantize, model, batches) -> float:
    start = time.perf_counter()
    quantize(model, {"": default_qconfig}, calibrate, [batches])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--reference-all", action="store_true", help="also time the reference at every depth")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    batches = calibration_batches((1, 4, 4, 4), count=1)
    rows = []
    for depth in args.depths:
        model = torch.jit.script(DeepConvStack(depth).eval())
        ours = seconds(qgraph.quantize_jit, model, batches)
        if args.reference_all or depth <= min(args.depths):
            theirs = seconds(ref_quantize_jit, model, batches)
            rows.append((depth, f"{ours:.2f}", f"{theirs:.2f}", f"{ours / theirs:.3f}"))
        else:
            rows.append((depth, f"{ours:.2f}", "not run", ""))
    print(table(rows, ("depth", "qgraph (s)", "reference (s)", "ratio qgraph/ref")))


if __name__ == "__main__":
    main()
