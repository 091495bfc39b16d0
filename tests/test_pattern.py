"""qgraph.pattern: IR-text patterns, the anchored matcher and the rewriter."""

import pytest
import torch
from torch._C import parse_ir as parse
from torch.testing import FileCheck

import qgraph.pattern as pattern_module
from qgraph.ir import insert_op
from qgraph.pattern import Pattern, Rewrite, find_matches, match_at, rewrite, value_is, value_is_none


def anchor_lines(matches):
    """Each match's anchor as printed, without the value numbers parse_ir assigns."""
    return [str(m.anchor).split(" = ", 1)[1].split(" #")[0].strip() for m in matches]


ADDMM = """graph(%input, %weight, %bias, %beta, %alpha):
    %weight_t = aten::t(%weight)
    %out = aten::addmm(%bias, %input, %weight_t, %beta, %alpha)
    return (%out)"""

LINEAR = """graph(%input, %weight, %bias, %beta, %alpha):
    %out = aten::linear(%input, %weight, %bias)
    return (%out)"""


def addmm_graph(alpha=1, beta=1):
    return parse(f"""graph(%x : Tensor, %w : Tensor, %b : Tensor):
  %one : int = prim::Constant[value={beta}]()
  %two : int = prim::Constant[value={alpha}]()
  %wt : Tensor = aten::t(%w)
  %y : Tensor = aten::addmm(%b, %x, %wt, %one, %two)
  return (%y)""")


def test_match_binds_pattern_names_to_graph_values():
    graph = addmm_graph(alpha=1, beta=3)
    (match,) = find_matches(graph, ADDMM)
    x, w, b = graph.inputs()
    assert match["input"] == x and match["weight"] == w and match["bias"] == b
    assert match.node("weight_t").kind() == "aten::t"
    assert match.constant("beta") == 3 and match.constant("alpha") == 1
    assert match.constant("input", default=None) is None
    with pytest.raises(ValueError, match="not a constant"):
        match.constant("input")
    with pytest.raises(KeyError, match="no value %missing"):
        match["missing"]
    assert [n.kind() for n in match.matched_nodes()] == ["aten::t", "aten::addmm"]


def test_rewrite_with_filters_replaces_only_passing_matches():
    table = [Rewrite("addmm_to_linear", ADDMM, LINEAR, filters=(value_is("alpha", 1), value_is("beta", 1)))]
    graph = addmm_graph(alpha=1, beta=1)
    assert rewrite(graph, table) == 1
    FileCheck().check("aten::linear").check_not("aten::addmm").check_not("aten::t(").run(str(graph))
    kept = addmm_graph(alpha=2, beta=1)
    assert rewrite(kept, table) == 0
    FileCheck().check("aten::addmm").run(str(kept))


def test_value_is_tells_bool_from_int_and_value_is_none():
    graph = parse("""graph(%x : Tensor):
  %flag : bool = prim::Constant[value=1]()
  %none : NoneType = prim::Constant()
  %y : Tensor = aten::dropout(%x, %none, %flag)
  return (%y)""")
    (match,) = find_matches(
        graph,
        """graph(%x, %p, %train):
    %y = aten::dropout(%x, %p, %train)
    return (%y)""",
    )
    assert value_is("train", True)(match)
    assert not value_is("train", 1)(match)
    assert not value_is("x", 1)(match)
    assert value_is_none("p")(match) and not value_is_none("train")(match)


SQUARE = """graph(%x):
    %y = aten::mul(%x, %x)
    return (%y)"""


def test_repeated_pattern_input_binds_one_value():
    graph = parse("""graph(%a : Tensor, %b : Tensor):
  %s : Tensor = aten::mul(%a, %a)
  %p : Tensor = aten::mul(%a, %b)
  %r : (Tensor, Tensor) = prim::TupleConstruct(%s, %p)
  return (%r)""")
    matches = find_matches(graph, SQUARE)
    assert anchor_lines(matches) == ["aten::mul(%a, %a)"]


def test_constants_in_a_pattern_match_equal_constants_only():
    add_one = """graph(%a, %b):
    %one = prim::Constant[value=1]()
    %y = aten::add(%a, %b, %one)
    return (%y)"""
    graph = parse("""graph(%a : Tensor, %b : Tensor):
  %one : int = prim::Constant[value=1]()
  %two : int = prim::Constant[value=2]()
  %flag : bool = prim::Constant[value=1]()
  %p : Tensor = aten::add(%a, %b, %one)
  %q : Tensor = aten::add(%a, %b, %two)
  %r : Tensor = aten::add(%a, %b, %flag)
  %t : (Tensor, Tensor, Tensor) = prim::TupleConstruct(%p, %q, %r)
  return (%t)""")
    (match,) = find_matches(graph, add_one)
    assert match.anchor.inputsAt(2).toIValue() == 1 and str(match.anchor.inputsAt(2).type()) == "int"


def test_node_attributes_must_match():
    read_weight = """graph(%module):
    %w = prim::GetAttr[name="weight"](%module)
    %t = aten::t(%w)
    return (%t)"""
    graph = parse("""graph(%self : Tensor):
  %w : Tensor = prim::GetAttr[name="weight"](%self)
  %b : Tensor = prim::GetAttr[name="bias"](%self)
  %wt : Tensor = aten::t(%w)
  %bt : Tensor = aten::t(%b)
  %r : (Tensor, Tensor) = prim::TupleConstruct(%wt, %bt)
  return (%r)""")
    (match,) = find_matches(graph, read_weight)
    assert match.node("w").s("name") == "weight"


RELU_NEG = """graph(%x):
    %r = aten::relu(%x)
    %y = aten::neg(%r)
    return (%y)"""


def test_inner_value_used_outside_the_match_prevents_it():
    graph = parse("""graph(%x : Tensor):
  %r : Tensor = aten::relu(%x)
  %y : Tensor = aten::neg(%r)
  %z : Tensor = aten::add(%y, %r, %r)
  return (%z)""")
    assert find_matches(graph, RELU_NEG) == []
    assert rewrite(graph, [Rewrite("fold", RELU_NEG, "graph(%x):\n    %y = aten::exp(%x)\n    return (%y)")]) == 0


def test_matches_inside_nested_blocks_but_never_across_blocks():
    graph = parse("""graph(%x : Tensor, %c : bool):
  %outer : Tensor = aten::relu(%x)
  %y : Tensor = prim::If(%c)
    block0():
      %r : Tensor = aten::relu(%x)
      %inner : Tensor = aten::neg(%r)
      -> (%inner)
    block1():
      %across : Tensor = aten::neg(%outer)
      -> (%across)
  return (%y)""")
    (match,) = find_matches(graph, RELU_NEG)
    assert match.anchor.owningBlock().owningNode().kind() == "prim::If"
    assert match.node("r").owningBlock() == match.anchor.owningBlock()
    replacement = "graph(%x):\n    %y = aten::exp(%x)\n    return (%y)"
    assert rewrite(graph, [Rewrite("relu_neg", RELU_NEG, replacement)]) == 1
    if_node = graph.findNode("prim::If")
    first, second = if_node.blocks()
    assert [n.kind() for n in first.nodes()] == ["aten::exp"]
    assert [n.kind() for n in second.nodes()] == ["aten::neg"]
    graph.lint()


def test_custom_filter_sees_the_match():
    graph = parse("""graph(%x : Tensor, %y : Tensor):
  %a : Tensor = aten::mul(%x, %x)
  %b : Tensor = aten::mul(%y, %y)
  %r : (Tensor, Tensor) = prim::TupleConstruct(%a, %b)
  return (%r)""")
    only_x = Rewrite(
        "square_of_x",
        SQUARE,
        "graph(%x):\n    %y = aten::square(%x)\n    return (%y)",
        filters=(lambda match: match["x"].debugName() == "x",),
    )
    assert rewrite(graph, [only_x]) == 1
    FileCheck().check("aten::square(%x)").check("aten::mul(%y, %y)").run(str(graph))


def test_table_order_is_meaning():
    specific = Rewrite("relu_neg", RELU_NEG, "graph(%x):\n    %y = aten::exp(%x)\n    return (%y)")
    general = Rewrite(
        "relu",
        "graph(%x):\n    %r = aten::relu(%x)\n    return (%r)",
        "graph(%x):\n    %r = aten::sigmoid(%x)\n    return (%r)",
    )
    text = """graph(%x : Tensor):
  %r : Tensor = aten::relu(%x)
  %y : Tensor = aten::neg(%r)
  return (%y)"""
    first = parse(text)
    assert rewrite(first, [specific, general]) == 1
    assert [n.kind() for n in first.nodes()] == ["aten::exp"]
    second = parse(text)
    assert rewrite(second, [general, specific]) == 1
    assert [n.kind() for n in second.nodes()] == ["aten::sigmoid", "aten::neg"]


def times_four(x):
    y = x * 4.0
    return y


def test_callable_replacement_builds_nodes_from_the_match():
    def halve_scale(graph, match, before):
        scale = match.constant("scale") / 2
        node = insert_op(graph, "aten::mul", [match["x"], scale], before=before)
        return [node.output()]

    graph = torch.jit.script(times_four).graph.copy()
    name = graph.findNode("aten::mul").output().debugName()
    table = [Rewrite("halve", "graph(%x, %scale):\n    %y = aten::mul(%x, %scale)\n    return (%y)", halve_scale)]
    assert rewrite(graph, table) == 1
    mul = graph.findNode("aten::mul")
    assert mul.inputsAt(1).toIValue() == 2.0
    assert mul.output().debugName() == name  # the replacement takes the old output's name
    x = torch.randn(3)
    run = torch._C._create_function_from_graph("halved", graph)
    assert torch.equal(run(x), x * 2.0)


def test_replacement_output_count_must_match():
    graph = parse("""graph(%x : Tensor):
  %y : Tensor = aten::relu(%x)
  return (%y)""")
    bad = Rewrite("bad", "graph(%x):\n    %y = aten::relu(%x)\n    return (%y)", lambda g, m, before: [])
    with pytest.raises(ValueError, match="replacement gives 0 outputs, pattern has 1"):
        rewrite(graph, [bad])


def scaled_relu(x):
    return torch.relu(x) * 3.0


def test_replacement_takes_the_source_range_of_the_anchor():
    graph = torch.jit.script(scaled_relu).graph.copy()
    anchor = graph.findNode("aten::mul")
    source = anchor.sourceRange()
    assert source != graph.findNode("aten::relu").sourceRange()
    table = [
        Rewrite(
            "relu_mul",
            "graph(%x, %s):\n    %r = aten::relu(%x)\n    %y = aten::mul(%r, %s)\n    return (%y)",
            "graph(%x, %s):\n    %m = aten::mul(%x, %s)\n    %y = aten::relu(%m)\n    return (%y)",
        )
    ]
    assert rewrite(graph, table) == 1
    new_nodes = [n for n in graph.nodes() if n.kind() in ("aten::mul", "aten::relu")]
    assert len(new_nodes) == 2
    assert all(n.sourceRange() == source for n in new_nodes)
    x = torch.randn(5)
    run = torch._C._create_function_from_graph("rewritten", graph)
    assert torch.equal(run(x), scaled_relu(x))


def test_long_chain_is_rewritten_in_one_pass_with_one_attempt_per_anchor(monkeypatch):
    pairs = 1000
    lines = ["graph(%v0 : Tensor):"]
    for i in range(pairs):
        lines.append(f"  %r{i} : Tensor = aten::relu(%v{i})")
        lines.append(f"  %v{i + 1} : Tensor = aten::neg(%r{i})")
    lines.append(f"  return (%v{pairs})")
    graph = parse("\n".join(lines))
    attempts = []
    real_match_at = pattern_module.match_at

    def counting_match_at(pattern, anchor):
        attempts.append(anchor)
        return real_match_at(pattern, anchor)

    monkeypatch.setattr(pattern_module, "match_at", counting_match_at)
    table = [Rewrite("relu_neg", RELU_NEG, "graph(%x):\n    %y = aten::exp(%x)\n    return (%y)")]
    assert rewrite(graph, table) == pairs
    assert len(attempts) == pairs  # each aten::neg anchor tried once, nothing rescanned
    assert [n.kind() for n in graph.nodes()] == ["aten::exp"] * pairs


def test_find_matches_reports_overlapping_matches():
    graph = parse("""graph(%x : Tensor):
  %a : Tensor = aten::relu(%x)
  %b : Tensor = aten::relu(%a)
  %c : Tensor = aten::relu(%b)
  return (%c)""")
    two_relus = "graph(%x):\n    %a = aten::relu(%x)\n    %b = aten::relu(%a)\n    return (%b)"
    relus = [n for n in graph.nodes() if n.kind() == "aten::relu"]
    assert [m.anchor for m in find_matches(graph, two_relus)] == relus[1:]


def test_match_at_rejects_other_kinds():
    graph = parse("""graph(%x : Tensor):
  %a : Tensor = aten::relu(%x)
  return (%a)""")
    compiled = Pattern(RELU_NEG)
    assert match_at(compiled, graph.findNode("aten::relu")) is None


def test_invalid_patterns_are_refused():
    with pytest.raises(ValueError, match="cannot end in a constant"):
        Pattern("graph():\n    %c = prim::Constant[value=1]()\n    return (%c)")
    with pytest.raises(ValueError, match="not connected to the anchor"):
        Pattern("graph(%x):\n    %a = aten::relu(%x)\n    %b = aten::neg(%x)\n    return (%b)")
    with pytest.raises(ValueError, match="produced by a pattern node"):
        Pattern("graph(%x):\n    %a = aten::relu(%x)\n    return (%x)")
