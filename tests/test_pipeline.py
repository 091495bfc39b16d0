import os

import pytest
import torch
from torch.testing import FileCheck

import qgraph.pipeline as pipeline_module
import qgraph.pipeline_inspection as inspection_module
from qgraph.ir import clone_module, method_graph, register_attribute
from qgraph.pipeline import Pipeline, PipelineError, Report, Stage, StageRecord, graph_stage, inspect


class ConvRelu(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3)

    def forward(self, x):
        return torch.relu(self.conv(x))


class Branchy(torch.nn.Module):
    def forward(self, x, flag: bool):
        if flag:
            x = torch.neg(x)
        return x


class TwoLinears(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(2, 2)
        self.b = torch.nn.Linear(2, 2)

    def forward(self, x):
        return self.b(self.a(x))


def scripted(model_class):
    """A fresh module: scripting reuses class types (and graphs) per Python class, and stages here edit graphs."""
    torch.manual_seed(0)
    return clone_module(torch.jit.script(model_class())._c)


def inline_forward(module):
    torch._C._jit_pass_inline(method_graph(module))


@pytest.fixture(autouse=True)
def no_dump_dir_from_environment(monkeypatch):
    monkeypatch.delenv(pipeline_module.DUMP_DIR_VARIABLE, raising=False)


def test_stages_run_in_order():
    seen = []
    stages = [Stage(name, lambda module, name=name: seen.append(name)) for name in ["first", "second", "third"]]
    Pipeline("p", stages).run(scripted(ConvRelu))
    assert seen == ["first", "second", "third"]


def test_in_place_stage_keeps_the_module_and_returning_stage_replaces_it():
    module = scripted(ConvRelu)
    received = []

    def mark(module):
        received.append(module)
        register_attribute(module, "marked", True)

    def copy(module):
        received.append(module)
        return clone_module(module)

    result = Pipeline("p", [Stage("mark", mark), Stage("copy", copy), Stage("look", received.append)]).run(module)
    assert received[0] is module and received[1] is module
    assert received[2] is result and result is not module
    assert result.getattr("marked") is True


def test_python_script_module_in_python_script_module_out():
    model = torch.jit.script(ConvRelu())  # the stages here leave graphs alone
    assert Pipeline("p", [Stage("noop", lambda m: None)]).run(model) is model
    copied = Pipeline("p", [Stage("copy", clone_module)]).run(model)
    assert isinstance(copied, torch.jit.ScriptModule) and copied is not model


def test_stage_returning_something_else_is_a_type_error():
    with pytest.raises(TypeError, match="pipeline 'p', stage 'bad' returned int"):
        Pipeline("p", [Stage("bad", lambda m: 3)]).run(scripted(ConvRelu))


def test_a_failing_stage_is_named_in_the_exception_notes():
    def fail(module):
        raise KeyError("boom")

    with pytest.raises(KeyError) as info:
        Pipeline("p", [Stage("explode", fail)]).run(scripted(ConvRelu))
    assert "in pipeline 'p', stage 'explode'" in info.value.__notes__


def test_stage_names_are_unique_within_a_pipeline():
    with pytest.raises(ValueError, match="'twice' is used twice"):
        Pipeline("p", [Stage("twice", lambda m: None), Stage("twice", lambda m: None)])


def test_dump_writes_every_method_graph_after_each_stage(tmp_path):
    module = scripted(ConvRelu)
    stages = [Stage("noop", lambda m: None), Stage("inline", inline_forward)]
    with inspect(dump_dir=tmp_path) as report:
        Pipeline("demo", stages).run(module)

    assert sorted(os.listdir(tmp_path)) == ["00-demo-noop.txt", "01-demo-inline.txt"]
    assert [r.dump_path for r in report.stages] == [
        str(tmp_path / "00-demo-noop.txt"),
        str(tmp_path / "01-demo-inline.txt"),
    ]
    before = (tmp_path / "00-demo-noop.txt").read_text()
    after = (tmp_path / "01-demo-inline.txt").read_text()
    FileCheck().check("pipeline 'demo', after stage 'noop'").check("=== <root> : forward ===").check(
        'prim::CallMethod[name="forward"]'
    ).check("aten::relu").check("=== conv : forward ===").check("=== conv : _conv_forward ===").check(
        "aten::conv2d"
    ).run(before)
    FileCheck().check("=== <root> : forward ===").check_not("prim::CallMethod").check("aten::conv2d").check(
        "aten::relu"
    ).check("=== conv : forward ===").run(after)


def test_dump_numbers_keep_increasing_across_pipelines(tmp_path):
    module = scripted(ConvRelu)
    with inspect(dump_dir=tmp_path):
        Pipeline("first", [Stage("a", lambda m: None)]).run(module)
        Pipeline("second run", [Stage("b/c", lambda m: None)]).run(module)
    assert sorted(os.listdir(tmp_path)) == ["00-first-a.txt", "01-second_run-b_c.txt"]


def test_count_nodes_counts_by_kind_including_nested_blocks():
    module = scripted(Branchy)
    with inspect(count_nodes=True) as report:
        Pipeline("p", [Stage("noop", lambda m: None)]).run(module)
    counts = report.stages[0].node_counts
    assert counts["prim::If"] == 1
    assert counts["aten::neg"] == 1  # only inside the if's block


def test_count_nodes_sees_what_a_stage_changed():
    module = scripted(ConvRelu)
    with inspect(count_nodes=True) as report:
        Pipeline("p", [Stage("noop", lambda m: None), Stage("inline", inline_forward)]).run(module)
    before, after = (r.node_counts for r in report.stages)
    assert before["prim::CallMethod"] == 2  # root calls conv.forward, which calls _conv_forward
    assert after["prim::CallMethod"] == 1  # the root's call is inlined; conv's own graph is unchanged
    assert after["aten::conv2d"] == before["aten::conv2d"] + 1


def test_count_nodes_reads_a_shared_class_type_once():
    module = scripted(TwoLinears)
    assert module.a._type().qualified_name() == module.b._type().qualified_name()
    with inspect(count_nodes=True) as report:
        Pipeline("p", [Stage("noop", lambda m: None)]).run(module)
    assert report.stages[0].node_counts["aten::linear"] == 1


def test_time_records_seconds_only_when_asked():
    module = scripted(ConvRelu)
    with inspect(time=True) as timed:
        Pipeline("p", [Stage("noop", lambda m: None)]).run(module)
    with inspect() as untimed:
        Pipeline("p", [Stage("noop", lambda m: None)]).run(module)
    assert isinstance(timed.stages[0].seconds, float) and timed.stages[0].seconds >= 0
    assert untimed.stages[0] == StageRecord("p", "noop", None, None, None)


def use_before_definition(module):
    """Move the relu in front of the conv call whose result it reads."""
    graph = method_graph(module)
    relu = graph.findNode("aten::relu")
    relu.moveBefore(relu.input().node())


def test_lint_names_the_stage_that_broke_the_ir():
    ran = []
    stages = [
        Stage("fine", lambda m: None),
        Stage("breaks-ir", use_before_definition),
        Stage("never-runs", ran.append),
    ]
    with inspect(lint=True):
        with pytest.raises(
            PipelineError, match=r"pipeline 'p', stage 'breaks-ir' left invalid IR in <root> : forward"
        ) as info:
            Pipeline("p", stages).run(scripted(ConvRelu))
    assert (info.value.pipeline, info.value.stage) == ("p", "breaks-ir")
    assert "INTERNAL ASSERT" not in str(info.value)
    assert ran == []


def test_without_lint_broken_ir_goes_unnoticed():
    with inspect():
        Pipeline("p", [Stage("breaks-ir", use_before_definition)]).run(scripted(ConvRelu))


class Spy:
    def __init__(self, wrapped):
        self.wrapped, self.calls = wrapped, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.wrapped(*args, **kwargs)


@pytest.fixture
def spies(monkeypatch):
    walk = Spy(pipeline_module.method_graphs)
    clock = Spy(pipeline_module.perf_counter)
    # Stages walk the module tree from qgraph.pipeline, inspection from qgraph.pipeline_inspection.
    for module in (pipeline_module, inspection_module):
        monkeypatch.setattr(module, "method_graphs", walk)
    monkeypatch.setattr(pipeline_module, "perf_counter", clock)
    return walk, clock


def test_nothing_is_walked_timed_or_recorded_when_inspection_is_off(spies):
    walk, clock = spies
    with inspect() as earlier:
        pass
    Pipeline("p", [Stage("noop", lambda m: None), Stage("inline", inline_forward)]).run(scripted(ConvRelu))
    assert (walk.calls, clock.calls) == (0, 0)
    assert earlier.stages == []


def test_inspection_with_every_option_off_only_records(spies):
    walk, clock = spies
    with inspect() as report:
        Pipeline("p", [Stage("noop", lambda m: None)]).run(scripted(ConvRelu))
    assert (walk.calls, clock.calls) == (0, 0)
    assert [r.stage for r in report.stages] == ["noop"]


def test_inspection_ends_with_its_block():
    module = scripted(ConvRelu)
    with inspect() as report:
        Pipeline("p", [Stage("inside", lambda m: None)]).run(module)
    Pipeline("p", [Stage("outside", lambda m: None)]).run(module)
    assert [r.stage for r in report.stages] == ["inside"]


def test_innermost_inspection_block_wins():
    module = scripted(ConvRelu)
    with inspect() as outer:
        with inspect(count_nodes=True) as inner:
            Pipeline("p", [Stage("noop", lambda m: None)]).run(module)
    assert outer.stages == [] and inner.stages[0].node_counts is not None


def test_dump_dir_from_the_environment_without_inspect(tmp_path, monkeypatch):
    monkeypatch.setenv(pipeline_module.DUMP_DIR_VARIABLE, str(tmp_path))
    Pipeline("env", [Stage("noop", lambda m: None)]).run(scripted(ConvRelu))
    Pipeline("env", [Stage("again", lambda m: None)]).run(scripted(ConvRelu))
    assert sorted(os.listdir(tmp_path)) == ["00-env-noop.txt", "01-env-again.txt"]


def test_environment_dump_dir_is_the_default_of_inspect(tmp_path, monkeypatch):
    monkeypatch.setenv(pipeline_module.DUMP_DIR_VARIABLE, str(tmp_path / "env"))
    with inspect(count_nodes=True) as report:
        Pipeline("p", [Stage("noop", lambda m: None)]).run(scripted(ConvRelu))
    assert report.stages[0].dump_path == str(tmp_path / "env" / "00-p-noop.txt")
    with inspect(dump_dir=tmp_path / "explicit") as report:
        Pipeline("p", [Stage("noop", lambda m: None)]).run(scripted(ConvRelu))
    assert report.stages[0].dump_path == str(tmp_path / "explicit" / "00-p-noop.txt")


def test_graph_stage_runs_once_per_distinct_method_graph():
    module = scripted(TwoLinears)
    graphs = []
    Pipeline("p", [graph_stage("collect", graphs.append)]).run(module)
    # root forward, one Linear forward shared by both instances
    assert len(graphs) == 2


def test_report_format_is_a_table_of_stages():
    module = scripted(ConvRelu)
    with inspect(count_nodes=True, time=True) as report:
        Pipeline("demo", [Stage("noop", lambda m: None), Stage("inline", inline_forward)]).run(module)
    text = report.format()
    lines = text.splitlines()
    assert lines[0].split() == ["#", "pipeline", "stage", "seconds", "nodes", "changed", "kinds", "dump"]
    assert lines[2].split()[:3] == ["0", "demo", "noop"]
    assert lines[3].split()[:3] == ["1", "demo", "inline"]
    assert "prim::CallMethod-1" in lines[3]


def test_empty_report_formats_as_a_header():
    assert Report().format().splitlines()[0].startswith("#")
