"""Shared builders for the int8 tests: canonicalized zoo models and calibration data."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from slimcc.ir.calibration import CalibrationData
from slimcc.ir.model import load_model
from slimcc.models.data import zoo_inputs
from slimcc.models.zoo import build
from slimcc.passes.base import PassContext
from slimcc.passes.canonicalize import Canonicalize


def canonical_zoo(name: str, **kw):
    """A canonicalized zoo model (BN folded) as a slimcc Model."""
    model = load_model(build(name, **kw))
    Canonicalize().run(model)
    return model


def canonical_real(path, name: str):
    """A canonicalized real model (`path` from the real_model_path fixture) at its registry input shape."""
    from slimcc.models.fetch import REAL_MODELS

    info = REAL_MODELS[name]
    model = load_model(path, {info.input_name: list(info.input_shape)})
    Canonicalize().run(model)
    return model


def calib_context(count: int = 4, size: int = 32) -> tuple[PassContext, list[dict[str, np.ndarray]]]:
    """A PassContext with real-photo calibration batches, and held-out evaluation feeds."""
    feeds = zoo_inputs(count + 2, size=size)
    return PassContext(calibration=CalibrationData(feeds[:count]), progress=False), feeds[count:]


def qdq_model(nodes, inits, inputs, outputs, opset: int = 17):
    """A throwaway ModelProto from onnx.helper parts."""
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def vi(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, shape)


def scalar(name, dtype, value):
    return helper.make_tensor(name, dtype, [], [value])


F, U8, I8, I32 = TensorProto.FLOAT, TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32


def optimized_op_types(model) -> list[str]:
    """Op types of the graph onnxruntime actually runs (ORT_ENABLE_ALL, CPU): shows which QDQ fusions fired."""
    import tempfile
    from pathlib import Path

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(model.to_proto().SerializeToString(), options, providers=["CPUExecutionProvider"])
        return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
