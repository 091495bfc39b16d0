"""The ``qgraph`` command line.

    qgraph show MODEL.pt                  the root module's forward graph
    qgraph show MODEL.pt --method NAME    another method of the root module
    qgraph show MODEL.pt --all            every method of every module, headed by module path
    qgraph passes MODEL.pt [--dump-dir DIR]
                                          run the standalone graph passes through the
                                          pipeline runner, printing forward after each
    qgraph report MODEL.pt [--dynamic]    the ops a quantized model still runs in float, and why

MODEL.pt is a TorchScript archive written by ``torch.jit.save``. Bad input
(a missing file, a file that is not TorchScript, an unknown method) gives a
one-line error on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

import torch

from qgraph.ir import CppModule, method_graph
from qgraph.pipeline import Pipeline, Stage, format_module_graphs, graph_stage, inspect

USAGE_ERROR = 2


class UsageError(Exception):
    """Bad input from the user: reported in one line, exit code 2."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.command(args)
    except UsageError as err:
        print(f"qgraph: error: {err}", file=sys.stderr)
        return USAGE_ERROR


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qgraph", description="Graph-mode quantization of TorchScript models.")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    show = commands.add_parser("show", help="print the graphs of a saved TorchScript model")
    show.add_argument("model", metavar="MODEL.pt", help="a file written by torch.jit.save")
    which = show.add_mutually_exclusive_group()
    which.add_argument("--method", default="forward", help="method of the root module to print (default: forward)")
    which.add_argument("--all", action="store_true", help="print every method of the root and of every submodule")
    show.set_defaults(command=_show)

    run_passes = commands.add_parser(
        "passes", help="run the standalone graph passes on a saved model, printing forward after each"
    )
    run_passes.add_argument("model", metavar="MODEL.pt", help="a file written by torch.jit.save")
    run_passes.add_argument("--dump-dir", metavar="DIR", help="also write every method graph after each pass to DIR")
    run_passes.set_defaults(command=_passes)

    report = commands.add_parser("report", help="list the ops a quantized model still runs in float, and why")
    report.add_argument("model", metavar="MODEL.pt", help="a model quantized by qgraph (or PyTorch), saved by torch.jit.save")
    report.add_argument(
        "--dynamic", action="store_true", help="the model was quantized dynamically (activations stay float by design)"
    )
    report.set_defaults(command=_report)
    return parser


def _show(args: argparse.Namespace) -> int:
    module = _load(args.model)
    if args.all:
        print(format_module_graphs(module), end="")
    else:
        print(_method_graph(module, args.method), end="")
    return 0


def _passes(args: argparse.Namespace) -> int:
    module = _load(args.model)
    print(f"=== input ===\n{method_graph(module)}", end="")
    pipeline = Pipeline("passes", [_printing(stage) for stage in standalone_stages()])
    with inspect(dump_dir=args.dump_dir):
        pipeline.run(module)
    return 0


def _report(args: argparse.Namespace) -> int:
    from torch.ao.quantization.quant_type import QuantType

    from qgraph.report import float_op_report

    quant_type = QuantType.DYNAMIC if args.dynamic else QuantType.STATIC
    print(float_op_report(_load(args.model), quant_type=quant_type).format())
    return 0


def standalone_stages() -> list[Stage]:
    """The graph passes that need no qconfig, in the order ``prepare`` runs them."""
    return [
        graph_stage("inline-fork-wait", torch._C._jit_pass_inline_fork_wait),
        Stage("fold-conv-bn", lambda module: _pass("fold_conv_bn")(module)),
        graph_stage("swap-functional-linear", lambda graph: _pass("swap_functional_linear")(graph)),
        graph_stage("fuse-linear", lambda graph: _pass("fuse_linear")(graph)),
        graph_stage("canonicalize-conv", lambda graph: _pass("canonicalize_conv")(graph)),
    ]


def _pass(name: str):
    """The pass function ``passes.<name>.<name>``, imported when its stage first runs.

    Read from its own module: once ``passes.<name>`` has been imported, the
    package attribute of that name is the submodule, not the function.
    """
    return getattr(importlib.import_module(f"passes.{name}"), name)


def _printing(stage: Stage) -> Stage:
    def run(module: CppModule) -> CppModule | None:
        result = stage.run(module)
        print(f"=== after {stage.name} ===\n{method_graph(module if result is None else result)}", end="")
        return result

    return Stage(stage.name, run)


def _load(path: str) -> CppModule:
    try:
        return torch.jit.load(path, map_location="cpu")._c
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (ValueError, RuntimeError, OSError) as err:
        # torch.jit.load says "does not exist" / "is a directory" as ValueError
        # and reports a non-TorchScript file as a RuntimeError from the zip reader.
        reason = _first_sentence(str(err)) or type(err).__name__
        if "does not exist" in reason:
            raise UsageError(f"{path}: no such file") from None
        if "is a directory" in reason:
            raise UsageError(f"{path}: is a directory") from None
        raise UsageError(f"{path}: not a TorchScript archive ({reason})") from None


def _method_graph(module: CppModule, name: str) -> torch._C.Graph:
    methods = module._method_names()
    if name not in methods:
        raise UsageError(f"the model has no method {name!r} (methods: {', '.join(sorted(methods))})")
    return method_graph(module, name)


def _first_sentence(message: str, limit: int = 120) -> str:
    sentence = message.strip().split("\n")[0].split(". ")[0].rstrip(".")
    return sentence if len(sentence) <= limit else sentence[: limit - 3] + "..."


if __name__ == "__main__":
    sys.exit(main())
