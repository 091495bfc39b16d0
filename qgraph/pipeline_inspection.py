"""Inspection of pipeline runs: what each stage left, dumped, counted, timed and linted.

``inspect(...)`` (re-exported as ``qgraph.pipeline.inspect``) switches
inspection on for every ``Pipeline`` run inside its ``with`` block, and the
environment variable ``QGRAPH_DUMP_DIR`` switches dumping on without it;
``active_inspection()`` is what a pipeline asks before each stage. After a
stage, ``Inspection.after_stage`` lints the IR (``PipelineError`` names the
stage that broke it), calls the ``on_stage`` hook, counts nodes by kind,
writes the dump (and its picture) and appends a ``StageRecord`` to the
``Report``. The walks of the module tree they share (``method_graphs``,
``format_module_graphs``, ``node_counts``) live here too.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from qgraph.ir import CppModule, as_cpp, method_graph, named_modules, walk

__all__ = [
    "DUMP_DIR_VARIABLE",
    "DUMP_PICTURES",
    "Inspection",
    "PipelineError",
    "Report",
    "StageRecord",
    "active_inspection",
    "format_module_graphs",
    "inspect",
    "method_graphs",
    "node_counts",
]


DUMP_DIR_VARIABLE = "QGRAPH_DUMP_DIR"

StageHook = Callable[[str, str, CppModule], None]

# Writers of a picture of a module, by file suffix, for dumps with pictures;
# the driver registers ".svg" (qgraph.draw), so this layer knows nothing of drawing.
DUMP_PICTURES: dict[str, Callable[[CppModule, str], None]] = {}


class PipelineError(RuntimeError):
    """A stage left the IR invalid; ``pipeline`` and ``stage`` name where it happened."""

    def __init__(self, message: str, pipeline: str, stage: str):
        super().__init__(message)
        self.pipeline = pipeline
        self.stage = stage


@dataclass
class StageRecord:
    """What inspection saw after one stage (None for what it was not asked to measure)."""

    pipeline: str
    stage: str
    seconds: float | None
    node_counts: dict[str, int] | None
    dump_path: str | None


@dataclass
class Report:
    """Records of every stage run while an ``inspect`` block was active, in run order."""

    stages: list[StageRecord] = field(default_factory=list)

    def format(self) -> str:
        """A table, one row per stage: seconds, node count and change in counts by kind, dump file."""
        header = ("#", "pipeline", "stage", "seconds", "nodes", "changed kinds", "dump")
        rows = [header]
        previous: StageRecord | None = None
        for index, record in enumerate(self.stages):
            rows.append(
                (
                    str(index),
                    record.pipeline,
                    record.stage,
                    "-" if record.seconds is None else f"{record.seconds:.4f}",
                    "-" if record.node_counts is None else str(sum(record.node_counts.values())),
                    _count_changes(previous, record),
                    record.dump_path or "-",
                )
            )
            previous = record
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * width for width in widths))
        return "\n".join(lines)


def _count_changes(previous: StageRecord | None, record: StageRecord) -> str:
    if record.node_counts is None or previous is None or previous.node_counts is None:
        return "-"
    if previous.pipeline != record.pipeline:
        return "-"
    before, after = previous.node_counts, record.node_counts
    deltas = {kind: after.get(kind, 0) - before.get(kind, 0) for kind in set(before) | set(after)}
    changed = sorted((kind for kind, delta in deltas.items() if delta), key=lambda k: (-abs(deltas[k]), k))
    if not changed:
        return "none"
    # A stage like observer insertion adds dozens of kinds (the observers'
    # own code); the largest changes say what the stage did.
    shown = " ".join(f"{kind}{deltas[kind]:+d}" for kind in changed[:_CHANGES_SHOWN])
    hidden = len(changed) - _CHANGES_SHOWN
    return f"{shown} (+{hidden} more kinds)" if hidden > 0 else shown


_CHANGES_SHOWN = 6


@dataclass
class Inspection:
    report: Report
    dump_dir: str | None
    count_nodes: bool
    time: bool
    lint: bool
    svg: bool = False
    on_stage: StageHook | None = None
    dumps_written: int = 0

    def after_stage(self, pipeline: str, stage: str, module: CppModule, seconds: float | None) -> None:
        if self.lint:
            _lint(module, pipeline, stage)
        if self.on_stage is not None:
            self.on_stage(pipeline, stage, module)
        counts = node_counts(module) if self.count_nodes else None
        dump_path = self._dump(pipeline, stage, module) if self.dump_dir else None
        self.report.stages.append(StageRecord(pipeline, stage, seconds, counts, dump_path))

    def _dump(self, pipeline: str, stage: str, module: CppModule) -> str:
        assert self.dump_dir is not None, "dumps are written only with a dump directory"
        os.makedirs(self.dump_dir, exist_ok=True)
        name = f"{self.dumps_written:02d}-{_file_part(pipeline)}-{_file_part(stage)}.txt"
        self.dumps_written += 1
        path = os.path.join(self.dump_dir, name)
        with open(path, "w", encoding="utf-8") as out:
            out.write(f"# pipeline {pipeline!r}, after stage {stage!r}\n")
            out.write(format_module_graphs(module))
        if self.svg:
            DUMP_PICTURES[".svg"](module, path[: -len(".txt")] + ".svg")
        return path


_ACTIVE: contextvars.ContextVar[Inspection | None] = contextvars.ContextVar("qgraph_inspection", default=None)
# Inspection set up from QGRAPH_DUMP_DIR, kept per directory so dump numbers
# keep increasing across the pipeline runs of one process.
_FROM_ENVIRONMENT: dict[str, Inspection] = {}


def active_inspection() -> Inspection | None:
    inspection = _ACTIVE.get()
    if inspection is not None:
        return inspection
    dump_dir = os.environ.get(DUMP_DIR_VARIABLE)
    if not dump_dir:
        return None
    if dump_dir not in _FROM_ENVIRONMENT:
        _FROM_ENVIRONMENT[dump_dir] = Inspection(Report(), dump_dir, False, False, False)
    return _FROM_ENVIRONMENT[dump_dir]


@contextlib.contextmanager
def inspect(
    dump_dir: str | os.PathLike | None = None,
    count_nodes: bool = False,
    time: bool = False,
    lint: bool = False,
    svg: bool = False,
    on_stage: StageHook | None = None,
) -> Iterator[Report]:
    """Inspect every Pipeline run inside the ``with`` block; yields the ``Report`` it fills.

    ``dump_dir`` defaults to the ``QGRAPH_DUMP_DIR`` environment variable
    (no dumps when neither is set); ``svg`` adds a picture of ``forward``
    beside each dump (Graphviz's ``dot`` must be installed);
    ``on_stage(pipeline, stage, module)`` sees the module after each stage.
    Every stage gets a record, even with all options off. Blocks nest: the
    innermost one is in effect.
    """
    if svg and dump_dir is None and not os.environ.get(DUMP_DIR_VARIABLE):
        raise ValueError("inspect(svg=True) writes its pictures beside the dumps: give dump_dir")
    if svg and ".svg" not in DUMP_PICTURES:
        raise RuntimeError("inspect(svg=True) draws with qgraph.draw, which registers itself: import qgraph.draw first")
    if dump_dir is None:
        dump_dir = os.environ.get(DUMP_DIR_VARIABLE) or None
    report = Report()
    inspection = Inspection(
        report, os.fspath(dump_dir) if dump_dir is not None else None, count_nodes, time, lint, svg, on_stage
    )
    token = _ACTIVE.set(inspection)
    try:
        yield report
    finally:
        _ACTIVE.reset(token)


# --- walking the module tree --------------------------------------------------------------


def method_graphs(module: CppModule, distinct: bool = False) -> Iterator[tuple[str, str, torch._C.Graph]]:
    """(module path, method name, graph) for every method of ``module`` and its submodules.

    Instances of one class type share their method graphs; with ``distinct``
    each class type's graphs come once (at the first path that has it).
    """
    seen: set[str] = set()
    for path, submodule in named_modules(as_cpp(module)):
        if distinct:
            type_name = submodule._type().qualified_name()
            if type_name in seen:
                continue
            seen.add(type_name)
        for method in submodule._method_names():
            yield path, method, method_graph(submodule, method)


def format_module_graphs(module: CppModule) -> str:
    """Every method graph of the module tree as text, each under a ``=== <path> : <method> ===`` heading.

    The root's path reads ``<root>``.
    """
    sections = []
    for path, method, graph in method_graphs(module):
        sections.append(f"=== {path or '<root>'} : {method} ===\n{graph}")
    return "\n".join(sections)


def node_counts(module: CppModule) -> dict[str, int]:
    """Nodes by kind over every distinct method graph, nested blocks included."""
    counts: Counter[str] = Counter()
    for _, _, graph in method_graphs(module, distinct=True):
        counts.update(node.kind() for node in walk(graph))
    return dict(sorted(counts.items()))


_INTERNAL_ASSERT = re.compile(r".*please report a bug to PyTorch\.\s*", re.S)


def _lint(module: CppModule, pipeline: str, stage: str) -> None:
    for path, method, graph in method_graphs(module, distinct=True):
        try:
            torch._C._jit_pass_lint(graph)
        except RuntimeError as err:
            # Lint reports through PyTorch's internal asserts; the cause is the stage, not PyTorch.
            reason = _INTERNAL_ASSERT.sub("", str(err)).strip()
            raise PipelineError(
                f"pipeline {pipeline!r}, stage {stage!r} left invalid IR in {path or '<root>'} : {method}: {reason}",
                pipeline,
                stage,
            ) from err


def _file_part(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
