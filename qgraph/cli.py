"""The ``qgraph`` command line.

    qgraph show MODEL.pt                  the root module's forward graph
    qgraph show MODEL.pt --method NAME    another method of the root module
    qgraph show MODEL.pt --all            every method of every module, headed by module path
    qgraph passes MODEL.pt [--dump-dir DIR] [--dynamic] [--qconfig [PATH=]NAME ...]
                                          run what prepare_jit runs (its pipeline, stage by
                                          stage), printing forward after each; observers go
                                          where the --qconfig entries say (none without them)
    qgraph opt --pass NAME FILE [--dynamic] [--lowering L] [--qconfig [PATH=]NAME ...]
                                          one pass on a graph in IR text (FILE.ir) or on a model
                                          in Python source (FILE.py), the result printed; convert
                                          lowers with L (reference or onednn); see qgraph.opt
    qgraph report MODEL.pt [--dynamic | --static] [--lowering L] [--qconfig [PATH=]NAME ...]
                                          the ops a quantized model still runs in float, and why
                                          (static or dynamic as the model shows, unless told;
                                          --lowering says which lowering made the model, and a
                                          model made by another is an error; --qconfig gives the
                                          qconfig_dict used for prepare, so ops under a None
                                          qconfig say so: NAME is none, x86, fbgemm, qnnpack,
                                          onednn, default, dynamic, fp16, qat, qat-default, or
                                          MODULE:ATTRIBUTE naming a QConfig or QConfigMapping)
    qgraph quantize | compare | sensitivity | draw ...
                                          see ``qgraph.cli_tools``
    qgraph --version

MODEL.pt is a TorchScript archive written by ``torch.jit.save``. Bad input
(a missing file, a file that is not TorchScript, an unknown method) gives a
one-line error on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from qgraph.cli_inputs import QCONFIG_NAMES, UsageError, load_model, parse_qconfig_entries
from qgraph.cli_tools import add_commands
from qgraph.ir import CppModule, method_graph
from qgraph.opt import OptError, run_opt
from qgraph.pipeline import Pipeline, Stage, format_module_graphs, inspect
from qgraph.prepare import prepare_pipeline
from qgraph.quant.lowering import LOWERINGS, lowering_of
from qgraph.quant.qconfig import script_qconfig_dict
from qgraph.quant.quant_type import QuantType
from qgraph.report import detected_quant_type, float_op_report

__all__ = ["USAGE_ERROR", "UsageError", "main", "parse_qconfig_entries"]

USAGE_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.command(args)
    except UsageError as err:
        print(f"qgraph: error: {err}", file=sys.stderr)
        return USAGE_ERROR


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qgraph", description="Graph-mode quantization of TorchScript models.")
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    show = commands.add_parser("show", help="print the graphs of a saved TorchScript model")
    show.add_argument("model", metavar="MODEL.pt", help="a file written by torch.jit.save")
    which = show.add_mutually_exclusive_group()
    which.add_argument("--method", default="forward", help="method of the root module to print (default: forward)")
    which.add_argument("--all", action="store_true", help="print every method of the root and of every submodule")
    show.set_defaults(command=_show)

    run_passes = commands.add_parser(
        "passes", help="run prepare's pipeline on a saved model, printing forward after each stage"
    )
    run_passes.add_argument("model", metavar="MODEL.pt", help="a file written by torch.jit.save")
    run_passes.add_argument("--dump-dir", metavar="DIR", help="also write every method graph after each stage to DIR")
    run_passes.add_argument(
        "--dynamic", action="store_true", help="prepare for dynamic quantization (prepare_dynamic_jit)"
    )
    _add_qconfig_option(run_passes, "an entry of the qconfig_dict to prepare with")
    run_passes.set_defaults(command=_passes)

    opt = commands.add_parser("opt", help="run one pass on a graph (FILE.ir) or a model's source (FILE.py), print it")
    opt.add_argument("--pass", dest="pass_name", required=True, metavar="NAME", help="the pass (a stage name)")
    opt.add_argument("file", metavar="FILE", help="IR text (.ir) or Python source defining Model (.py)")
    opt.add_argument("--dynamic", action="store_true", help="dynamic quantization (prepare_dynamic_jit)")
    _add_lowering_option(opt, "the lowering convert's stages are those of")
    _add_qconfig_option(opt, "an entry of the qconfig_dict to prepare with")
    opt.set_defaults(command=_opt)

    report = commands.add_parser("report", help="list the ops a quantized model still runs in float, and why")
    report.add_argument(
        "model", metavar="MODEL.pt", help="a model quantized by qgraph (or PyTorch), saved by torch.jit.save"
    )
    kind = report.add_mutually_exclusive_group()
    kind.add_argument(
        "--dynamic", action="store_true", help="the model was quantized dynamically (activations stay float by design)"
    )
    kind.add_argument("--static", action="store_true", help="the model was quantized statically")
    _add_lowering_option(report, "the lowering the model was converted with (checked against the model)", None)
    _add_qconfig_option(report, "an entry of the qconfig_dict used for prepare")
    report.set_defaults(command=_report)
    add_commands(commands)
    return parser


def _add_qconfig_option(command: argparse.ArgumentParser, what: str) -> None:
    command.add_argument(
        "--qconfig",
        action="append",
        default=[],
        metavar="[PATH=]NAME",
        help=f"{what} (repeatable; PATH defaults to the whole model): NAME is one of {', '.join(QCONFIG_NAMES)}, "
        "or MODULE:ATTRIBUTE naming a QConfig or QConfigMapping",
    )


def _add_lowering_option(command: argparse.ArgumentParser, what: str, default: str | None = "reference") -> None:
    shown = f"default: {default}" if default else "default: as the model says"
    command.add_argument("--lowering", choices=LOWERINGS, default=default, help=f"{what} ({shown})")


def _version() -> str:
    try:
        version = importlib.metadata.version("qgraph")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return f"qgraph {version} (torch {torch.__version__})"


def _show(args: argparse.Namespace) -> int:
    module = load_model(args.model)
    if args.all:
        print(format_module_graphs(module), end="")
    else:
        print(_method_graph(module, args.method), end="")
    return 0


def _passes(args: argparse.Namespace) -> int:
    qconfig_dict = script_qconfig_dict(parse_qconfig_entries(args.qconfig))
    module = load_model(args.model)
    quant_type = QuantType.DYNAMIC if args.dynamic else QuantType.STATIC
    prepare = prepare_pipeline(qconfig_dict, quant_type)
    print(f"=== input ===\n{method_graph(module)}", end="")
    with inspect(dump_dir=args.dump_dir):
        Pipeline(prepare.name, [_printing(stage) for stage in prepare.stages]).run(module)
    return 0


def _opt(args: argparse.Namespace) -> int:
    qconfig_dict = parse_qconfig_entries(args.qconfig)
    quant_type = QuantType.DYNAMIC if args.dynamic else QuantType.STATIC
    if not Path(args.file).is_file():
        raise UsageError(f"{args.file}: no such file")
    try:
        print(run_opt(args.pass_name, args.file, qconfig_dict, quant_type, args.lowering), end="")
    except OptError as err:
        raise UsageError(str(err)) from None
    return 0


def _report(args: argparse.Namespace) -> int:
    qconfig_dict = parse_qconfig_entries(args.qconfig) if args.qconfig else None
    model = load_model(args.model)
    if args.lowering is not None and lowering_of(model) != args.lowering:
        raise UsageError(f"{args.model} was converted with lowering {lowering_of(model)!r}, not {args.lowering!r}")
    if args.dynamic or args.static:
        quant_type = QuantType.DYNAMIC if args.dynamic else QuantType.STATIC
    else:
        quant_type = detected_quant_type(model)
    print(float_op_report(model, qconfig_dict, quant_type=quant_type).format())
    return 0


def _printing(stage: Stage) -> Stage:
    def run(module: CppModule) -> CppModule | None:
        result = stage.run(module)
        print(f"=== after {stage.name} ===\n{method_graph(module if result is None else result)}", end="")
        return result

    return Stage(stage.name, run)


def _method_graph(module: CppModule, name: str) -> torch._C.Graph:
    methods = module._method_names()
    if name not in methods:
        raise UsageError(f"the model has no method {name!r} (methods: {', '.join(sorted(methods))})")
    return method_graph(module, name)


if __name__ == "__main__":
    sys.exit(main())
