"""QConfigMapping wherever a qconfig_dict goes: FX mode's precedence, equivalence with qconfig_dict, clear errors."""

import operator

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization import (
    MinMaxObserver,
    QConfig,
    QConfigMapping,
    default_dynamic_qconfig,
    get_default_qconfig,
    get_default_qconfig_mapping,
)
from torch.ao.quantization.fx.qconfig_mapping_utils import _generate_node_name_to_qconfig
from torch.ao.quantization.fx.tracer import QuantizationTracer
from torch.ao.quantization.qconfig import qconfig_equals

import qgraph
from helpers.quantized_reference import capture as capture_model
from qgraph.ir import method_graph, resolve_path, walk
from qgraph.pipeline import inspect
from qgraph.quant.mapping_resolver import MappingResolver
from qgraph.quant.qconfig_mapping import op_kinds
from qgraph.report import NO_QCONFIG, float_op_report

X86 = get_default_qconfig("x86")
# x86's weights with MinMax activations: calibrates in a fraction of the histogram observer's time.
FAST = QConfig(activation=MinMaxObserver.with_args(reduce_range=True), weight=X86.weight)


def distinct_qconfig(quant_max: int) -> QConfig:
    """A qconfig told apart from the others by its activation observer's arguments."""
    return QConfig(activation=MinMaxObserver.with_args(quant_min=0, quant_max=quant_max), weight=X86.weight)


Q = {n: distinct_qconfig(100 + n) for n in range(8)}


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.relu = nn.ReLU()

    def forward(self, x):
        return torch.add(self.relu(self.conv(x)), x)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.blocks = nn.Sequential(Block(), Block())
        self.head = nn.Linear(4, 4)
        self.weight = nn.Parameter(torch.randn(4, 4))

    def forward(self, x):
        y = self.blocks(self.stem(x)).mean((2, 3))
        y = F.linear(self.head(y), self.weight)
        return torch.add(F.linear(y, self.weight), y)


def every_rule() -> QConfigMapping:
    return (
        QConfigMapping()
        .set_global(Q[0])
        .set_object_type(nn.Conv2d, Q[1])
        .set_object_type(Block, Q[2])
        .set_object_type(F.linear, Q[3])
        .set_module_name_regex(r"blocks\.1\.", Q[4])
        .set_module_name_regex(r"blocks\.", Q[7])
        .set_module_name("blocks.0", Q[5])
        .set_module_name_object_type_order("", F.linear, 1, Q[6])
        .set_module_name_object_type_order("blocks.1", nn.Conv2d, 0, None)
        .set_module_name_object_type_order("", nn.Conv2d, 0, Q[7])
    )


def fx_qconfigs(model: nn.Module, mapping: QConfigMapping):
    """PyTorch's FX resolution: {module path: qconfig} for module calls, {scope: [qconfig, ...]} for F.linear / add."""
    tracer = QuantizationTracer([], [])
    graph_module = torch.fx.GraphModule(model, tracer.trace(model))
    modules = dict(graph_module.named_modules())
    by_node = _generate_node_name_to_qconfig(
        graph_module, modules, graph_module.graph, mapping, tracer.node_name_to_scope
    )
    module_qconfigs, op_qconfigs = {}, {}
    for node in graph_module.graph.nodes:
        if node.op == "call_module":
            module_qconfigs[node.target] = by_node[node.name]
        elif node.op == "call_function" and node.target in (F.linear, torch.add):
            scope = tracer.node_name_to_scope[node.name][0]
            op_qconfigs.setdefault(scope, []).append(by_node[node.name])
    return module_qconfigs, op_qconfigs


def our_op_qconfigs(resolver: MappingResolver, root, scope: str) -> list:
    graph = method_graph(resolve_path(root, scope) if scope else root)
    overrides = resolver.op_qconfigs.get(scope, {})
    return [
        overrides.get(("forward", position), resolver.module_qconfigs[scope])
        for position, node in enumerate(walk(graph))
        if node.kind() in ("aten::linear", "aten::add")
    ]


def same(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and qconfig_equals(a, b))


@pytest.mark.parametrize("capture", ["script", "trace"])
def test_every_rule_resolves_as_fx_mode_does(capture):
    model = Net().eval()
    scripted = torch.jit.script(model) if capture == "script" else torch.jit.trace(model, torch.randn(1, 3, 4, 4))
    mapping = every_rule()
    resolver = MappingResolver(scripted, mapping)
    fx_modules, fx_ops = fx_qconfigs(model, mapping)
    assert set(fx_modules) == {"stem", "blocks.0.conv", "blocks.0.relu", "blocks.1.conv", "blocks.1.relu", "head"}
    for path, expected in fx_modules.items():
        assert same(resolver.module_qconfigs[path], expected), path
    assert set(fx_ops) == {"", "blocks.0", "blocks.1"}
    for scope, expected in fx_ops.items():
        ours = our_op_qconfigs(resolver, scripted._c, scope)
        assert len(ours) == len(expected) and all(same(a, b) for a, b in zip(ours, expected)), scope


def test_the_rules_that_decide_each_module():
    resolver = MappingResolver(torch.jit.script(Net().eval()), every_rule())
    qconfigs = resolver.module_qconfigs
    assert qconfigs["stem"] is Q[7]  # order entry ("", Conv2d, 0) over the Conv2d object type
    assert qconfigs["blocks.0.conv"] is Q[5]  # module_name of a prefix over the class
    assert qconfigs["blocks.1.conv"] is None  # order entry over the regex
    assert qconfigs["blocks.1.relu"] is Q[4]  # the first registered regex that matches
    assert qconfigs["blocks.1"] is Q[7]  # a Block's own ops: a regex over its class entry
    assert qconfigs["blocks"] is Q[0]  # the regexes need the dot after "blocks"
    assert qconfigs["head"] is Q[0]  # nothing names it: global
    assert qconfigs[""] is Q[0]  # the model's own class is never looked up


def test_a_parent_class_entry_does_not_reach_its_children():
    resolver = MappingResolver(torch.jit.script(Net().eval()), QConfigMapping().set_object_type(Block, Q[2]))
    assert resolver.module_qconfigs["blocks.0"] is Q[2]
    assert resolver.module_qconfigs["blocks.0.conv"] is None


def test_everything_inside_a_torch_nn_module_follows_it():
    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = nn.MultiheadAttention(4, 1)

        def forward(self, x):
            return self.attention(x, x, x)[0]

    mapping = QConfigMapping().set_global(Q[0]).set_object_type(nn.MultiheadAttention, Q[1])
    resolver = MappingResolver(torch.jit.script(Attention().eval()), mapping)
    assert resolver.module_qconfigs["attention.out_proj"] is Q[1]


def test_module_name_of_the_model_is_ignored_as_in_fx():
    resolver = MappingResolver(torch.jit.script(Net().eval()), QConfigMapping().set_module_name("", Q[1]))
    assert all(qconfig is None for qconfig in resolver.module_qconfigs.values())


# --- equal results ------------------------------------------------------------------------------


def calibrate(model, batches):
    for batch in batches:
        model(batch)


@pytest.fixture(scope="module")
def batches():
    torch.manual_seed(0)
    return [torch.randn(2, 3, 6, 6) for _ in range(2)]


def quantized_kinds(model) -> list[str]:
    return [n.kind() for n in walk(model.graph) if n.kind().startswith(("quantized::", "aten::"))]


@pytest.mark.parametrize("capture", ["script", "trace"])
@pytest.mark.parametrize(
    "mapping, qconfig_dict",
    [
        (QConfigMapping().set_global(FAST), {"": FAST}),
        (QConfigMapping().set_global(FAST).set_module_name("blocks.1", None), {"": FAST, "blocks.1": None}),
        (QConfigMapping().set_module_name("head", FAST).set_module_name("stem", FAST), {"head": FAST, "stem": FAST}),
    ],
    ids=["global", "module-name-none", "module-names"],
)
def test_a_mapping_quantizes_as_the_equivalent_qconfig_dict(capture, mapping, qconfig_dict, batches):
    torch.manual_seed(1)
    model = capture_model(Net().eval(), (batches[0],), capture == "trace")
    from_mapping = qgraph.quantize_jit(model, mapping, calibrate, [batches])
    from_dict = qgraph.quantize_jit(model, qconfig_dict, calibrate, [batches])
    assert quantized_kinds(from_mapping) == quantized_kinds(from_dict)
    assert torch.equal(from_mapping(batches[1]), from_dict(batches[1]))


class FunctionalLinear(nn.Module):
    def __init__(self, weight):
        super().__init__()
        self.weight = weight

    def forward(self, x):
        return F.linear(x, self.weight)


class RootLinear(nn.Module):
    """conv -> mean -> F.linear in the model's own code."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.weight = nn.Parameter(torch.randn(5, 4))

    def forward(self, x):
        return F.linear(self.conv(x).mean((2, 3)), self.weight)


class WrappedLinear(nn.Module):
    """The same computation with the F.linear in a submodule of its own."""

    def __init__(self, root: RootLinear):
        super().__init__()
        self.conv = root.conv
        self.linear = FunctionalLinear(root.weight)

    def forward(self, x):
        return self.linear(self.conv(x).mean((2, 3)))


@pytest.mark.parametrize("capture", ["script", "trace"])
@pytest.mark.parametrize("functional", [F.linear, "linear"], ids=["F.linear", "method-name"])
def test_a_functional_object_type_quantizes_that_op_as_a_module_entry_would(capture, functional, batches):
    torch.manual_seed(2)
    root = RootLinear().eval()
    mapping = QConfigMapping().set_object_type(functional, X86)
    ours = qgraph.quantize_jit(capture_model(root, (batches[0],), capture == "trace"), mapping, calibrate, [batches])
    wrapped = capture_model(WrappedLinear(root).eval(), (batches[0],), capture == "trace")
    expected = qgraph.quantize_jit(wrapped, {"linear": X86}, calibrate, [batches])
    kinds = quantized_kinds(ours)
    assert "quantized::linear" in kinds and "aten::conv2d" in kinds
    assert torch.equal(ours(batches[1]), expected(batches[1]))


@pytest.mark.parametrize("capture", ["script", "trace"])
def test_a_functional_entry_of_none_leaves_only_that_op_in_float(capture, batches):
    model = capture_model(RootLinear().eval(), (batches[0],), capture == "trace")
    mapping = QConfigMapping().set_global(X86).set_object_type(F.linear, None)
    quantized = qgraph.quantize_jit(model, mapping, calibrate, [batches])
    kinds = quantized_kinds(quantized)
    assert "quantized::conv2d" in kinds and "aten::linear" in kinds and "quantized::linear" not in kinds
    report = float_op_report(quantized, mapping)
    assert [(e.kind, e.reason) for e in report] == [("aten::linear", NO_QCONFIG)]
    assert "object_type torch.nn.functional.linear" in report.entries[0].detail


def test_an_order_entry_picks_one_call_of_a_functional(batches):
    class TwoLinears(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(6, 6))

        def forward(self, x):
            return F.linear(F.linear(x, self.weight), self.weight)

    model = torch.jit.script(TwoLinears().eval())
    mapping = QConfigMapping().set_global(X86).set_module_name_object_type_order("", F.linear, 1, None)
    data = [torch.randn(3, 6) for _ in range(2)]
    kinds = quantized_kinds(qgraph.quantize_jit(model, mapping, calibrate, [data]))
    assert kinds.index("quantized::linear") < kinds.index("aten::linear")


class MatmulLinear(nn.Module):
    """A linear layer spelled as a matmul: ``aten::linear`` only once prepare's clean-up has fused it."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 6))

    def forward(self, x):
        return torch.matmul(x, self.weight.t())


class TwoMatmulLinears(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = MatmulLinear()
        self.second = MatmulLinear()

    def forward(self, x):
        return self.second(self.first(x))


def test_an_op_entry_for_an_op_the_clean_up_makes_applies_to_that_instance_only():
    # Both instances share one class type, and their graphs name no aten::linear
    # until fuse-linear runs: the op entry is seen after the clean-up.
    model = torch.jit.script(TwoMatmulLinears().eval())
    mapping = QConfigMapping().set_global(X86).set_module_name_object_type_order("second", F.linear, 0, None)
    data = [torch.randn(3, 6) for _ in range(2)]
    with inspect() as stages:
        from_mapping = qgraph.quantize_jit(model, mapping, calibrate, [data])
    from_dict = qgraph.quantize_jit(model, {"": X86, "second": None}, calibrate, [data])
    kinds = quantized_kinds(from_mapping)
    assert kinds.count("quantized::linear") == 1 and kinds.count("aten::linear") == 1
    assert kinds == quantized_kinds(from_dict)
    assert "unshare-op-qconfig-types" in [record.stage for record in stages.stages]


def test_the_default_qconfig_mapping_quantizes(batches):
    model = torch.jit.script(Net().eval())
    quantized = qgraph.quantize_jit(model, get_default_qconfig_mapping("x86"), calibrate, [batches])
    kinds = quantized_kinds(quantized)
    assert {"quantized::conv2d", "quantized::linear", "quantized::add"} <= set(kinds)
    assert len(float_op_report(quantized, get_default_qconfig_mapping("x86"))) == 0


def test_dynamic_apis_take_a_mapping():
    model = torch.jit.script(Net().eval())
    mapping = QConfigMapping().set_object_type(nn.Linear, default_dynamic_qconfig)
    kinds = quantized_kinds(qgraph.quantize_dynamic_jit(model, mapping))
    assert kinds.count("quantized::linear_dynamic") == 1 and kinds.count("aten::linear") == 2


def test_a_dynamic_qconfig_in_a_mapping_is_refused_by_the_static_api():
    mapping = QConfigMapping().set_object_type(nn.Linear, default_dynamic_qconfig)
    with pytest.raises(ValueError, match=r"QConfigMapping object_type torch\.nn\.modules\.linear\.Linear is a dynamic"):
        qgraph.prepare_jit(torch.jit.script(Net().eval()), mapping)


def test_a_module_name_naming_no_submodule_warns():
    with pytest.warns(UserWarning, match="'hed' names no submodule"):
        qgraph.prepare_jit(
            torch.jit.script(Net().eval()), QConfigMapping().set_global(X86).set_module_name("hed", None)
        )


# --- what graph mode cannot apply -------------------------------------------------------------------


def user_function(x):
    return x


@pytest.mark.parametrize(
    "mapping, message",
    [
        (QConfigMapping().set_object_type(user_function, X86), "object type <function user_function"),
        (QConfigMapping().set_object_type("no_such_op", X86), "names no TorchScript op"),
        (QConfigMapping().set_object_type(torch.add, X86).set_object_type(operator.add, None), "both name aten::add"),
        (QConfigMapping().set_module_name_regex("(", X86), "is not a regular expression"),
        (QConfigMapping().set_module_name_object_type_order("", nn.Conv2d, -1, X86), "index must be an int >= 0"),
        (QConfigMapping().set_global("x86"), "expected a torch.ao.quantization.QConfig or None"),
    ],
    ids=["user-function", "unknown-method", "two-names-one-op", "bad-regex", "negative-index", "not-a-qconfig"],
)
def test_what_graph_mode_cannot_apply_is_a_clear_error(mapping, message):
    with pytest.raises((ValueError, TypeError), match=message.replace("(", r"\(")):
        qgraph.prepare_jit(torch.jit.script(Net().eval()), mapping)


def test_op_kinds_of_functionals_operators_and_method_names():
    assert op_kinds(F.linear) == {"aten::linear"}
    assert op_kinds(F.relu) == {"aten::relu", "aten::relu_"}
    assert op_kinds(operator.iadd) == {"aten::add_"}
    assert op_kinds(torch.Tensor.reshape) == op_kinds("reshape") == {"aten::reshape"}
    assert "aten::upsample_nearest2d" in op_kinds(F.interpolate)
