"""What the ``qgraph`` command line reads: saved models, DATA.pt files and ``--qconfig`` entries.

Every bad input is a ``UsageError``: one line on stderr, exit code 2
(``qgraph.cli.main``). A ``--qconfig`` entry is ``[PATH=]NAME``, NAME one of
``QCONFIG_NAMES`` or ``MODULE:ATTRIBUTE`` naming a QConfig, a
QConfigMapping or a qconfig_dict (a callable is called); DATA.pt is a list
written by ``torch.save``: one element per call of the model, a tuple of its
arguments or a single tensor.
"""

from __future__ import annotations

import argparse
import importlib
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from qgraph.compare import as_batches
from qgraph.ir import CppModule

__all__ = [
    "QCONFIG_NAMES",
    "UsageError",
    "add_quantization_options",
    "engine_qconfig",
    "first_sentence",
    "load_batches",
    "load_model",
    "named_qconfig",
    "parse_qconfig_entries",
    "qconfig_from_options",
    "quantized_engine",
    "resolve_qconfig_name",
]

_ENGINES = ("x86", "fbgemm", "qnnpack", "onednn")
# Names ``--qconfig`` takes: None, an engine's default qconfig, or one of torch.ao's named qconfigs.
QCONFIG_NAMES = ("none", "x86", "fbgemm", "qnnpack", "onednn", "default", "dynamic", "fp16")


class UsageError(Exception):
    """Bad input from the user: reported in one line, exit code 2."""


def first_sentence(message: str, limit: int = 120) -> str:
    sentence = message.strip().split("\n")[0].split(". ")[0].rstrip(".")
    return sentence if len(sentence) <= limit else sentence[: limit - 3] + "..."


def load_model(path: str) -> CppModule:
    """The TorchScript archive at ``path``, on the CPU; UsageError for a missing or unreadable file."""
    try:
        return torch.jit.load(path, map_location="cpu")._c
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (ValueError, RuntimeError, OSError) as err:
        # torch.jit.load says "does not exist" / "is a directory" as ValueError
        # and reports a non-TorchScript file as a RuntimeError from the zip reader.
        reason = first_sentence(str(err)) or type(err).__name__
        if "does not exist" in reason:
            raise UsageError(f"{path}: no such file") from None
        if "is a directory" in reason:
            raise UsageError(f"{path}: is a directory") from None
        raise UsageError(f"{path}: not a TorchScript archive ({reason})") from None


def load_batches(path: str) -> list[tuple]:
    """The calls in a DATA.pt file; UsageError for anything but a non-empty list of tuples or tensors."""
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file")
    if os.path.isdir(path):
        raise UsageError(f"{path}: is a directory")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.load's notice that a TorchScript archive is not data
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch.load reports a bad file through many exception types
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "TorchScript" in reason:
            raise UsageError(f"{path}: a TorchScript model, not a torch.save'd list of inputs") from None
        raise UsageError(f"{path}: not a torch.save'd list of inputs ({first_sentence(reason)})") from None
    if isinstance(data, (torch.Tensor, tuple)):
        data = [data]
    if not isinstance(data, list) or not data:
        raise UsageError(f"{path}: expected a non-empty list of input tuples (or tensors), got {_describe(data)}")
    for index, batch in enumerate(data):
        if not isinstance(batch, (torch.Tensor, tuple, list)):
            raise UsageError(f"{path}: element {index} is {_describe(batch)}, not a tuple of inputs or a tensor")
    return as_batches(data)


def _describe(value: Any) -> str:
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    return f"a {type(value).__name__}"


def named_qconfig(name: str) -> Any:
    """The QConfig (or None) of one of ``QCONFIG_NAMES``."""
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


def parse_qconfig_entries(entries: Sequence[str], resolve: Callable[[str, str], Any] | None = None) -> Any:
    """``["x86", "head=none"]`` -> ``{"": <x86 qconfig>, "head": None}``; UsageError for an unknown name.

    ``MODULE:ATTRIBUTE`` imports a QConfig (an entry like the others), or a
    QConfigMapping or qconfig_dict (then the only entry, without PATH).
    ``resolve(name, entry)`` reads a NAME (default ``resolve_qconfig_name``).
    """
    from torch.ao.quantization import QConfig

    qconfig_dict = {}
    for entry in entries:
        path, _, name = entry.rpartition("=")
        qconfig = (resolve or resolve_qconfig_name)(name, entry)
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
        return named_qconfig(name.lower())
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


# --- quantization options ---------------------------------------------------------------------------


def add_quantization_options(parser: argparse.ArgumentParser) -> None:
    """--qconfig, --per-tensor, --dynamic and --dtype, read by ``qconfig_from_options``."""
    parser.add_argument(
        "--qconfig",
        action="append",
        default=[],
        metavar="[PATH=]NAME",
        help="the qconfig (repeatable; PATH defaults to the whole model): an engine (x86, fbgemm, qnnpack, onednn; "
        "default x86), none, default, dynamic, fp16, or MODULE:ATTRIBUTE naming a QConfig, QConfigMapping or "
        "qconfig_dict",
    )
    parser.add_argument("--per-tensor", action="store_true", help="per-tensor weights (default: per-channel)")
    parser.add_argument("--dynamic", action="store_true", help="dynamic quantization (weights ahead, activations live)")
    parser.add_argument(
        "--dtype", choices=("qint8", "float16"), default="qint8", help="weight dtype for --dynamic (default qint8)"
    )


def qconfig_from_options(args: argparse.Namespace) -> tuple[Any, str | None]:
    """The qconfig_dict (or QConfigMapping) the options name, and the engine to run with (None: leave it).

    An engine name gives that engine's default qconfig: static (per-channel
    weights unless ``--per-tensor``) or, with ``--dynamic``, dynamic of
    ``--dtype``. Other names are those of ``qgraph report --qconfig``.
    """
    entries = args.qconfig or ["x86"]
    engines = [name.lower() for _, _, name in (e.rpartition("=") for e in entries) if name.lower() in _ENGINES]

    def resolve(name: str, entry: str) -> Any:
        if name.lower() in _ENGINES:
            return engine_qconfig(name.lower(), args)
        return resolve_qconfig_name(name, entry)

    return parse_qconfig_entries(entries, resolve), engines[0] if engines else None


def engine_qconfig(engine: str, args: argparse.Namespace) -> Any:
    """The default qconfig of ``engine`` for the options: static or dynamic, per-channel or per-tensor, dtype."""
    from torch.ao.quantization import (
        QConfig,
        default_dynamic_qconfig,
        default_weight_observer,
        float16_dynamic_qconfig,
        get_default_qconfig,
        per_channel_dynamic_qconfig,
    )

    if args.dynamic:
        if args.dtype == "float16":
            return float16_dynamic_qconfig
        return default_dynamic_qconfig if args.per_tensor else per_channel_dynamic_qconfig
    qconfig = get_default_qconfig(engine)
    return QConfig(activation=qconfig.activation, weight=default_weight_observer) if args.per_tensor else qconfig


@contextmanager
def quantized_engine(name: str | None) -> Iterator[None]:
    """PyTorch's quantized engine set to ``name`` (prepacking happens at convert, so it must match)."""
    if name is None or name not in torch.backends.quantized.supported_engines:
        yield
        return
    saved = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = saved
