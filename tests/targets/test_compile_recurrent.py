"""Recurrent layers through `slimcc compile`: the zoo CRNN's LSTM is lowered without being asked and
matches onnxruntime; ops TVM cannot import get a one-line error that names them and what slimcc can do."""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from slimcc.errors import SlimccError
from slimcc.ir.model import load_model
from slimcc.models.zoo import build
from slimcc.targets.compiler import compile_file, prepare_model
from slimcc.targets.relax_import import describe_import_error
from slimcc.targets.runner import load_artifact

from targets_helpers import assert_matches_onnxruntime, feeds_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ir"))
from ir_builders import make_proto, recurrent_model  # noqa: E402


def test_zoo_crnn_compiles_for_x86_and_matches_onnxruntime(tmp_path):
    proto = build("crnn", size=16, width=8)  # 4 time steps, hidden 16: a small but complete CRNN
    assert "LSTM" in [n.op_type for n in proto.graph.node]
    manifest = compile_file(proto, "x86", output_dir=tmp_path / "art", tuned=False, isolate=False)
    assert manifest.library
    original = load_model(proto)  # onnxruntime runs the LSTM node itself
    feeds = feeds_for(original)
    assert_matches_onnxruntime(original, load_artifact(tmp_path / "art").run(feeds), feeds)


def _with_celu(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The model with a Celu (which TVM 0.27's ONNX frontend lacks) after its first output."""
    first = proto.graph.output[0].name
    nodes = list(proto.graph.node) + [helper.make_node("Celu", [first], ["z"], name="celu")]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    return make_proto(nodes, list(proto.graph.input), [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
                      inits)


def test_unsupported_op_error_names_the_op_and_says_onnxruntime_still_runs_it(tmp_path):
    proto = _with_celu(recurrent_model("GRU", "forward", outputs=(1,)))
    with pytest.raises(SlimccError) as info:
        compile_file(proto, "x86", output_dir=tmp_path / "art", tuned=False, isolate=False)
    message = str(info.value)
    assert "\n" not in message
    assert "no converter for Celu;" in message and "it can still run on onnxruntime" in message
    assert "GRU" not in message  # the GRU was lowered
    assert "--pipeline canonicalize" not in message  # canonicalize cannot help with a missing converter
    assert not (tmp_path / "art").exists()


def test_refused_lstm_error_says_why_lower_recurrent_left_it(tmp_path):
    proto = recurrent_model("LSTM", "forward", clip=3.0)
    with pytest.raises(SlimccError, match=r"no converter for LSTM; LSTM: slimcc's lower-recurrent pass .* no clip"):
        compile_file(proto, "x86", output_dir=tmp_path / "art", tuned=False, isolate=False)
    frontend_error = Exception("The following operators are not supported for frontend ONNX: LSTM")  # TVM's words
    detailed = describe_import_error(frontend_error, prepare_model(proto))
    assert "refused them here, 'lstm': LSTM cell clipping (clip=3.0) is not lowered" in detailed


def test_other_import_failures_keep_the_canonicalize_hint():
    message = describe_import_error(KeyError("Reshape shape is not a constant"))
    assert "--pipeline canonicalize" in message
    assert "\n" not in message
