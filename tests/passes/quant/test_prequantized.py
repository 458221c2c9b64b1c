"""Models that arrive already quantized (onnxruntime QDQ, QOperator, dynamic ConvInteger) load,
round-trip and go through the Q/DQ passes without changing their outputs."""

from __future__ import annotations

import numpy as np
import pytest
from quant_helpers import canonical_zoo

from slimcc.ir.model import load_model, save_model
from slimcc.ir.verify import compare_models
from slimcc.models.data import zoo_inputs
from slimcc.passes.quant.qdq_cancel import QDQCancel
from slimcc.passes.quant.qdq_propagate import QDQPropagate


class _Reader:
    def __init__(self, feeds):
        self.items = iter(feeds)

    def get_next(self):
        return next(self.items, None)


@pytest.fixture(scope="module")
def fp32_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("preq") / "fp32.onnx"
    save_model(canonical_zoo("resnet-basic"), path)
    return path


@pytest.mark.parametrize("kind", ["qdq", "qoperator", "dynamic"])
def test_prequantized_roundtrip_and_passes(fp32_path, tmp_path, kind):
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    out = tmp_path / f"{kind}.onnx"
    feeds = zoo_inputs(3)
    if kind == "dynamic":
        quantize_dynamic(str(fp32_path), str(out), weight_type=QuantType.QUInt8, op_types_to_quantize=["Conv"])
    else:
        fmt = QuantFormat.QDQ if kind == "qdq" else QuantFormat.QOperator
        quantize_static(str(fp32_path), str(out), _Reader(feeds[:2]), quant_format=fmt, per_channel=True)
    model = load_model(out)
    ops = {n.op for n in model.graph.nodes}
    expected = {"qdq": "DequantizeLinear", "qoperator": "QLinearConv", "dynamic": "ConvInteger"}[kind]
    assert expected in ops
    original = load_model(out)
    again = load_model(model.to_proto())
    assert compare_models(original, again, feeds).max_abs == 0.0
    QDQPropagate().run(model)
    QDQCancel().run(model)
    saved = save_model(model, tmp_path / "after.onnx")
    assert compare_models(original, load_model(saved), feeds).max_abs == 0.0
    if kind == "qdq":
        ints = [t for t in model.graph.tensors().values() if getattr(t, "values", None) is not None
                and np.asarray(t.values).dtype == np.int8]
        assert ints  # int8 weights survive the round trip as int8 initializers
