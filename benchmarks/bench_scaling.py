"""How prepare + convert time grows with model depth, qgraph against the reference.

A stack of ``depth`` conv-relu submodules is prepared, calibrated on one
batch and converted. qgraph's passes index nodes by kind and visit each
(class type, method) graph once, so its time should grow linearly; the
reference is measured on the smaller depths only unless ``--reference-all``
is given, because it takes minutes at depth 1000. The qconfig is
``default_qconfig`` (min/max observers), so the figures measure the passes
rather than the histogram observer's own qparams search, which costs the
same in both.

``--stages`` adds a table of qgraph's seconds per pipeline stage at each
depth, with the growth factor from the smallest to the largest depth
(linear growth gives the ratio of the depths). ``--threads N`` sets
``torch.set_num_threads``: on a busy machine, waking intra-op threads for
each tiny weight op can cost more than the op, and one thread gives
steadier figures.

Run: python benchmarks/bench_scaling.py [--depths 100 300 1000] [--reference-all] [--stages] [--threads N]
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from common import table  # noqa: E402
from torch.ao.quantization import default_qconfig
from torch.ao.quantization import quantize_jit as ref_quantize_jit

import qgraph
from examples.models import DeepConvStack, calibrate, calibration_batches
from qgraph.pipeline import inspect


def seconds(quantize, model, batches) -> float:
    start = time.perf_counter()
    quantize(model, {"": default_qconfig}, calibrate, [batches])
    return time.perf_counter() - start


def stage_seconds(model, batches) -> dict[str, float]:
    """qgraph's seconds per pipeline stage (``pipeline/stage``), plus prepare and convert as a whole."""
    with inspect(time=True) as report:
        start = time.perf_counter()
        prepared = qgraph.prepare_jit(model, {"": default_qconfig})
        times = {"prepare (total)": time.perf_counter() - start}
        calibrate(prepared, batches)
        start = time.perf_counter()
        qgraph.convert_jit(prepared)
        times["convert (total)"] = time.perf_counter() - start
    for record in report.stages:
        times[f"{record.pipeline}/{record.stage}"] = record.seconds
    return times


def stage_table(per_depth: dict[int, dict[str, float]]) -> str:
    depths = sorted(per_depth)
    first, last = per_depth[depths[0]], per_depth[depths[-1]]
    rows = []
    for name in first:
        growth = last.get(name, 0.0) / first[name] if first[name] > 0 else float("nan")
        rows.append((name, *(f"{per_depth[d].get(name, 0.0):.3f}" for d in depths), f"{growth:.1f}"))
    return table(rows, ("stage", *(f"{d} (s)" for d in depths), f"x ({depths[-1]}/{depths[0]})"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--reference-all", action="store_true", help="also time the reference at every depth")
    parser.add_argument("--stages", action="store_true", help="also print qgraph's seconds per stage")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads before measuring")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    batches = calibration_batches((1, 4, 4, 4), count=1)
    rows = []
    per_depth = {}
    for depth in args.depths:
        model = torch.jit.script(DeepConvStack(depth).eval())
        if args.stages:
            per_depth[depth] = stage_seconds(model, batches)
        ours = seconds(qgraph.quantize_jit, model, batches)
        if args.reference_all or depth <= min(args.depths):
            theirs = seconds(ref_quantize_jit, model, batches)
            rows.append((depth, f"{ours:.2f}", f"{theirs:.2f}", f"{ours / theirs:.3f}"))
        else:
            rows.append((depth, f"{ours:.2f}", "not run", ""))
    print(table(rows, ("depth", "qgraph (s)", "reference (s)", "ratio qgraph/ref")))
    if args.stages:
        print()
        print(stage_table(per_depth))


if __name__ == "__main__":
    main()
