"""The fusion tables, in order: static (PyTorch's quantized kernels) and dynamic (activations quantized at run time).

Order is meaning: more specific patterns first (``quantized::add_scalar``
must exist before ``add_scalar -> relu`` can fuse into
``quantized::add_scalar_relu``), in the order and with the filters of
PyTorch's own graph-mode quantization, so that the same model gives the
same ops and the same bits. A user extends a table by adding ``Rewrite``
entries to a copy of it and calling ``qgraph.pattern.rewrite``.
"""

from __future__ import annotations

from passes.lower.quant_fusion.builders import (
    batch_norm,
    binary,
    binary_scalar,
    clamp_like,
    fixed_qparams,
    keeps_input_qparams,
    observed_output,
    scalar_relu,
    weighted,
)
from qgraph.pattern import Rewrite

__all__ = ["STATIC_QUANT_FUSION", "DYNAMIC_QUANT_FUSION", "CONV_FUSIONS"]


_CONV_ARGS = ["%stride", "%padding", "%dilation", "%groups"]
_CONV_TRANSPOSE_ARGS = ["%stride", "%padding", "%output_padding", "%groups", "%dilation"]


def _conv_family() -> list[Rewrite]:
    """conv{1,2,3}d (plain, + relu, + relu_) and conv_transpose{1,2}d, each over a packed weight."""
    table = []
    for dim in (1, 2, 3):
        op = f"conv{dim}d"
        table += [
            weighted(op, op, _CONV_ARGS, None),
            weighted(op, f"{op}_relu", _CONV_ARGS, "relu"),
            weighted(op, f"{op}_relu", _CONV_ARGS, "relu_"),
        ]
    for dim in (1, 2):
        op = f"conv_transpose{dim}d"
        table.append(weighted(op, op, _CONV_TRANSPOSE_ARGS, None))
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
    table = [keeps_input_qparams(op, args) for op, args in scalar_scales]
    table += [keeps_input_qparams(op, args, name=f"{op}_vec") for op, args in vector_scales]
    return table


_POOL_ARGS = ["%kernel_size", "%stride", "%padding", "%ceil_mode", "%count_include_pad"]

CONV_FUSIONS: list[Rewrite] = _conv_family()

STATIC_QUANT_FUSION: list[Rewrite] = [
    *CONV_FUSIONS,
    weighted("linear", "linear", [], None),
    weighted("linear", "linear_relu", [], "relu"),
    weighted("linear", "linear_relu", [], "relu_"),
    binary("add", "relu", "add_relu", with_alpha=True),
    binary("add", "relu_", "add_relu", with_alpha=True),
    binary("add_", "relu", "add_relu", with_alpha=True),
    binary("add_", "relu_", "add_relu", with_alpha=True),
    binary_scalar("add", "quantized::add_scalar", ["%b_scalar", "%alpha"], ["%b_scalar"]),
    binary_scalar("add_", "quantized::add_scalar_out", ["%b_scalar", "%alpha"], ["%b_scalar", "%a_quant"]),
    # Only after the two above: they produce what these match.
    scalar_relu("add", "relu", out=False),
    scalar_relu("add", "relu_", out=False),
    scalar_relu("add", "relu", out=True),
    scalar_relu("add", "relu_", out=True),
    binary("add", None, "add", with_alpha=True),
    binary("add_", None, "add", with_alpha=True),
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
    batch_norm(None),
    batch_norm("relu"),
    batch_norm("relu_"),
    binary_scalar("mul", "quantized::mul_scalar", ["%b_scalar"], ["%b_scalar"]),
    binary_scalar("mul_", "quantized::mul_scalar_out", ["%b_scalar"], ["%b_scalar", "%a_quant"]),
    # Only after the two above, as for add.
    scalar_relu("mul", "relu", out=False),
    scalar_relu("mul", "relu_", out=False),
    scalar_relu("mul", "relu", out=True),
    scalar_relu("mul", "relu_", out=True),
    binary("mul", "relu", "mul_relu", with_alpha=False),
    binary("mul", "relu_", "mul_relu", with_alpha=False),
    binary("mul_", "relu", "mul_relu", with_alpha=False),
    binary("mul_", "relu_", "mul_relu", with_alpha=False),
    binary("mul", None, "mul", with_alpha=False),
    binary("mul_", None, "mul", with_alpha=False),
    observed_output("hardswish", "hardswish", [], [], "hardswish"),
    observed_output("hardswish_", "hardswish", [], [], "hardswish_"),
    observed_output(
        "layer_norm",
        "layer_norm",
        ["%normalized_shape", "%weight", "%bias", "%eps", "%cudnn_enabled"],
        ["%normalized_shape", "%weight", "%bias", "%eps"],
        "layer_norm",
    ),
    observed_output(
        "group_norm",
        "group_norm",
        ["%num_groups", "%weight", "%bias", "%eps", "%cudnn_enabled"],
        ["%num_groups", "%weight", "%bias", "%eps"],
        "group_norm",
    ),
    observed_output(
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
    keeps_input_qparams("avg_pool1d", _POOL_ARGS),
    keeps_input_qparams("avg_pool2d", [*_POOL_ARGS, "%divisor_override"]),
    keeps_input_qparams("avg_pool3d", [*_POOL_ARGS, "%divisor_override"]),
    keeps_input_qparams("adaptive_avg_pool1d", ["%output_size"]),
    keeps_input_qparams("adaptive_avg_pool2d", ["%output_size"]),
    keeps_input_qparams("adaptive_avg_pool3d", ["%output_size"]),
    keeps_input_qparams("mean", ["%dtype"], name="mean"),
    keeps_input_qparams("mean", ["%dim", "%keepdim", "%dtype"], name="mean_dim"),
    *_upsample_family(),
    clamp_like("clamp"),
    clamp_like("hardtanh"),
    clamp_like("hardtanh_"),
    keeps_input_qparams("leaky_relu", ["%negative_slope"]),
    keeps_input_qparams("leaky_relu_", ["%negative_slope"]),
    fixed_qparams("hardsigmoid"),
    fixed_qparams("hardsigmoid_"),
    fixed_qparams("sigmoid"),
    fixed_qparams("sigmoid_"),
    fixed_qparams("tanh"),
    fixed_qparams("tanh_"),
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
