import pytest
import torch
from torch.ao.quantization import default_qconfig, prepare_jit
from torch.testing import FileCheck

from helpers.models import run_graph
from passes.canonicalize_conv import canonicalize_conv


def conv_call(graph):
    """Kind, arguments after input/weight/bias, and output type of the graph's single conv node.

    The bias is left out: the reference's prepare also reads a ``None`` bias
    from a module attribute instead of the traced constant.
    """
    (node,) = [n for n in graph.nodes() if n.kind().startswith("aten::conv")]
    arguments = [v.toIValue() for v in list(node.inputs())[3:]]
    return node.kind(), arguments, str(node.output().type())


def reference_conv_call(model, name):
    """The conv node that the reference's prepare_jit leaves in submodule ``name``."""
    prepared = prepare_jit(model, {"": default_qconfig})
    return conv_call(getattr(prepared, name).graph)


class ConvLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1d = torch.nn.Conv1d(4, 6, 3, stride=2, padding=1)
        self.conv2d = torch.nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2)
        self.conv3d = torch.nn.Conv3d(4, 6, 2, stride=(1, 2, 1), bias=False)

    def forward(self, x1, x2, x3):
        return self.conv1d(x1), self.conv2d(x2), self.conv3d(x3)


CONV_INPUTS = (torch.rand(1, 4, 9), torch.rand(1, 4, 7, 7), torch.rand(1, 4, 5, 5, 5))


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_traced_convolution_becomes_conv_nd(dims):
    torch.manual_seed(0)
    eager = ConvLayers()
    model = torch.jit.trace(eager, CONV_INPUTS)
    layer = getattr(model, f"conv{dims}d")
    graph = layer.graph.copy()
    FileCheck().check("aten::_convolution").run(str(graph))

    assert canonicalize_conv(graph) == 1
    FileCheck().check(f"aten::conv{dims}d(").check_not("aten::_convolution").run(str(graph))
    assert conv_call(graph) == reference_conv_call(model, f"conv{dims}d")
    x = CONV_INPUTS[dims - 1]
    # conv{1,2,3}d dispatch to the same _convolution kernel with the same arguments.
    assert torch.equal(run_graph(graph, layer._c, x), getattr(eager, f"conv{dims}d")(x))


class TransposedConvLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up1d = torch.nn.ConvTranspose1d(4, 2, 3, stride=2, output_padding=1)
        self.up2d = torch.nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2)
        self.up3d = torch.nn.ConvTranspose3d(4, 2, 2, stride=2, output_padding=(1, 0, 1))

    def forward(self, x1, x2, x3):
        return self.up1d(x1), self.up2d(x2), self.up3d(x3)


TRANSPOSED_INPUTS = (torch.rand(1, 4, 6), torch.rand(1, 4, 5, 5), torch.rand(1, 4, 3, 3, 3))


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_traced_transposed_convolution_becomes_conv_transpose_nd(dims):
    torch.manual_seed(0)
    eager = TransposedConvLayers()
    model = torch.jit.trace(eager, TRANSPOSED_INPUTS)
    layer = getattr(model, f"up{dims}d")
    graph = layer.graph.copy()

    assert canonicalize_conv(graph) == 1
    FileCheck().check(f"aten::conv_transpose{dims}d(").check_not("aten::_convolution").run(str(graph))
    assert conv_call(graph) == reference_conv_call(model, f"up{dims}d")
    x = TRANSPOSED_INPUTS[dims - 1]
    assert torch.equal(run_graph(graph, layer._c, x), getattr(eager, f"up{dims}d")(x))


def test_traced_argument_lists_become_constants():
    torch.manual_seed(0)
    model = torch.jit.trace(ConvLayers(), CONV_INPUTS)
    graph = model.conv2d.graph.copy()
    FileCheck().check("prim::ListConstruct").run(str(graph))

    canonicalize_conv(graph)
    FileCheck().check_not("prim::ListConstruct").check("int[] = prim::Constant[value=[2, 2]]").check(
        "aten::conv2d"
    ).run(str(graph))


def test_scripted_conv_is_already_canonical():
    model = torch.jit.script(ConvLayers())
    graph = model.conv2d.graph.copy()
    torch._C._jit_pass_inline(graph)

    assert canonicalize_conv(graph) == 0
    FileCheck().check("aten::conv2d").check_not("aten::_convolution").run(str(graph))


class RuntimeStride(torch.nn.Module):
    def forward(self, x, weight, stride: list[int]):
        return torch._convolution(x, weight, None, stride, [0, 0], [1, 1], False, [0, 0], 1, False, False, True, True)


def test_convolution_with_run_time_arguments_stays():
    torch.manual_seed(0)
    model = torch.jit.script(RuntimeStride())
    graph = model.graph.copy()

    assert canonicalize_conv(graph) == 0
    FileCheck().check("aten::_convolution").check_not("aten::conv2d").run(str(graph))
    x, weight = torch.rand(1, 2, 6, 6), torch.rand(3, 2, 3, 3)
    assert torch.equal(run_graph(graph, model._c, x, weight, [2, 2]), model(x, weight, [2, 2]))


LEGACY_CONVOLUTION = """graph(%x : Tensor, %w : Tensor, %b : Tensor):
    %stride : int[] = prim::Constant[value=[1, 1]]()
    %padding : int[] = prim::Constant[value=[1, 1]]()
    %dilation : int[] = prim::Constant[value=[1, 1]]()
    %transposed : bool = prim::Constant[value=0]()
    %output_padding : int[] = prim::Constant[value=[0, 0]]()
    %groups : int = prim::Constant[value=1]()
    %flag : bool = prim::Constant[value=0]()
    %r : Tensor = aten::_convolution(%x, %w, %b, %stride, %padding, %dilation, %transposed,
                                     %output_padding, %groups, %flag, %flag, %flag)
    return (%r)"""


def test_twelve_argument_convolution_of_old_graphs_is_rewritten():
    torch.manual_seed(0)
    graph = torch._C.parse_ir(LEGACY_CONVOLUTION)
    x, w, b = torch.rand(1, 2, 5, 5), torch.rand(3, 2, 3, 3), torch.rand(3)
    expected = run_graph(graph.copy(), x, w, b)

    assert canonicalize_conv(graph) == 1
    FileCheck().check("aten::conv2d(%x, %w, %b").check_not("aten::_convolution").run(str(graph))
    assert torch.equal(run_graph(graph, x, w, b), expected)


def test_rejects_a_module():
    with pytest.raises(TypeError, match="torch._C.Graph"):
        canonicalize_conv(torch.jit.script(ConvLayers()))
