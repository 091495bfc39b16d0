"""The ``qgraph`` command line.

    qgraph show MODEL.pt                  the root module's forward graph
    qgraph show MODEL.pt --method NAME    another method of the root module
    qgraph show MODEL.pt --all            every method of every module, headed by module path
    qgraph passes MODEL.pt [--dump-dir DIR]
                                          run the standalone graph passes through the
                                          pipeline runner, printing forward after each
    qgraph report MODEL.pt [--dynamic | --static] [--qconfig [PATH=]NAME ...]
                                          the ops a quantized model still runs in float, and why
                                          (static or dynamic as the model shows, unless told;
                                          --qconfig gives the qconfig_dict used for prepare, so
                                          ops under a None qconfig say so: NAME is none, x86,
                                          fbgemm, qnnpack, onednn, default, dynamic, fp16, or
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
import importlib
import importlib.metadata
import sys
from collections.abc import Sequence
from typing import Any

import torch

from qgraph.ir import CppModule, method_graph
from qgraph.pipeline import Pipeline, Stage, format_module_graphs, graph_stage, inspect

USAGE_ERROR = 2
# Names ``report --qconfig`` takes: None, an engine's default qconfig, or one of torch.ao's named qconfigs.
QCONFIG_NAMES = ("none", "x86", "fbgemm", "qnnpack", "onednn", "default", "dynamic", "fp16")


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
    parser.add_argument("--version", action="version", version=_version())
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
    kind = report.add_mutually_exclusive_group()
    kind.add_argument(
        "--dynamic", action="store_true", help="the model was quantized dynamically (activations stay float by design)"
    )
    kind.add_argument("--static", action="store_true", help="the model was quantized statically")
    report.add_argument(
        "--qconfig",
        action="append",
        default=[],
        metavar="[PATH=]NAME",
        help="an entry of the qconfig_dict used for prepare (repeatable; PATH defaults to the whole model): "
        f"NAME is one of {', '.join(QCONFIG_NAMES)}, or MODULE:ATTRIBUTE naming a QConfig or QConfigMapping",
    )
    report.set_defaults(command=_report)

    from qgraph.cli_tools import add_commands

    add_commands(commands)
    return parser


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
    module = load_model(args.model)
    print(f"=== input ===\n{method_graph(module)}", end="")
    pipeline = Pipeline("passes", [_printing(stage) for stage in standalone_stages()])
    with inspect(dump_dir=args.dump_dir):
        pipeline.run(module)
    return 0


def _report(args: argparse.Namespace) -> int:
    from torch.ao.quantization.quant_type import QuantType

    from qgraph.report import detected_quant_type, float_op_report

    qconfig_dict = parse_qconfig_entries(args.qconfig) if args.qconfig else None
    model = load_model(args.model)
    if args.dynamic or args.static:
        quant_type = QuantType.DYNAMIC if args.dynamic else QuantType.STATIC
    else:
        quant_type = detected_quant_type(model)
    print(float_op_report(model, qconfig_dict, quant_type=quant_type).format())
    return 0


def _named_qconfig(name: str):
    from torch.ao.quantization import (
        default_dynamic_qconfig,
        default_qconfig,
        float16_dynamic_qconfig,
        get_default_qconfig,
    )

    if name in ("x86", "fbgemm", "qnnpack", "onednn"):
        return get_default_qconfig(name)
    named = {
        "none": None,
        "default": default_qconfig,
        "dynamic": default_dynamic_qconfig,
        "fp16": float16_dynamic_qconfig,
    }
    return named[name]


def parse_qconfig_entries(entries: Sequence[str]) -> Any:
    """``["x86", "head=none"]`` -> ``{"": <x86 qconfig>, "head": None}``; UsageError for an unknown name.

    ``MODULE:ATTRIBUTE`` imports a QConfig (an entry like the others), or a
    QConfigMapping or qconfig_dict (then the only entry, without PATH).
    """
    from torch.ao.quantization import QConfig

    qconfig_dict = {}
    for entry in entries:
        path, _, name = entry.rpartition("=")
        qconfig = resolve_qconfig_name(name, entry)
        if not (qconfig is None or isinstance(qconfig, QConfig)):
            if path or len(entries) > 1:
                raise UsageError(f"--qconfig {entry}: a QConfigMapping or qconfig_dict must be the only --qconfig")
            return qconfig
        qconfig_dict[path] = qconfig
    return qconfig_dict


def resolve_qconfig_name(name: str, entry: str | None = None) -> Any:
    """A ``--qconfig`` NAME: one of ``QCONFIG_NAMES``, or ``MODULE:ATTRIBUTE`` imported (a callable is called)."""
    from torch.ao.quantization import QConfig, QConfigMapping

    if name.lower() in QCONFIG_NAMES:
        return _named_qconfig(name.lower())
    where = f"--qconfig {entry or name}"
    module_name, colon, attribute = name.partition(":")
    if not colon or not module_name or not attribute:
        raise UsageError(f"{where}: unknown qconfig {name!r} (one of {', '.join(QCONFIG_NAMES)}, or MODULE:ATTRIBUTE)")
    try:
        value: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            value = getattr(value, part)
    except ImportError as err:
        raise UsageError(f"{where}: cannot import {module_name} ({err})") from None
    except AttributeError:
        raise UsageError(f"{where}: {module_name} has no attribute {attribute}") from None
    if callable(value) and not isinstance(value, (QConfig, QConfigMapping, dict)):
        value = value()
    if value is not None and not isinstance(value, (QConfig, QConfigMapping, dict)):
        raise UsageError(f"{where}: {name} is a {type(value).__name__}, not a QConfig, QConfigMapping or qconfig_dict")
    return value


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


def load_model(path: str) -> CppModule:
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
