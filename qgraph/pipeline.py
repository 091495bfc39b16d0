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

Inspection itself (records, dumps, lint, the walks of the module tree) is
``qgraph.pipeline_inspection``; its names are re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from time import perf_counter

import torch

from qgraph.ir import CppModule, as_cpp, call_graph, like, method_graph
from qgraph.pipeline_inspection import (
    DUMP_DIR_VARIABLE,
    DUMP_PICTURES,
    Inspection,
    PipelineError,
    Report,
    StageRecord,
    active_inspection,
    format_module_graphs,
    inspect,
    method_graphs,
    node_counts,
)

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

StageFn = Callable[[CppModule], "CppModule | None"]


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
        inspection = active_inspection()
        for stage in self.stages:
            module = self._run_stage(stage, module, inspection)
        return module_c if module is start else like(module, module_c)

    def _run_stage(self, stage: Stage, module: CppModule, inspection: Inspection | None) -> CppModule:
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
