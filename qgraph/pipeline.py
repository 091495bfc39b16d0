"""Named stages over a TorchScript module, with optional inspection after each stage.

``prepare_jit`` and ``convert_jit`` are lists of stages run by a ``Pipeline``.
A stage takes the ``torch._C.ScriptModule`` and either changes it in place
(returning None) or returns a new one::

    pipeline = Pipeline("prepare", [
        Stage("fold-conv-bn", passes.fold_conv_bn),
        graph_stage("fuse-linear", passes.fuse_linear),
    ])
    module_c = pipeline.run(module_c)

Inspection is switched on around any code that runs pipelines, without
changing that code's signature::

    with qgraph.pipeline.inspect(dump_dir="dumps", count_nodes=True, lint=True) as report:
        prepared = qgraph.prepare_jit(model, qconfig_dict)
    print(report.format())

After each stage it can dump every method graph of the module and its
submodules (``dumps/03-prepare-fuse-linear.txt``), count nodes by kind, time
the stage, and lint the IR, failing with ``PipelineError`` naming the stage
that broke it. With ``svg=True`` each dump gets a picture beside it
(``dumps/03-prepare-fuse-linear.svg``, drawn by ``qgraph.draw``), and
``on_stage(pipeline, stage, module)`` is called after every stage. Setting
the environment variable ``QGRAPH_DUMP_DIR`` dumps every pipeline run to
that directory without any code change (and is the default ``dump_dir`` of
``inspect``). With inspection off a pipeline only calls its stages: no
graph is walked and nothing is timed.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from time import perf_counter

import torch

from qgraph.ir import CppModule, as_cpp, call_graph, like, method_graph, named_modules, walk

__all__ = [
    "DUMP_DIR_VARIABLE",
    "DUMP_PICTURES",
    "Pipeline",
    "PipelineError",
    "Report",
    "Stage",
    "StageRecord",
    "format_module_graphs",
    "graph_stage",
    "method_stage",
    "call_tree_stage",
    "inspect",
    "method_graphs",
    "node_counts",
]

DUMP_DIR_VARIABLE = "QGRAPH_DUMP_DIR"

StageFn = Callable[[CppModule], "CppModule | None"]
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


@dataclass(frozen=True)
class Stage:
    """One named step: ``run(module_c)`` returns a new C++ module, or None after changing it in place."""

    name: str
    run: StageFn


def graph_stage(name: str, graph_pass: Callable[[torch._C.Graph], object]) -> Stage:
    """A stage applying an in-place graph pass to every distinct method graph of the module tree."""

    def run(module: CppModule) -> None:
        for _, _, graph in method_graphs(module, distinct=True):
            graph_pass(graph)

    return Stage(name, run)


def method_stage(name: str, graph_pass: Callable[[torch._C.Graph], object], method_name: str = "forward") -> Stage:
    """A stage applying an in-place graph pass to one method graph of the root module."""

    def run(module: CppModule) -> None:
        graph_pass(method_graph(module, method_name))

    return Stage(name, run)


def call_tree_stage(name: str, graph_pass: Callable[[torch._C.Graph], object], method_name: str = "forward") -> Stage:
    """A stage applying an in-place graph pass to every method graph reachable from the root's ``method_name``.

    Each (class type, method) graph once, however many instances share it.
    """

    def run(module: CppModule) -> None:
        calls = call_graph(module, method_name)
        for key in calls.nodes:
            graph_pass(calls.nodes[key]["graph"])

    return Stage(name, run)


class Pipeline:
    """Stages run in order over one module; see the module docstring."""

    def __init__(self, name: str, stages: Sequence[Stage]):
        if not isinstance(name, str) or not name:
            raise ValueError(f"a pipeline needs a non-empty name, got {name!r}")
        stages = tuple(stages)
        seen: set[str] = set()
        for stage in stages:
            if not isinstance(stage, Stage):
                raise TypeError(f"pipeline {name!r}: expected Stage objects, got {type(stage).__name__}")
            if stage.name in seen:
                raise ValueError(f"pipeline {name!r}: stage name {stage.name!r} is used twice")
            seen.add(stage.name)
        self.name = name
        self.stages = stages

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, [{', '.join(s.name for s in self.stages)}])"

    def run(self, module_c: CppModule) -> CppModule:
        """Run every stage on ``module_c``; returns the final module.

        A Python ScriptModule is accepted too and the result is returned as
        the same kind of object.
        """
        start = module = as_cpp(module_c)
        inspection = _active_inspection()
        for stage in self.stages:
            module = self._run_stage(stage, module, inspection)
        return module_c if module is start else like(module, module_c)

    def _run_stage(self, stage: Stage, module: CppModule, inspection: _Inspection | None) -> CppModule:
        started = perf_counter() if inspection is not None and inspection.time else None
        try:
            result = stage.run(module)
        except Exception as err:
            err.add_note(f"in pipeline {self.name!r}, stage {stage.name!r}")
            raise
        if result is not None:
            if isinstance(result, torch.jit.ScriptModule):
                result = result._c
            if not isinstance(result, CppModule):
                raise TypeError(
                    f"pipeline {self.name!r}, stage {stage.name!r} returned {type(result).__name__}; "
                    "a stage returns a torch._C.ScriptModule or None"
                )
            module = result
        if inspection is not None:
            seconds = perf_counter() - started if started is not None else None
            inspection.after_stage(self.name, stage.name, module, seconds)
        return module


# --- inspection ---------------------------------------------------------------------------


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
class _Inspection:
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


_ACTIVE: contextvars.ContextVar[_Inspection | None] = contextvars.ContextVar("qgraph_inspection", default=None)
# Inspection set up from QGRAPH_DUMP_DIR, kept per directory so dump numbers
# keep increasing across the pipeline runs of one process.
_FROM_ENVIRONMENT: dict[str, _Inspection] = {}


def _active_inspection() -> _Inspection | None:
    inspection = _ACTIVE.get()
    if inspection is not None:
        return inspection
    dump_dir = os.environ.get(DUMP_DIR_VARIABLE)
    if not dump_dir:
        return None
    if dump_dir not in _FROM_ENVIRONMENT:
        _FROM_ENVIRONMENT[dump_dir] = _Inspection(Report(), dump_dir, False, False, False)
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
    inspection = _Inspection(
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
