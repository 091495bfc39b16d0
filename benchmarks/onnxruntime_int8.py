"""ONNX Runtime's static int8 models, the yardstick of bench_onednn.py.

A float model is exported to ONNX (TorchScript exporter, opset 17, batch
1), pre-processed (``quant_pre_process``) and quantized with
``quantize_static``: QDQ format, per-channel weights, MinMax calibration.
Two activation types are made:

- ``S8S8``: int8 activations and weights, ``quantize_static``'s default;
- ``U8S8``: uint8 activations, int8 weights.

Sessions run on the CPU execution provider with one intra-op and one
inter-op thread. ``onnxruntime`` and ``onnx`` are the ``bench`` extra of
the project (``pip install -e '.[bench]'``); ``available()`` says whether
they can be imported.
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

__all__ = ["ACTIVATION_TYPES", "available", "missing_message", "OrtModels"]

ACTIVATION_TYPES = ("S8S8", "U8S8")


def available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


def missing_message() -> str:
    return "ONNX Runtime columns skipped: onnxruntime and onnx are not installed (pip install -e '.[bench]')"


class OrtModels:
    """The float model exported once, and its int8 sessions made on demand."""

    def __init__(self, model: torch.nn.Module, example: torch.Tensor):
        self._folder = tempfile.TemporaryDirectory(prefix="qgraph-ort-")
        folder = Path(self._folder.name)
        self.float_path = folder / "model.onnx"
        self.prepared_path = folder / "model_pre.onnx"
        torch.onnx.export(
            model,
            (example,),
            str(self.float_path),
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["y"],
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(str(self.float_path), str(self.prepared_path))

    def int8(self, activation_type: str, calibration: Sequence[torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        """A function running the int8 session (``"S8S8"`` or ``"U8S8"``) calibrated on ``calibration`` samples."""
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.samples = iter([{"x": sample.numpy()} for sample in calibration])

            def get_next(self):
                return next(self.samples, None)

        path = self.prepared_path.with_name(f"model_{activation_type}.onnx")
        quantize_static(
            str(self.prepared_path),
            str(path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
            activation_type=QuantType.QInt8 if activation_type == "S8S8" else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        return _runner(path)


def _runner(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"x": x.numpy()})[0])

    return run
