"""qgraph.ir: walking and editing graphs, module helpers, cloning, call graphs."""

import io

import pytest
import torch
from torch._C import parse_ir as parse

from qgraph.ir import (
    NodeIndex,
    call_graph,
    callees_first,
    children_of,
    clone_module,
    erase_nodes,
    getattr_path,
    hoist_before,
    insert_constant,
    insert_op,
    is_alive,
    is_constant,
    is_instance_of,
    like,
    method_calls,
    method_graph,
    module_class_name,
    named_modules,
    nodes_before,
    register_attribute,
    register_submodule,
    replace_uses,
    resolve_path,
    submodule_for_getattr,
    unshare_types,
    uses_of,
    walk,
)


def find(graph, kind):
    return next(n for n in walk(graph) if n.kind() == kind)


# ---------------------------------------------------------------- graphs

NESTED = """graph(%x : Tensor, %c : bool):
  %a : Tensor = aten::relu(%x)
  %y : Tensor = prim::If(%c)
    block0():
      %b : Tensor = aten::sigmoid(%a)
      %z : Tensor = prim::If(%c)
        block0():
          %d : Tensor = aten::tanh(%b)
          -> (%d)
        block1():
          -> (%b)
      -> (%z)
    block1():
      %e : Tensor = aten::neg(%a)
      -> (%e)
  %f : Tensor = aten::exp(%y)
  return (%f)"""


def test_walk_visits_a_node_before_its_blocks_in_program_order():
    graph = parse(NESTED)
    kinds = [n.kind() for n in walk(graph)]
    assert kinds == ["aten::relu", "prim::If", "aten::sigmoid", "prim::If", "aten::tanh", "aten::neg", "aten::exp"]
    assert [n.kind() for n in walk(graph, into_blocks=False)] == ["aten::relu", "prim::If", "aten::exp"]


def test_node_index_groups_by_kind_and_skips_destroyed_nodes():
    graph = parse(NESTED)
    index = NodeIndex(graph)
    assert [n.kind() for n in index.of_kind("prim::If")] == ["prim::If", "prim::If"]
    assert index.counts()["aten::tanh"] == 1
    tanh = index.of_kind("aten::tanh")[0]
    tanh.output().replaceAllUsesWith(tanh.input())
    tanh.destroy()
    assert index.of_kind("aten::tanh") == []
    assert "aten::tanh" not in index.kinds()
    added = insert_op(graph, "aten::sin", [graph.findNode("aten::exp").output()], after=graph.findNode("aten::exp"))
    index.add(added)
    assert index.of_kind("aten::sin") == [added]
    assert [n.kind() for n in index.of_kind("aten::exp", "aten::relu")] == ["aten::exp", "aten::relu"]


def test_uses_of():
    graph = parse("""graph(%x : Tensor):
  %y : Tensor = aten::mul(%x, %x)
  %z : Tensor = aten::add(%y, %x, %y)
  return (%z)""")
    x = next(iter(graph.inputs()))
    mul, add = graph.findNode("aten::mul"), graph.findNode("aten::add")
    assert uses_of(x) == [(mul, 0), (mul, 1), (add, 1)]


def test_is_constant():
    graph = parse("""graph(%x : Tensor):
  %one : int = prim::Constant[value=1]()
  %yes : bool = prim::Constant[value=1]()
  %y : Tensor = aten::add(%x, %x, %one)
  return (%y)""")
    one, yes = (n.output() for n in graph.nodes() if n.kind() == "prim::Constant")
    assert is_constant(one) and is_constant(one, 1) and not is_constant(one, True)
    assert is_constant(yes, True) and not is_constant(yes, 1)
    assert not is_constant(next(iter(graph.inputs())))


def test_insert_op_before_and_after_with_constants_and_source():
    def f(x):
        return torch.relu(x)

    graph = torch.jit.script(f).graph.copy()
    relu = graph.findNode("aten::relu")
    before = insert_op(graph, "aten::mul", [next(iter(graph.inputs())), 2.0], before=relu, source=relu)
    after = insert_op(graph, "aten::add", [relu.output(), relu.output(), 1], after=relu)
    kinds = [n.kind() for n in graph.nodes()]
    assert kinds.index("aten::mul") < kinds.index("aten::relu") < kinds.index("aten::add")
    assert before.inputsAt(1).toIValue() == 2.0
    assert after.inputsAt(2).toIValue() == 1
    assert after.inputsAt(2).node().isBefore(after)
    assert before.sourceRange() == relu.sourceRange()
    assert str(before.output().type()) == "Tensor"
    with pytest.raises(ValueError, match="one of before= and after="):
        insert_op(graph, "aten::neg", [relu.output()], before=relu, after=relu)
    graph.lint()


def test_insert_op_output_types_and_insert_constant():
    graph = parse("""graph(%x : Tensor):
  %y : Tensor = aten::relu(%x)
  return (%y)""")
    relu = graph.findNode("aten::relu")
    size = insert_op(graph, "aten::dim", [relu.output()], after=relu, output_types=[torch._C.IntType.get()])
    assert str(size.output().type()) == "int"
    three = insert_constant(graph, 3, before=relu)
    assert three.node().isBefore(relu) and three.toIValue() == 3


def test_replace_uses_everywhere_or_after_a_node():
    graph = parse("""graph(%x : Tensor):
  %a : Tensor = aten::relu(%x)
  %b : Tensor = aten::neg(%x)
  %c : Tensor = aten::exp(%x)
  %d : (Tensor, Tensor, Tensor) = prim::TupleConstruct(%a, %b, %c)
  return (%d)""")
    x = next(iter(graph.inputs()))
    relu, neg, exp = (graph.findNode(k) for k in ("aten::relu", "aten::neg", "aten::exp"))
    replace_uses(x, relu.output(), after=relu)
    assert neg.input() == relu.output() and exp.input() == relu.output() and relu.input() == x
    replace_uses(relu.output(), neg.output(), after=neg)
    assert exp.input() == neg.output()
    graph.lint()


def test_erase_nodes_any_order_and_refuses_used_outputs():
    graph = parse("""graph(%x : Tensor):
  %a : Tensor = aten::relu(%x)
  %b : Tensor = aten::neg(%a)
  %c : Tensor = aten::exp(%b)
  return (%x)""")
    relu, neg, exp = (graph.findNode(k) for k in ("aten::relu", "aten::neg", "aten::exp"))
    erase_nodes([relu, exp, neg])  # producers listed first still work
    assert not any(is_alive(n) for n in (relu, neg, exp))
    graph = parse("""graph(%x : Tensor):
  %a : Tensor = aten::relu(%x)
  %b : Tensor = aten::neg(%a)
  return (%b)""")
    with pytest.raises(RuntimeError, match="still used: .*aten::neg"):
        erase_nodes([graph.findNode("aten::neg"), graph.findNode("aten::relu")])


def test_erase_nodes_across_blocks():
    graph = parse("""graph(%x : Tensor, %c : bool):
  %a : Tensor = aten::relu(%x)
  %y : Tensor = prim::If(%c)
    block0():
      %b : Tensor = aten::neg(%a)
      -> (%x)
    block1():
      -> (%x)
  return (%y)""")
    relu, neg = graph.findNode("aten::relu"), find(graph, "aten::neg")
    erase_nodes([relu, neg])
    assert not is_alive(relu) and not is_alive(neg)


def test_nodes_before():
    graph = parse("""graph(%x : Tensor):
  %a : Tensor = aten::relu(%x)
  %b : Tensor = aten::neg(%a)
  %c : Tensor = aten::exp(%b)
  %d : Tensor = aten::tanh(%c)
  return (%d)""")
    relu, tanh = graph.findNode("aten::relu"), graph.findNode("aten::tanh")
    assert [n.kind() for n in nodes_before(tanh, relu)] == ["aten::neg", "aten::exp"]
    assert [n.kind() for n in nodes_before(tanh, None)] == ["aten::relu", "aten::neg", "aten::exp"]
    assert nodes_before(relu, None) == []


def test_hoist_before_moves_producers_with_their_inputs():
    graph = parse("""graph(%x : Tensor, %c : bool):
  %y : Tensor = prim::If(%c)
    block0():
      -> (%x)
    block1():
      -> (%x)
  %two : int = prim::Constant[value=2]()
  %s : int = aten::mul(%two, %two)
  %z : Tensor = aten::mul(%y, %s)
  return (%z)""")
    if_node = graph.findNode("prim::If")
    scale = graph.findNode("aten::mul").output()
    assert hoist_before([scale], if_node)
    assert [n.kind() for n in graph.nodes()][:3] == ["prim::Constant", "aten::mul", "prim::If"]
    graph.lint()
    # A value computed from the node itself cannot move before it.
    product = [n for n in graph.nodes() if n.kind() == "aten::mul"][-1]
    assert not hoist_before([product.output()], if_node)


# ---------------------------------------------------------------- modules


class Conv2d(torch.nn.Module):
    """A user class that happens to be called Conv2d."""

    def forward(self, x):
        return x


class Leaf(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 1)
        self.fake = Conv2d()

    def forward(self, x):
        return self.fake(self.conv(x))


class Tree(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.left = Leaf()
        self.right = Leaf()

    def forward(self, x):
        return self.right(self.left(x)) + self.left.conv(x)


def scripted_tree():
    torch.manual_seed(0)
    return torch.jit.script(Tree())


def test_named_modules_and_children_of_and_resolve_path():
    tree = scripted_tree()._c
    assert [path for path, _ in named_modules(tree)] == [
        "",
        "left",
        "left.conv",
        "left.fake",
        "right",
        "right.conv",
        "right.fake",
    ]
    assert [name for name, _ in children_of(tree)] == ["left", "right"]
    assert torch.equal(resolve_path(tree, "left.conv.weight"), tree.getattr("left").getattr("conv").getattr("weight"))


def test_getattr_path_and_submodule_for_getattr():
    tree = scripted_tree()._c
    graph = method_graph(tree)
    calls = [n for n in graph.nodes() if n.kind() == "prim::CallMethod"]
    paths = [getattr_path(n.inputsAt(0)) for n in calls]
    assert sorted(paths) == [["left"], ["left", "conv"], ["right"]]
    self_value = next(iter(graph.inputs()))
    assert getattr_path(self_value) == []
    assert getattr_path(next(iter(graph.inputs())).uses()[0].user.output()) is not None
    conv_call = calls[paths.index(["left", "conv"])]
    conv = submodule_for_getattr(tree, conv_call.inputsAt(0))
    assert module_class_name(conv) == "torch.nn.modules.conv.Conv2d"
    x = list(graph.inputs())[1]
    assert getattr_path(x) is None and submodule_for_getattr(tree, x) is None


def test_method_calls():
    tree = scripted_tree()._c
    found = method_calls(method_graph(tree))
    assert sorted((path, name) for _, path, name in found) == [
        (["left"], "forward"),
        (["left", "conv"], "forward"),
        (["right"], "forward"),
    ]


def test_module_class_name_and_is_instance_of():
    tree = scripted_tree()._c
    real, fake = tree.getattr("left").getattr("conv"), tree.getattr("left").getattr("fake")
    assert module_class_name(real) == "torch.nn.modules.conv.Conv2d"
    assert is_instance_of(real, torch.nn.Conv2d)
    assert not is_instance_of(fake, torch.nn.Conv2d)
    assert is_instance_of(fake, Conv2d)
    assert is_instance_of(real, torch.nn.Linear, torch.nn.Conv2d)
    assert not is_instance_of(torch.nn.Conv2d(1, 1, 1), torch.nn.Conv2d)  # eager modules are not script modules


def test_register_attribute_and_register_submodule():
    # Registering adds to the class type, which every scripted Tree shares: work on a clone.
    tree = clone_module(scripted_tree()._c)
    register_attribute(tree, "scale_0", 0.5)
    assert tree.getattr("scale_0") == 0.5
    assert type(tree.getattr("scale_0")) is float
    register_attribute(tree, "steps", [1, 2], torch._C.ListType(torch._C.IntType.get()))
    assert tree.getattr("steps") == [1, 2]
    with pytest.raises(TypeError, match="cannot infer"):
        register_attribute(tree, "bad", object())
    extra = torch.jit.script(torch.nn.ReLU())
    register_submodule(tree, "extra", extra)
    assert "extra" in [name for name, _ in children_of(tree)]
    assert module_class_name(tree.getattr("extra")) == "torch.nn.modules.activation.ReLU"


def test_like_gives_back_the_kind_it_was_handed():
    scripted = scripted_tree()
    assert isinstance(like(scripted._c, scripted), torch.jit.ScriptModule)
    assert isinstance(like(scripted._c, scripted._c), torch._C.ScriptModule)


def test_clone_module_has_fresh_types_and_leaves_the_original_alone():
    scripted = scripted_tree()
    x = torch.randn(1, 1, 2, 2)
    expected = scripted(x)
    original_text = str(scripted.left.graph)
    original_weight = scripted.left.conv.weight.detach().clone()
    clone = clone_module(scripted._c)
    assert clone._type() != scripted._c._type()
    left, right = clone.getattr("left"), clone.getattr("right")
    assert left._type() != scripted._c.getattr("left")._type()
    assert left._type() == right._type()  # sharing inside the clone is kept
    graph = method_graph(left)
    relu_after = insert_op(graph, "aten::relu", [graph.return_node().input()], before=graph.return_node())
    graph.return_node().replaceInput(0, relu_after.output())
    with torch.no_grad():
        left.getattr("conv").getattr("weight").fill_(3.0)
    assert str(scripted.left.graph) == original_text
    assert torch.equal(scripted.left.conv.weight, original_weight)
    assert torch.equal(scripted(x), expected)
    assert "aten::relu" in str(method_graph(right))  # the clone's siblings share the edited type


def test_unshare_types_gives_the_named_instance_its_own_type():
    scripted = scripted_tree()
    x = torch.randn(1, 1, 3, 3)
    expected = scripted(x)
    root = unshare_types(clone_module(scripted._c), ["left.conv"])
    left, right = root.getattr("left"), root.getattr("right")
    assert left._type() != right._type()
    assert left.getattr("conv")._type() != right.getattr("conv")._type()
    assert left.getattr("fake")._type() == right.getattr("fake")._type()  # siblings keep theirs
    model = torch.jit._recursive.wrap_cpp_module(root)
    assert torch.equal(model(x), expected)
    buffer = io.BytesIO()
    torch.jit.save(model, buffer)
    buffer.seek(0)
    assert torch.equal(torch.jit.load(buffer)(x), expected)
    graph = method_graph(left.getattr("conv"))
    neg = insert_op(graph, "aten::neg", [graph.return_node().input()], before=graph.return_node())
    graph.return_node().replaceInput(0, neg.output())
    assert "aten::neg" not in str(method_graph(right.getattr("conv")))
    assert unshare_types(root, []) is root


def test_call_graph_and_callees_first():
    tree = scripted_tree()._c
    graph = call_graph(tree)
    root_key = (tree._type().qualified_name(), "forward")
    leaf_key = (tree.getattr("left")._type().qualified_name(), "forward")
    conv_key = (tree.getattr("left").getattr("conv")._type().qualified_name(), "forward")
    assert graph.has_edge(root_key, leaf_key) and graph.has_edge(leaf_key, conv_key)
    assert graph.has_edge(root_key, conv_key)  # self.left.conv(x) is called from the root too
    assert sorted(graph.nodes[leaf_key]["instances"]) == ["left", "right"]
    assert sorted(graph.nodes[conv_key]["instances"]) == ["left.conv", "right.conv"]
    assert len(graph.edges[root_key, leaf_key]["calls"]) == 2
    order = callees_first(graph)
    assert order.index(conv_key) < order.index(leaf_key) < order.index(root_key)
    conv_forward_calls = [key for key in graph if key[0] == conv_key[0]]
    assert (conv_key[0], "_conv_forward") in conv_forward_calls


class ReadsGrandchildren(torch.nn.Module):
    """The root reaches ``block.keep`` itself: a ModuleDict has no forward of its own."""

    def __init__(self):
        super().__init__()
        self.block = torch.nn.ModuleDict({"keep": torch.nn.Conv2d(2, 2, 1), "skip": torch.nn.Conv2d(2, 2, 1)})

    def forward(self, x):
        return self.block["skip"](self.block["keep"](x))


def test_unshare_types_retypes_reads_of_grandchildren_through_containers():
    torch.manual_seed(0)
    model = torch.jit.script(ReadsGrandchildren())
    x = torch.randn(1, 2, 3, 3)
    expected = model(x)
    shared = model._c.getattr("block").getattr("keep")._type()
    root = unshare_types(clone_module(model._c), ["block.keep"])
    keep_type = root.getattr("block").getattr("keep")._type()
    assert keep_type != shared
    assert root.getattr("block").getattr("skip")._type() != keep_type
    reads = [
        node.output().type()
        for node in walk(root._get_method("forward").graph)
        if node.kind() == "prim::GetAttr" and node.s("name") == "keep"
    ]
    assert reads == [keep_type]
    assert torch.equal(torch.jit._recursive.wrap_cpp_module(root)(x), expected)
