"""Pattern builders for the fusion tables: one function per family of ``dequantize -> op -> quantize`` islands.

Each builder writes the pattern and the replacement of one table entry in
IR text; ``tables.py`` lists the entries in order.
"""

from __future__ import annotations

from qgraph.ir import Node, ivalue
from qgraph.pattern import Match, Rewrite
from qgraph.quant.float_ops import is_tagged
from qgraph.quant.observed_values import is_scalar
from qgraph.quant.ops import FIXED_QPARAMS
from qgraph.quant.scalar_types import FLOAT32, QUINT8

__all__ = [
    "weighted",
    "binary",
    "keeps_input_qparams",
    "binary_scalar",
    "scalar_relu",
    "observed_output",
    "clamp_like",
    "fixed_qparams",
    "batch_norm",
    "conv_node",
]


def _then_relu(op: str, call: str, relu: str | None) -> tuple[str, str]:
    """The float body ``%r = call`` (or ``call`` then ``relu``, as ``%op_out``), and the rewrite's name."""
    if relu is None:
        return (
            f"""
            %r = {call}""",
            op,
        )
    return (
        f"""
            %op_out = {call}
            %r = aten::{relu}(%op_out)""",
        f"{op}_{relu}",
    )


def alpha_is_int_one(match: Match) -> bool:
    """``%alpha`` is the int constant 1 (the quantized add kernels have no alpha; 1.0 does not count)."""
    value = match["alpha"]
    if value.node().kind() != "prim::Constant":
        return False
    alpha = ivalue(value)
    return type(alpha) is int and alpha == 1


def b_is_scalar(match: Match) -> bool:
    """``%b_scalar`` is a number, or a constant 0-dim tensor."""
    return is_scalar(match["b_scalar"])


def conv_node(match: Match) -> Node:
    """The float conv (or linear) of a match of a ``weighted`` entry."""
    return match.node("op_out") if "op_out" in match.pattern.names else match.node("r")


def not_kept_in_float(match: Match) -> bool:
    """The conv was not tagged to stay float (``unsafe_convs.py``)."""
    return not is_tagged(conv_node(match))


def args_text(names: list[str]) -> str:
    return "".join(f", {name}" for name in names)


def weighted(op: str, quantized_op: str, args: list[str], relu: str | None) -> Rewrite:
    """conv / conv_transpose / linear with a packed weight, optionally followed by ``relu``."""
    extra = args_text(args)
    header = f"graph(%a_quant, %packed_params, %r_scale, %r_zero_point, %r_dtype{extra}):"
    body, name = _then_relu(op, f"aten::{op}(%a_dequant, %w_dequant, %b{extra})", relu)
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
        # A conv on a kernel known to corrupt memory stays float (tagged beforehand).
        filters=(not_kept_in_float,) if op.startswith("conv") else (),
        source="op_out" if relu is not None else "r",
    )


def binary(op: str, relu: str | None, quantized_op: str, with_alpha: bool) -> Rewrite:
    """Tensor-tensor add / mul of two quantized inputs, optionally followed by ``relu``."""
    alpha = ", %alpha" if with_alpha else ""
    header = f"graph(%a_quant, %b_quant{alpha}, %scale, %zero_point, %dtype):"
    body, name = _then_relu(op, f"aten::{op}(%a_dequant, %b_dequant{alpha})", relu)
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
    extra = args_text(args)
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


def keeps_input_qparams(op: str, args: list[str], name: str | None = None) -> Rewrite:
    """``op`` runs as is on the quantized tensor; its output keeps the input's qparams."""
    header, pattern = _input_qparams_pattern(op, args)
    return Rewrite(
        name=name or op,
        pattern=pattern,
        replacement=f"""{header}
            %r = aten::{op}(%a_quant{args_text(args)})
            return (%r)""",
        source="r",
    )


def binary_scalar(op: str, quantized_op: str, args: list[str], quantized_args: list[str]) -> Rewrite:
    """add / mul of a quantized tensor and a scalar: the kernel derives the output qparams itself."""
    header, pattern = _input_qparams_pattern(op, args)
    filters = (alpha_is_int_one, b_is_scalar) if "%alpha" in args else (b_is_scalar,)
    return Rewrite(
        name=quantized_op.removeprefix("quantized::"),
        pattern=pattern,
        replacement=f"""{header}
            %r = {quantized_op}(%a_quant{args_text(quantized_args)})
            return (%r)""",
        filters=filters,
        source="r",
    )


def scalar_relu(quantized_op: str, relu: str, out: bool) -> Rewrite:
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


def observed_output(op: str, quantized_op: str, args: list[str], quantized_args: list[str], name: str) -> Rewrite:
    """``op`` whose output has its own observed qparams, passed to the quantized kernel."""
    extra = args_text(args)
    header = f"graph(%a_quant{extra}, %r_scale, %r_zero_point, %r_dtype):"
    return Rewrite(
        name=name,
        pattern=f"""{header}
            %a_dequant = aten::dequantize(%a_quant)
            %r = aten::{op}(%a_dequant{extra})
            %r_quant = aten::quantize_per_tensor(%r, %r_scale, %r_zero_point, %r_dtype)
            return (%r_quant)""",
        replacement=f"""{header}
            %r_quant = quantized::{quantized_op}(%a_quant{args_text(quantized_args)}, %r_scale, %r_zero_point)
            return (%r_quant)""",
        source="r",
    )


def _scalar_through_quantization(name: str) -> str:
    # The convert step quantizes clamp's scalar bounds with the input's
    # qparams and reads them back (scalar -> tensor -> quantize -> dequantize
    # -> item), so the float reference clamps to representable values.
    return f"""
            %{name}_float_type : int = prim::Constant[value={FLOAT32}]()
            %{name}_none : None = prim::Constant()
            %{name}_tensor : Tensor = aten::scalar_tensor(%{name}, %{name}_float_type, %{name}_none, %{name}_none, %{name}_none)
            %{name}_quant = aten::quantize_per_tensor(%{name}_tensor, %{name}_scale, %{name}_zero_point, %{name}_dtype)
            %{name}_dequant = aten::dequantize(%{name}_quant)
            %{name}_scalar : float = aten::item(%{name}_dequant)"""


def clamp_like(op: str) -> Rewrite:
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


def fixed_qparams(op: str) -> Rewrite:
    """sigmoid-like ops: the kernel assumes the op's fixed output qparams (``FIXED_QPARAMS``)."""
    scale, zero_point, _ = FIXED_QPARAMS[op]
    return Rewrite(
        name=op,
        pattern=f"""graph(%a_quant):
            %a_dequant = aten::dequantize(%a_quant)
            %r = aten::{op}(%a_dequant)
            %r_scale : float = prim::Constant[value={scale}]()
            %r_zero_point : int = prim::Constant[value={zero_point}]()
            %r_dtype : int = prim::Constant[value={QUINT8}]()
            %r_quant = aten::quantize_per_tensor(%r, %r_scale, %r_zero_point, %r_dtype)
            return (%r_quant)""",
        replacement=f"""graph(%a_quant):
            %r = aten::{op}(%a_quant)
            return (%r)""",
        source="r",
    )


def batch_norm(relu: str | None) -> Rewrite:
    args = "%weight, %bias, %mean, %var, %training, %momentum, %eps, %cudnn_enabled"
    header = f"graph(%a_quant, {args}, %scale, %zero_point, %dtype):"
    body, name = _then_relu("batch_norm", f"aten::batch_norm(%a_dequant, {args})", relu)
    quantized_op = "batch_norm" if relu is None else "batch_norm_relu"
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
