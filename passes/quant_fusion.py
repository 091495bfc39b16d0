"""Fuse ``dequantize -> float op -> quantize`` into PyTorch's quantized ops.

After quant-dequant insertion every quantized value reaches its float op
through ``aten::dequantize`` and the op's result is quantized again. This
pass replaces each such island with the quantized op that computes it on
int8 tensors directly::

    %a = aten::dequantize(%a_q)
    %w_q, %b = quantized::conv2d_unpack(%packed)
    %w = aten::dequantize(%w_q)
    %r = aten::conv2d(%a, %w, %b, %stride, %padding, %dilation, %groups)
    %r_relu = aten::relu(%r)
    %r_q = aten::quantize_per_tensor(%r_relu, %scale, %zp, %dtype)

becomes::

    %r_q = quantized::conv2d_relu(%a_q, %packed, %scale, %zp)

Ops come in four families:

- ops with a packed weight and observed output qparams (conv, conv
  transpose, linear), optionally fused with a following relu;
- binary ops (add, mul), tensor-tensor or tensor-scalar, with relu variants
  and in-place forms (``quantized::add_scalar_out`` writes into its input);
- ops whose output has its own observed qparams (cat, batch_norm,
  hardswish, elu, layer/group/instance norm);
- ops that run unchanged on the quantized tensor: those whose output keeps
  the input's qparams (pooling, mean, upsample, clamp, hardtanh,
  leaky_relu; the pattern requantizes with ``aten::q_scale`` /
  ``aten::q_zero_point`` / ``prim::dtype`` of the input) and those with fixed
  output qparams (sigmoid and hardsigmoid: scale 1/256, zero point 0;
  tanh: 2/256, 128).

Dynamic quantization has its own table: a linear whose activation is
quantized at run time (``aten::_choose_qparams_per_tensor``) becomes
``quantized::linear_dynamic``, an fp16 linear
``quantized::linear_dynamic_fp16``.

Order is meaning: the tables list more specific patterns first (conv+relu
before conv would not matter, but ``quantized::add_scalar`` must exist before
``add_scalar -> relu`` can fuse into ``quantized::add_scalar_relu``), and they
are applied in the order and with the filters of PyTorch's own graph-mode
quantization, so that the same model gives the same ops and the same bits.
A user extends the tables by adding ``Rewrite`` entries to a copy of them and
calling ``qgraph.pattern.rewrite``.
"""

from __future__ import annotations

import functools

import torch
from torch.ao.quantization.quant_type import QuantType

from qgraph.ir.graph import Graph, NodeIndex
from qgraph.pattern import Match, Rewrite, compile_pattern, rewrite

__all__ = ["STATIC_QUANT_FUSION", "DYNAMIC_QUANT_FUSION", "quant_fusion", "quant_fusion_table"]


_NUMBER = torch._C.NumberType.get()


# --- filters -------------------------------------------------------------------------------


def alpha_is_int_one(match: Match) -> bool:
    """``%alpha`` is the int constant 1 (the quantized add kernels have no alpha; 1.0 does not count)."""
    value = match["alpha"]
    if value.node().kind() != "prim::Constant":
        return False
    alpha = value.toIValue()
    return type(alpha) is int and alpha == 1


def b_is_scalar(match: Match) -> bool:
    """``%b_scalar`` is a number, or a constant 0-dim tensor."""
    value = match["b_scalar"]
    if value.type().isSubtypeOf(_NUMBER):
        return True
    node = value.node()
    if value.type().kind() != "TensorType" or node.kind() != "prim::Constant" or not node.hasAttribute("value"):
        return False
    # Read the tensor itself: Value.toIValue turns a 0-dim tensor into a number.
    return node.kindOf("value") == "t" and node.t("value").dim() == 0


# --- pattern builders ----------------------------------------------------------------------


def _args(names) -> str:
    return "".join(f", {name}" for name in names)


def _weighted(op: str, quantized_op: str, args: list[str], relu: str | None) -> Rewrite:
    """conv / conv_transpose / linear with a packed weight, optionally followed by ``relu``."""
    extra = _args(args)
    header = f"graph(%a_quant, %packed_params, %r_scale, %r_zero_point, %r_dtype{extra}):"
    if relu is None:
        body = f"""
            %r = aten::{op}(%a_dequant, %w_dequant, %b{extra})"""
        name = op
    else:
        body = f"""
            %op_out = aten::{op}(%a_dequant, %w_dequant, %b{extra})
            %r = aten::{relu}(%op_out)"""
        name = f"{op}_{relu}"
    return Rewrite(
        name=name,
        pattern=f"""{header}
            %a_dequant = aten::dequantize(%a_quant)
            %w_quant : Tensor, %b : Tensor? = quantized::{op}_unpack(%packed_params)
            %w_dequant = aten::dequantize(%w_quant){body}
            %r_quant = aten::quantize_per_tensor(%r, %r_scale, %r_zero_point, %r_dtype)
            return (%r_quant)""",
        replacement=f"""{header}
            %r_quant = quantized::{quantized_op}(%a_quant, %packed_params, %r_scale, %r_zero_point)
            return (%r_quant)""",
        source="op_out" if relu is not None else "r",
    )


def _binary(op: str, relu: str | None, quantized_op: str, with_alpha: bool) -> Rewrite:
    """Tensor-tensor add / mul of two quantized inputs, optionally followed by ``relu``."""
    alpha = ", %alpha" if with_alpha else ""
    header = f"graph(%a_quant, %b_quant{alpha}, %scale, %zero_point, %dtype):"
    if relu is None:
        body = f"""
            %r = aten::{op}(%a_dequant, %b_dequant{alpha})"""
        name = op
    else:
        body = f"""
            %op_out = aten::{op}(%a_dequant, %b_dequant{alpha})
            %r = aten::{relu}(%op_out)"""
        name = f"{op}_{relu}"
    return Rewrite(
        name=name,
        pattern=f"""{header}
            %a_dequant = aten::dequantize(%a_quant)
            %b_dequant = aten::dequantize(%b_quant){body}
            %r_quant = aten::quantize_per_tensor(%r, %scale, %zero_point, %dtype)
            return (%r_quant)""",
        replacement=f"""{header}
            %r_quant = quantized::{quantized_op}(%a_quant, %b_quant, %scale, %zero_point)
            return (%r_quant)""",
        filters=(alpha_is_int_one,) if with_alpha else (),
        source="op_out" if relu is not None else "r",
    )


def _input_qparams_pattern(op: str, args: list[str]) -> tuple[str, str]:
    """Header and pattern of ``op`` whose output is requantized with its input's qparams."""
    extra = _args(args)
    header = f"graph(%a_quant{extra}):"
    pattern = f"""{header}
            %a_dequant = aten::dequantize(%a_quant)
            %r = aten::{op}(%a_dequant{extra})
            %r_scale : float = aten::q_scale(%a_quant)
            %r_zero_point : int = aten::q_zero_point(%a_quant)
            %r_dtype : int = prim::dtype(%a_quant)
            %r_quant = aten::quantize_per_tensor(%r, %r_scale, %r_zero_point, %r_dtype)
            return (%r_quant)"""
    return header, pattern


def _keeps_input_qparams(op: str, args: list[str], name: str | None = None) -> Rewrite:
    """``op`` runs as is on the quantized tensor; its output keeps the input's qparams."""
    header, pattern = _input_qparams_pattern(op, args)
    return Rewrite(
        name=name or op,
        pattern=pattern,
        replacement=f"""{header}
            %r = aten::{op}(%a_quant{_args(args)})
            return (%r)""",
        source="r",
    )


def _binary_scalar(op: str, quantized_op: str, args: list[str], quantized_args: list[str]) -> Rewrite:
    """add / mul of a quantized tensor and a scalar: the kernel derives the output qparams itself."""
    header, pattern = _input_qparams_pattern(op, args)
    filters = (alpha_is_int_one, b_is_scalar) if "%alpha" in args else (b_is_scalar,)
    return Rewrite(
        name=quantized_op.removeprefix("quantized::"),
        pattern=pattern,
        replacement=f"""{header}
            %r = {quantized_op}(%a_quant{_args(quantized_args)})
            return (%r)""",
        filters=filters,
        source="r",
    )


def _scalar_relu(quantized_op: str, relu: str, out: bool) -> Rewrite:
    """``quantized::<op>_scalar[_out]`` followed by relu becomes the ``_relu`` kernel."""
    out_arg = ", %a_quant" if out else ""
    suffix = "_out" if out else ""
    return Rewrite(
        name=f"{quantized_op}_scalar{suffix}_{relu}",
        pattern=f"""graph(%a_quant, %b_scalar):
            %op_out = quantized::{quantized_op}_scalar{suffix}(%a_quant, %b_scalar{out_arg})
            %r = aten::{relu}(%op_out)
            return (%r)""",
        replacement=f"""graph(%a_quant, %b_scalar):
            %r = quantized::{quantized_op}_scalar_relu{suffix}(%a_quant, %b_scalar{out_arg})
            return (%r)""",
        source="op_out",
    )


def _observed_output(op: str, quantized_op: str, args: list[str], quantized_args: list[str], name: str) -> Rewrite:
    """``op`` whose output has its own observed qparams, passed to the quantized kernel."""
    extra = _args(args)
    header = f"graph(%a_quant{extra}, %r_scale, %r_zero_point, %r_dtype):"
    return Rewrite(
        name=name,
        pattern=f"""{header}
            %a_dequant = aten::dequantize(%a_quant)
            %r = aten::{op}(%a_dequant{extra})
            %r_quant = aten::quantize_per_tensor(%r, %r_scale, %r_zero_point, %r_dtype)
            return (%r_quant)""",
        replacement=f"""{header}
            %r_quant = quantized::{quantized_op}(%a_quant{_args(quantized_args)}, %r_scale, %r_zero_point)
            return (%r_quant)""",
        source="r",
    )


def _scalar_through_quantization(name: str) -> str:
    # The convert step quantizes clamp's scalar bounds with the input's
    # qparams and reads them back (scalar -> tensor -> quantize -> dequantize
    # -> item), so the float reference clamps to representable values.
    return f"""
            %{name}_float_type : int = prim::Constant[value=6]()
            %{name}_none : None = prim::Constant()
            %{name}_tensor : Tensor = aten::scalar_tensor(%{name}, %{name}_float_type, %{name}_none, %{name}_none, %{name}_none)
            %{name}_quant = aten::quantize_per_tensor(%{name}_tensor, %{name}_scale, %{name}_zero_point, %{name}_dtype)
            %{name}_dequant = aten::dequantize(%{name}_quant)
            %{name}_scalar : float = aten::item(%{name}_dequant)"""


def _clamp_like(op: str) -> Rewrite:
    """clamp / hardtanh with scalar bounds: the aten op runs on the quantized tensor."""
    header = (
        "graph(%a_quant, %min, %max, %min_scale, %min_zero_point, %min_dtype, "
        "%max_scale, %max_zero_point, %max_dtype, %r_scale, %r_zero_point, %r_dtype):"
    )
    return Rewrite(
        name=op,
        pattern=f"""{header}{_scalar_through_quantization("min")}{_scalar_through_quantization("max")}
            %a_dequant = aten::dequantize(%a_quant)
            %r = aten::{op}(%a_dequant, %min_scalar, %max_scalar)
            %r_quant = aten::quantize_per_tensor(%r, %r_scale, %r_zero_point, %r_dtype)
            return (%r_quant)""",
        replacement=f"""{header}
            %r = aten::{op}(%a_quant, %min, %max)
            return (%r)""",
        source="r",
    )


# Fixed output qparams of sigmoid-like ops (the kernels assume them).
_ASYMMETRIC_FIXED = ("0.00390625", "0")  # [0, 1] over quint8: 1/256, 0
_SYMMETRIC_FIXED = ("0.0078125", "128")  # [-1, 1] over quint8: 2/256, 128
_QUINT8 = 13  # torch.quint8 as a ScalarType number


def _fixed_qparams(op: str, qparams: tuple[str, str]) -> Rewrite:
    scale, zero_point = qparams
    return Rewrite(
        name=op,
        pattern=f"""graph(%a_quant):
            %a_dequant = aten::dequantize(%a_quant)
            %r = aten::{op}(%a_dequant)
            %r_scale : float = prim::Constant[value={scale}]()
            %r_zero_point : int = prim::Constant[value={zero_point}]()
            %r_dtype : int = prim::Constant[value={_QUINT8}]()
            %r_quant = aten::quantize_per_tensor(%r, %r_scale, %r_zero_point, %r_dtype)
            return (%r_quant)""",
        replacement=f"""graph(%a_quant):
            %r = aten::{op}(%a_quant)
            return (%r)""",
        source="r",
    )


def _batch_norm(relu: str | None) -> Rewrite:
    args = "%weight, %bias, %mean, %var, %training, %momentum, %eps, %cudnn_enabled"
    header = f"graph(%a_quant, {args}, %scale, %zero_point, %dtype):"
    if relu is None:
        body = f"""
            %r = aten::batch_norm(%a_dequant, {args})"""
        quantized_op, name = "batch_norm", "batch_norm"
    else:
        body = f"""
            %op_out = aten::batch_norm(%a_dequant, {args})
            %r = aten::{relu}(%op_out)"""
        quantized_op, name = "batch_norm_relu", f"batch_norm_{relu}"
    return Rewrite(
        name=name,
        pattern=f"""{header}
            %a_dequant = aten::dequantize(%a_quant){body}
            %r_quant = aten::quantize_per_tensor(%r, %scale, %zero_point, %dtype)
            return (%r_quant)""",
        replacement=f"""{header}
            %r_quant = quantized::{quantized_op}(%a_quant, %weight, %bias, %mean, %var, %eps, %scale, %zero_point)
            return (%r_quant)""",
        source="op_out" if relu is not None else "r",
    )


_CONV_ARGS = ["%stride", "%padding", "%dilation", "%groups"]
_CONV_TRANSPOSE_ARGS = ["%stride", "%padding", "%output_padding", "%groups", "%dilation"]


def _conv_family() -> list[Rewrite]:
    table = []
    for dim in (1, 2, 3):
        op = f"conv{dim}d"
        table += [
            _weighted(op, op, _CONV_ARGS, None),
            _weighted(op, f"{op}_relu", _CONV_ARGS, "relu"),
            _weighted(op, f"{op}_relu", _CONV_ARGS, "relu_"),
        ]
    for dim in (1, 2):
        op = f"conv_transpose{dim}d"
        table.append(_weighted(op, op, _CONV_TRANSPOSE_ARGS, None))
    return table


def _upsample_family() -> list[Rewrite]:
    scalar_scales = [
        ("upsample_nearest1d", ["%output_size", "%scales"]),
        ("upsample_nearest2d", ["%output_size", "%scale_h", "%scale_w"]),
        ("upsample_nearest3d", ["%output_size", "%scale_d", "%scale_h", "%scale_w"]),
        ("upsample_linear1d", ["%output_size", "%align_corners", "%scales"]),
        ("upsample_bilinear2d", ["%output_size", "%align_corners", "%scale_h", "%scale_w"]),
        ("upsample_trilinear3d", ["%output_size", "%align_corners", "%scale_d", "%scale_h", "%scale_w"]),
    ]
    vector_scales = [
        ("upsample_nearest1d", ["%output_size", "%scale_factors"]),
        ("upsample_nearest2d", ["%output_size", "%scale_factors"]),
        ("upsample_nearest3d", ["%output_size", "%scale_factors"]),
        ("upsample_linear1d", ["%output_size", "%align_corners", "%scale_factors"]),
        ("upsample_bilinear2d", ["%output_size", "%align_corners", "%scale_factors"]),
        ("upsample_trilinear3d", ["%output_size", "%align_corners", "%scale_factors"]),
    ]
    table = [_keeps_input_qparams(op, args) for op, args in scalar_scales]
    table += [_keeps_input_qparams(op, args, name=f"{op}_vec") for op, args in vector_scales]
    return table


_POOL_ARGS = ["%kernel_size", "%stride", "%padding", "%ceil_mode", "%count_include_pad"]

STATIC_QUANT_FUSION: list[Rewrite] = [
    *_conv_family(),
    _weighted("linear", "linear", [], None),
    _weighted("linear", "linear_relu", [], "relu"),
    _weighted("linear", "linear_relu", [], "relu_"),
    _binary("add", "relu", "add_relu", with_alpha=True),
    _binary("add", "relu_", "add_relu", with_alpha=True),
    _binary("add_", "relu", "add_relu", with_alpha=True),
    _binary("add_", "relu_", "add_relu", with_alpha=True),
    _binary_scalar("add", "quantized::add_scalar", ["%b_scalar", "%alpha"], ["%b_scalar"]),
    _binary_scalar("add_", "quantized::add_scalar_out", ["%b_scalar", "%alpha"], ["%b_scalar", "%a_quant"]),
    # Only after the two above: they produce what these match.
    _scalar_relu("add", "relu", out=False),
    _scalar_relu("add", "relu_", out=False),
    _scalar_relu("add", "relu", out=True),
    _scalar_relu("add", "relu_", out=True),
    _binary("add", None, "add", with_alpha=True),
    _binary("add_", None, "add", with_alpha=True),
    Rewrite(
        name="cat",
        pattern="""graph(%inputs_quant, %dim, %r_scale, %r_zero_point, %r_dtype):
            %inputs_dequant = aten::dequantize(%inputs_quant)
            %r = aten::cat(%inputs_dequant, %dim)
            %r_quant = aten::quantize_per_tensor(%r, %r_scale, %r_zero_point, %r_dtype)
            return (%r_quant)""",
        replacement="""graph(%inputs_quant, %dim, %r_scale, %r_zero_point, %r_dtype):
            %r_quant = quantized::cat(%inputs_quant, %dim, %r_scale, %r_zero_point)
            return (%r_quant)""",
        source="r",
    ),
    _batch_norm(None),
    _batch_norm("relu"),
    _batch_norm("relu_"),
    _binary_scalar("mul", "quantized::mul_scalar", ["%b_scalar"], ["%b_scalar"]),
    _binary_scalar("mul_", "quantized::mul_scalar_out", ["%b_scalar"], ["%b_scalar", "%a_quant"]),
    # Only after the two above, as for add.
    _scalar_relu("mul", "relu", out=False),
    _scalar_relu("mul", "relu_", out=False),
    _scalar_relu("mul", "relu", out=True),
    _scalar_relu("mul", "relu_", out=True),
    _binary("mul", "relu", "mul_relu", with_alpha=False),
    _binary("mul", "relu_", "mul_relu", with_alpha=False),
    _binary("mul_", "relu", "mul_relu", with_alpha=False),
    _binary("mul_", "relu_", "mul_relu", with_alpha=False),
    _binary("mul", None, "mul", with_alpha=False),
    _binary("mul_", None, "mul", with_alpha=False),
    _observed_output("hardswish", "hardswish", [], [], "hardswish"),
    _observed_output("hardswish_", "hardswish", [], [], "hardswish_"),
    _observed_output(
        "layer_norm",
        "layer_norm",
        ["%normalized_shape", "%weight", "%bias", "%eps", "%cudnn_enabled"],
        ["%normalized_shape", "%weight", "%bias", "%eps"],
        "layer_norm",
    ),
    _observed_output(
        "group_norm",
        "group_norm",
        ["%num_groups", "%weight", "%bias", "%eps", "%cudnn_enabled"],
        ["%num_groups", "%weight", "%bias", "%eps"],
        "group_norm",
    ),
    _observed_output(
        "instance_norm",
        "instance_norm",
        [
            "%weight",
            "%bias",
            "%running_mean",
            "%running_var",
            "%use_input_stats",
            "%momentum",
            "%eps",
            "%cudnn_enabled",
        ],
        ["%weight", "%bias", "%eps"],
        "instance_norm",
    ),
    # quantized::elu takes the output qparams before elu's own arguments.
    *(
        Rewrite(
            name=op,
            pattern=f"""graph(%a_quant, %alpha, %scale, %input_scale, %r_scale, %r_zero_point, %r_dtype):
                %a_dequant = aten::dequantize(%a_quant)
                %r = aten::{op}(%a_dequant, %alpha, %scale, %input_scale)
                %r_quant = aten::quantize_per_tensor(%r, %r_scale, %r_zero_point, %r_dtype)
                return (%r_quant)""",
            replacement="""graph(%a_quant, %alpha, %scale, %input_scale, %r_scale, %r_zero_point, %r_dtype):
                %r_quant = quantized::elu(%a_quant, %r_scale, %r_zero_point, %alpha, %scale, %input_scale)
                return (%r_quant)""",
            source="r",
        )
        for op in ("elu", "elu_")
    ),
    _keeps_input_qparams("avg_pool1d", _POOL_ARGS),
    _keeps_input_qparams("avg_pool2d", [*_POOL_ARGS, "%divisor_override"]),
    _keeps_input_qparams("avg_pool3d", [*_POOL_ARGS, "%divisor_override"]),
    _keeps_input_qparams("adaptive_avg_pool1d", ["%output_size"]),
    _keeps_input_qparams("adaptive_avg_pool2d", ["%output_size"]),
    _keeps_input_qparams("adaptive_avg_pool3d", ["%output_size"]),
    _keeps_input_qparams("mean", ["%dtype"], name="mean"),
    _keeps_input_qparams("mean", ["%dim", "%keepdim", "%dtype"], name="mean_dim"),
    *_upsample_family(),
    _clamp_like("clamp"),
    _clamp_like("hardtanh"),
    _clamp_like("hardtanh_"),
    _keeps_input_qparams("leaky_relu", ["%negative_slope"]),
    _keeps_input_qparams("leaky_relu_", ["%negative_slope"]),
    _fixed_qparams("hardsigmoid", _ASYMMETRIC_FIXED),
    _fixed_qparams("hardsigmoid_", _ASYMMETRIC_FIXED),
    _fixed_qparams("sigmoid", _ASYMMETRIC_FIXED),
    _fixed_qparams("sigmoid_", _ASYMMETRIC_FIXED),
    _fixed_qparams("tanh", _SYMMETRIC_FIXED),
    _fixed_qparams("tanh_", _SYMMETRIC_FIXED),
]

DYNAMIC_QUANT_FUSION: list[Rewrite] = [
    # The activation's qparams are chosen at run time; the kernel does that itself.
    Rewrite(
        name="linear_dynamic",
        pattern="""graph(%packed_params, %a, %reduce_range, %a_dtype):
            %a_scale : float, %a_zero_point : int = aten::_choose_qparams_per_tensor(%a, %reduce_range)
            %a_quant = aten::quantize_per_tensor(%a, %a_scale, %a_zero_point, %a_dtype)
            %a_dequant = aten::dequantize(%a_quant)
            %w_quant : Tensor, %b : Tensor? = quantized::linear_unpack(%packed_params)
            %w_dequant = aten::dequantize(%w_quant)
            %r = aten::linear(%a_dequant, %w_dequant, %b)
            return (%r)""",
        replacement="""graph(%packed_params, %a, %reduce_range, %a_dtype):
            %r = quantized::linear_dynamic(%a, %packed_params, %reduce_range)
            return (%r)""",
    ),
    # A weight quantized for one linear and read by another whose input was
    # never observed (a shared weight under a narrower qconfig): the reference
    # still runs that linear dynamically, with reduce_range on.
    Rewrite(
        name="linear_dynamic_unobserved_input",
        pattern="""graph(%packed_params, %a):
            %w_quant : Tensor, %b : Tensor? = quantized::linear_unpack(%packed_params)
            %w_dequant = aten::dequantize(%w_quant)
            %r = aten::linear(%a, %w_dequant, %b)
            return (%r)""",
        replacement="""graph(%packed_params, %a):
            %reduce_range : bool = prim::Constant[value=1]()
            %r = quantized::linear_dynamic(%a, %packed_params, %reduce_range)
            return (%r)""",
    ),
    Rewrite(
        name="linear_dynamic_fp16",
        pattern="""graph(%packed_params, %a):
            %w_unpacked : Tensor, %b : Tensor? = quantized::linear_unpack_fp16(%packed_params)
            %r = aten::linear(%a, %w_unpacked, %b)
            return (%r)""",
        replacement="""graph(%packed_params, %a):
            %r = quantized::linear_dynamic_fp16(%a, %packed_params)
            return (%r)""",
    ),
]


def quant_fusion_table(quant_type: QuantType) -> list[Rewrite]:
    """The fusion table for ``quant_type`` (STATIC or DYNAMIC)."""
    if not isinstance(quant_type, QuantType):
        raise TypeError(f"quant_type must be a torch.ao.quantization.QuantType, got {quant_type!r}")
    if quant_type == QuantType.STATIC:
        return STATIC_QUANT_FUSION
    if quant_type == QuantType.DYNAMIC:
        return DYNAMIC_QUANT_FUSION
    raise ValueError(f"quant fusion supports QuantType.STATIC and QuantType.DYNAMIC, got {quant_type}")


def quant_fusion(graph: Graph, quant_type: QuantType = QuantType.STATIC) -> int:
    """Replace ``dequantize -> op -> quantize`` islands of ``graph`` with quantized ops, in place.

    Returns the number of rewrites made. Weights must already go through
    ``insert_prepack_unpack``.
    """
    if not isinstance(graph, Graph):
        raise TypeError(f"quant_fusion expects a torch._C.Graph, got {type(graph).__name__}")
    return rewrite_present(graph, quant_fusion_table(quant_type))


def rewrite_present(graph: Graph, rewrites: list[Rewrite]) -> int:
    """``qgraph.pattern.rewrite`` in table order, skipping rewrites whose op kinds are absent.

    A pattern can only match where every op kind it contains occurs, so a
    model without convolutions never tries the conv patterns. Kinds are
    looked up when each rewrite's turn comes, since earlier rewrites create
    the ops later ones match (``quantized::add_scalar`` before
    ``add_scalar -> relu``).
    """
    index = NodeIndex(graph)
    made = 0
    for entry in rewrites:
        if all(index.of_kind(kind) for kind in _op_kinds(entry.pattern)):
            made += rewrite(graph, [entry], index)
    return made


@functools.lru_cache(maxsize=None)
def _op_kinds(pattern: str) -> tuple[str, ...]:
    return tuple({node.kind() for node in compile_pattern(pattern).nodes if node.kind() != "prim::Constant"})
