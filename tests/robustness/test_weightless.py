"""Weights stay in the parent: the checker and shape inference on a weightless copy give the same
refusals and the same inferred model as on the full model, over hostile fuzz cases."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import onnx
import pytest

from robust_fuzzlib import BASES, EDITS, hostile_model, mutate_bytes, weight_spans
from slimcc.errors import SlimccError
from slimcc.ir.export import export_model
from slimcc.ir.model import Model, check_declared_dims, find_invalid_string, load_model, save_model
from slimcc.ir.sandbox import SandboxWorker
from slimcc.ir.weightless import STUB_FILE, strip_weights, stubbable
from slimcc.models.zoo import ZOO, build

import onnx_graphsurgeon as gs


@pytest.fixture(scope="module")
def worker():
    path = os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    sandbox = SandboxWorker(extra_env={"PYTHONPATH": path}, memory_limit_bytes=4 * 2**30)
    yield sandbox
    sandbox.close()


def outcome(worker: SandboxWorker, task: str, payload: bytes) -> tuple[str, str | bytes]:
    """("ok", result bytes) or ("error", the one-line message, its class included)."""
    try:
        return "ok", worker.call(f"weightless_tasks:{task}", payload, what="checking", timeout=60)
    except SlimccError as exc:
        return "error", f"{type(exc).__name__}: {exc}"


def hostile_cases(count: int, seed: int) -> list[tuple[str, bytes]]:
    """Graph-edit cases (the fuzz campaign's EDITS on its BASES) and byte mutations of zoo models."""
    rng = random.Random(seed)
    cases = []
    for i in range(count):
        base, opset = rng.choice(sorted(BASES)), rng.randint(7, 21)
        edits = [(rng.choice(EDITS), rng.randrange(10**6)) for _ in range(rng.randint(0, 3))]
        try:
            cases.append((f"{base}@{opset}:{edits}", hostile_model(base, opset, edits).SerializeToString()))
        except Exception:  # the generator cannot build this combination
            continue
    for name in ZOO:
        data = build(name, seed=0).SerializeToString()
        spans = weight_spans(data, onnx.load_from_string(data))
        for _ in range(count // 20):
            label, mutated = mutate_bytes(data, rng, spans)
            cases.append((f"{name}:{label}", mutated))
    return cases


def test_weightless_check_matches_full_check_on_hostile_models(worker):
    compared = stubbed = refused = 0
    for label, payload in hostile_cases(300, seed=20):
        proto = onnx.ModelProto()
        try:
            proto.ParseFromString(payload)
            check_declared_dims(proto)
        except Exception:
            continue
        if find_invalid_string(proto) is not None:  # load_model refuses these before the checker
            continue
        full, light = outcome(worker, "with_weights", payload), outcome(worker, "weightless", payload)
        assert light == full, label
        compared += 1
        refused += full[0] == "error"
        stubbed += bool(stubbable(proto, 1))
    print(f"{compared} cases, {stubbed} with stubbed weights, {refused} refused")
    assert compared >= 250 and stubbed >= 100 and 50 <= refused <= compared - 50


def test_stubs_carry_no_values_and_keep_dtype_and_dims():
    proto = build("vgg", seed=0)
    stripped = strip_weights(proto, min_bytes=1)
    weights = {t.name: t for t in proto.graph.initializer}
    stubs = [t for t in stripped.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert len(stubs) >= 10
    for stub in stubs:
        assert not stub.HasField("raw_data") and stub.external_data[0].value == STUB_FILE
        assert (stub.data_type, list(stub.dims)) == (weights[stub.name].data_type, list(weights[stub.name].dims))
    assert stripped.ByteSize() < proto.ByteSize() / 10


def test_values_read_by_shape_inference_are_never_stubbed():
    """A Reshape's shape and a Resize's scales are read by inference: they keep their values."""
    from onnx import TensorProto, helper, numpy_helper

    scales = numpy_helper.from_array(np.ones(4096, np.float32), "scales")
    weight = numpy_helper.from_array(np.ones((8, 3, 3, 3), np.float32), "w")
    shared = numpy_helper.from_array(np.ones(4096, np.float32), "shared")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Resize", ["c", "", "scales"], ["r"]),
             helper.make_node("Mul", ["r", "shared"], ["y"]), helper.make_node("Resize", ["c", "", "shared"], ["z"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [scales, weight, shared])
    assert stubbable(helper.make_model(graph), 1) == {"w"}


def test_export_matches_graphsurgeon():
    for name in ("resnet-basic", "c2f", "crnn", "attn-ctc"):
        graph = gs.import_onnx(build(name, seed=1))
        assert export_model(graph).SerializeToString(deterministic=True) == \
            gs.export_onnx(graph, do_type_check=False).SerializeToString(deterministic=True)


def test_large_models_are_saved_with_external_data(tmp_path, monkeypatch):
    """Above the 2 GB limit (lowered here) the weights go to one data file, written tensor by tensor."""
    import slimcc.ir.model as model_module

    model = load_model(build("resnet-basic", seed=2))
    monkeypatch.setattr(model_module, "TWO_GB", 2**16 + model_module.EXTERNAL_HEADROOM)
    out = save_model(model, tmp_path / "big.onnx")
    data = tmp_path / "big.onnx.data"
    assert data.stat().st_size > 2**16 and out.stat().st_size < 2**16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    again = load_model(out)
    before = {t.name: t.values for t in model.graph.tensors().values() if isinstance(t, gs.Constant)}
    after = {t.name: t.values for t in again.graph.tensors().values() if isinstance(t, gs.Constant)}
    assert before.keys() == after.keys()
    for name, values in before.items():
        np.testing.assert_array_equal(values, after[name])
    assert isinstance(again, Model)


def test_saved_file_is_the_exported_model(tmp_path):
    """Weights streamed from their arrays (ir.wire) give the file protobuf itself would write."""
    model = load_model(build("c2f", seed=4))
    model.copy()  # weights become shared read-only arrays
    path = save_model(model, tmp_path / "m.onnx")
    expected = gs.export_onnx(model.graph, do_type_check=False)
    expected.producer_name = expected.producer_name or "slimcc"
    written = onnx.load(path)
    assert written.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)


def test_refresh_shapes_keeps_the_weight_arrays():
    model = load_model(build("resnet-basic", seed=5))
    model.copy()
    before = {t.name: t.values for t in model.graph.tensors().values() if isinstance(t, gs.Constant)}
    model.refresh_shapes()
    after = {t.name: t.values for t in model.graph.tensors().values() if isinstance(t, gs.Constant)}
    big = [name for name, values in before.items() if values.nbytes >= 1024]
    assert big and all(after[name] is before[name] for name in big)
    assert model.is_static()
    onnx.checker.check_model(model.to_proto())  # no stub left behind


def test_loaded_weights_are_read_only_arrays_of_their_declared_shape():
    from onnx import TensorProto, helper, numpy_helper

    proto = build("conv-gemm", seed=0)
    proto.graph.initializer.append(numpy_helper.from_array(np.array(2.0, np.float32), "two"))
    proto.graph.node.append(helper.make_node("Mul", ["y", "two"], ["y2"]))
    proto.graph.output[0].name = "y2"
    proto.graph.output.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, None))
    del proto.graph.output[1:]
    declared = {t.name: list(t.dims) for t in proto.graph.initializer}
    model = load_model(proto)
    constants = [t for t in model.graph.tensors().values() if isinstance(t, gs.Constant)]
    assert any(declared[t.name] == [] for t in constants)  # scalars (ReLU6 bounds) stay 0-d
    for tensor in constants:
        assert isinstance(tensor._values, np.ndarray) and not tensor._values.flags.writeable
        assert list(tensor.values.shape) == declared[tensor.name]


def test_weights_numpy_cannot_hold_stay_as_they_are(tmp_path):
    """bfloat16 has no numpy dtype: such a weight stays lazy (graphsurgeon would cast it) and is saved unchanged."""
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.BFLOAT16, [1024], [1.5] * 1024)
    nodes = [helper.make_node("Cast", ["w"], ["c"], to=TensorProto.FLOAT), helper.make_node("Add", ["x", "c"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1024])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1024])], [weight])
    model = load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    saved = onnx.load(save_model(model.copy(), tmp_path / "bf16.onnx"))
    assert saved.graph.initializer[0].SerializeToString() == weight.SerializeToString()
