"""The ``qgraph`` commands that quantize, compare and draw (the parser and the rest live in ``qgraph.cli``).

    qgraph quantize MODEL.pt --calibration DATA.pt [--qconfig [PATH=]NAME ...] [--per-tensor]
                    [--dynamic [--dtype qint8|float16]] [--lowering reference|onednn] -o OUT.pt
    qgraph compare FLOAT.pt QUANTIZED.pt --inputs DATA.pt [--top N]
    qgraph sensitivity MODEL.pt --calibration DATA.pt [--qconfig ...] [--dynamic] [-k K]
    qgraph draw MODEL.pt -o GRAPH.svg [--stage STAGE [--qconfig ...] [--calibration DATA.pt] [--dynamic]]

What they read (DATA.pt files, the ``--qconfig`` options) is read by
``qgraph.cli_inputs``; ``--lowering`` offers ``qgraph.quant.lowering.LOWERINGS``
(``onednn`` for static quantization only).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from qgraph.cli_inputs import (
    UsageError,
    add_quantization_options,
    load_batches,
    load_model,
    qconfig_from_options,
    quantized_engine,
)
from qgraph.quant.lowering import LOWERINGS

__all__ = ["add_commands"]


@contextmanager
def _quiet() -> Iterator[None]:
    """Notices PyTorch gives on every quantization, which a command line user can do nothing about."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", "Please use quant_min and quant_max", UserWarning)
        yield


def add_commands(commands: Any) -> None:
    """Add quantize, compare, sensitivity and draw to the ``qgraph`` sub-command parsers."""
    quantize = commands.add_parser("quantize", help="quantize a saved model with calibration data, print a summary")
    quantize.add_argument("model", metavar="MODEL.pt", help="a float model written by torch.jit.save")
    _add_data(quantize, "--calibration", required=False, what="calibration data (required unless --dynamic)")
    add_quantization_options(quantize)
    quantize.add_argument(
        "--lowering", choices=LOWERINGS, default="reference", help="how convert lowers to kernels (default: reference)"
    )
    quantize.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    quantize.add_argument("-o", "--output", required=True, metavar="OUT.pt", help="where to save the quantized model")
    quantize.set_defaults(command=_quantize)

    compare = commands.add_parser("compare", help="each quantized op's output against the float model, worst first")
    compare.add_argument("float_model", metavar="FLOAT.pt", help="the float model that was quantized")
    compare.add_argument("quantized_model", metavar="QUANTIZED.pt", help="the quantized (or debug=True) model")
    _add_data(compare, "--inputs", required=True, what="inputs to run both models on")
    compare.add_argument("--top", type=int, metavar="N", help="show the N worst ops only")
    compare.set_defaults(command=_compare)

    sensitivity = commands.add_parser(
        "sensitivity", help="the output SQNR with each layer left in float, and which ones to exclude"
    )
    sensitivity.add_argument("model", metavar="MODEL.pt", help="a float model written by torch.jit.save")
    _add_data(sensitivity, "--calibration", required=False, what="calibration data (required unless --dynamic)")
    _add_data(sensitivity, "--inputs", required=False, what="inputs to measure on (default: the calibration data)")
    add_quantization_options(sensitivity)
    sensitivity.add_argument("-k", type=int, default=1, metavar="K", help="how many layers to exclude (default 1)")
    sensitivity.set_defaults(command=_sensitivity)

    draw = commands.add_parser("draw", help="draw a saved model's graph as SVG (needs Graphviz's dot)")
    draw.add_argument("model", metavar="MODEL.pt", help="a model written by torch.jit.save, at any stage")
    draw.add_argument("-o", "--output", required=True, metavar="GRAPH.svg", help="the SVG file to write")
    draw.add_argument(
        "--stage",
        metavar="STAGE",
        help="quantize the model and draw it after this pipeline stage ([PIPELINE:]STAGE, e.g. insert-observers)",
    )
    _add_data(draw, "--calibration", required=False, what="calibration data for --stage (optional)")
    add_quantization_options(draw)
    draw.set_defaults(command=_draw)


def _add_data(parser: argparse.ArgumentParser, flag: str, required: bool, what: str) -> None:
    parser.add_argument(flag, required=required, metavar="DATA.pt", help=f"{what}: a torch.save'd list of inputs")


def _model_error(action: str, err: Exception) -> UsageError:
    message = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
    return UsageError(f"{action}: {message}")


def _quantized(
    model: torch.jit.ScriptModule,
    qconfig_dict: Any,
    calibration: list[tuple] | None,
    dynamic: bool,
    lowering: str = "reference",
    progress: bool = False,
) -> torch.jit.ScriptModule:
    import qgraph

    if dynamic:
        if lowering != "reference":
            raise UsageError(f"--lowering {lowering} lowers static quantization; --dynamic has the reference lowering")
        prepared = qgraph.prepare_dynamic_jit(model, qconfig_dict)
        return qgraph.convert_dynamic_jit(prepared)
    if calibration is None:
        raise UsageError("static quantization needs --calibration DATA.pt (or use --dynamic)")
    prepared = qgraph.prepare_jit(model, qconfig_dict)
    from tqdm import tqdm

    with torch.no_grad():
        for arguments in tqdm(calibration, desc="calibrating", unit="batch", disable=not progress, file=sys.stderr):
            prepared(*arguments)
    return qgraph.convert_jit(prepared, lowering=lowering)


def _float_model(path: str) -> torch.jit.ScriptModule:
    model = torch.jit._recursive.wrap_cpp_module(load_model(path))
    return model.eval()


# --- commands ---------------------------------------------------------------------------------------


def _quantize(args: argparse.Namespace) -> int:
    from qgraph.ir import walk
    from qgraph.report import detected_quant_type, float_op_report
    from qgraph.sensitivity import output_sqnr

    model = _float_model(args.model)
    calibration = load_batches(args.calibration) if args.calibration else None
    qconfig_dict, engine = qconfig_from_options(args)
    kind = "dynamic" if args.dynamic else "static"
    with quantized_engine(engine), _quiet():
        try:
            quantized = _quantized(model, qconfig_dict, calibration, args.dynamic, args.lowering, not args.no_progress)
        except (ValueError, TypeError, RuntimeError) as err:
            raise _model_error(f"quantizing {args.model}", err) from None
        try:
            torch.jit.save(quantized, args.output)
        except (OSError, RuntimeError) as err:
            raise _model_error(f"writing {args.output}", err) from None
        sqnr = None
        if calibration is not None:
            try:
                sqnr = output_sqnr(model, quantized, calibration)
            except (ValueError, RuntimeError) as err:
                raise _model_error("running the models on the calibration data", err) from None
    kernels = sum(
        1
        for node in walk(quantized.graph)
        if node.kind().startswith(("quantized::", "aten::quantized_")) and not node.kind().endswith("pack")
    )
    left = len(float_op_report(quantized, qconfig_dict, quant_type=detected_quant_type(quantized)))
    before, after = os.path.getsize(args.model), os.path.getsize(args.output)
    weights = f" {args.dtype}" if args.dynamic else ""
    print(f"quantized {args.model} -> {args.output}")
    print(f"  quantization      {kind}{weights}, {_describe_qconfig(args)}, {args.lowering} lowering")
    print(f"  ops quantized     {kernels}")
    print(f"  ops left in float {left}" + (f" (qgraph report {args.output} says why)" if left else ""))
    print(f"  model size        {_size(before)} -> {_size(after)} ({before / max(after, 1):.1f}x smaller)")
    if sqnr is not None:
        batches = len(calibration or [])
        print(f"  output SQNR       {sqnr:.2f} dB on {batches} calibration batch{'es' if batches != 1 else ''}")
    else:
        print("  output SQNR       - (no --calibration data to measure on)")
    return 0


def _describe_qconfig(args: argparse.Namespace) -> str:
    entries = ", ".join(args.qconfig or ["x86"])
    return f"qconfig {entries}" + (" per-tensor" if args.per_tensor else "")


def _size(size: int) -> str:
    for unit, scale in (("MB", 1 << 20), ("kB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{size} B"


def _compare(args: argparse.Namespace) -> int:
    from qgraph.compare import compare

    float_model = _float_model(args.float_model)
    quantized = torch.jit._recursive.wrap_cpp_module(load_model(args.quantized_model))
    inputs = load_batches(args.inputs)
    if args.top is not None and args.top < 1:
        raise UsageError("--top needs a number >= 1")
    try:
        with _quiet():
            report = compare(float_model, quantized, inputs)
    except (ValueError, RuntimeError) as err:
        raise _model_error("comparing", err) from None
    print(report.format(limit=args.top))
    return 0


def _sensitivity(args: argparse.Namespace) -> int:
    from qgraph.sensitivity import sensitivity

    model = _float_model(args.model)
    calibration = load_batches(args.calibration) if args.calibration else None
    inputs = load_batches(args.inputs) if args.inputs else None
    if calibration is None and not args.dynamic:
        raise UsageError("static quantization needs --calibration DATA.pt (or use --dynamic)")
    if calibration is None and inputs is None:
        raise UsageError("--dynamic needs --inputs DATA.pt (or --calibration) to measure on")
    if args.k < 0:
        raise UsageError("-k needs a number >= 0")
    qconfig_dict, engine = qconfig_from_options(args)
    with quantized_engine(engine), _quiet():
        try:
            report = sensitivity(model, qconfig_dict, calibration or inputs, inputs, k=args.k, dynamic=args.dynamic)
        except (ValueError, TypeError, RuntimeError) as err:
            raise _model_error(f"quantizing {args.model}", err) from None
    print(report.format())
    return 0


class _StageReached(Exception):
    def __init__(self, module: Any):
        super().__init__()
        self.module = module


def _draw(args: argparse.Namespace) -> int:
    from qgraph.draw import GraphvizNotFound, picture
    from qgraph.pipeline import inspect as inspect_pipelines

    module = load_model(args.model)
    if args.stage:
        module = _module_after_stage(args, _stage_filter(args.stage), inspect_pipelines)
    try:
        drawn = picture(module)
    except GraphvizNotFound as err:
        raise UsageError(str(err)) from None
    try:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(drawn.svg)
    except OSError as err:
        raise UsageError(f"{args.output}: {err.strerror or err}") from None
    counts = ", ".join(f"{category}: {count}" for category, count in drawn.counts.items())
    print(f"wrote {args.output}: {counts or 'no ops'}")
    return 0


def _stage_filter(stage: str) -> Callable[[str, str], bool]:
    pipeline, _, name = stage.rpartition(":")
    return lambda seen_pipeline, seen_stage: seen_stage == name and pipeline in ("", seen_pipeline)


def _module_after_stage(args: argparse.Namespace, wanted: Callable[[str, str], bool], inspect_pipelines: Any) -> Any:
    from qgraph.ir import clone_module

    model = _float_model(args.model)
    calibration = load_batches(args.calibration) if args.calibration else None
    qconfig_dict, engine = qconfig_from_options(args)
    seen: list[str] = []

    def stop_after(pipeline: str, stage: str, module: Any) -> None:
        seen.append(f"{pipeline}:{stage}")
        if wanted(pipeline, stage):
            raise _StageReached(clone_module(module))

    with quantized_engine(engine), warnings.catch_warnings(), inspect_pipelines(on_stage=stop_after):
        # The picture is of the graph: uncalibrated observers only make qparams that nobody reads.
        warnings.simplefilter("ignore")
        try:
            _quantized(model, qconfig_dict, calibration or [], args.dynamic)
        except _StageReached as reached:
            return reached.module
        except (ValueError, TypeError, RuntimeError) as err:
            raise _model_error(f"quantizing {args.model}", err) from None
    raise UsageError(f"no stage {args.stage!r}: the stages are {', '.join(seen)}")
