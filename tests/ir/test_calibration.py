"""Calibration data sources and activation collection, checked against direct onnxruntime runs."""

import numpy as np
import pytest
from onnx import TensorProto, helper

from ir_builders import branchy_model, make_proto
from slimcc.errors import SlimccError
from slimcc.ir.calibration import (CalibrationData, ImagePreprocessing, collect_activations,
                                   load_calibration)
from slimcc.ir.model import load_model
from slimcc.ir.verify import run_onnxruntime


def two_input_model(batch=2):
    nodes = [helper.make_node("Add", ["x", "z"], ["y"], name="add")]
    return make_proto(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3]),
                              helper.make_tensor_value_info("z", TensorProto.FLOAT, [batch, 3])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])])


def test_npz_round_trip_splits_samples_into_model_batches(tmp_path):
    model = load_model(two_input_model(batch=2))
    x = np.arange(18, dtype=np.float64).reshape(6, 3)  # float64 is cast to the model's float32
    z = -np.arange(18, dtype=np.float32).reshape(6, 3)
    np.savez(tmp_path / "c.npz", x=x, z=z)
    calib = load_calibration(str(tmp_path / "c.npz"), model)
    assert len(calib) == 3
    assert all(b["x"].shape == (2, 3) and b["x"].dtype == np.float32 for b in calib)
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in calib]), x.astype(np.float32))
    np.testing.assert_array_equal(calib.batches[2]["z"], z[4:6])


def test_npz_with_explicit_batch_axis(tmp_path):
    model = load_model(two_input_model(batch=2))
    data = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=data, z=data)
    calib = CalibrationData.from_npz(tmp_path / "c.npz", model)
    assert len(calib) == 4
    np.testing.assert_array_equal(calib.batches[3]["x"], data[3])


@pytest.mark.parametrize("arrays, match", [
    ({"x": np.zeros((2, 3), np.float32)}, "missing input"),
    ({"x": np.zeros((2, 3), np.float32), "z": np.zeros((2, 3), np.float32), "q": np.zeros(1)}, "unknown key"),
    ({"x": np.zeros((3, 3), np.float32), "z": np.zeros((3, 3), np.float32)}, "multiple of the model's batch"),
    ({"x": np.zeros((2, 4), np.float32), "z": np.zeros((2, 4), np.float32)}, "expects"),
    ({"x": np.zeros(6, np.float32), "z": np.zeros(6, np.float32)}, "shape"),
    ({"x": np.zeros((2, 3), np.complex64), "z": np.zeros((2, 3), np.float32)}, "expects float32"),
])
def test_bad_npz_is_one_line_error(tmp_path, arrays, match):
    model = load_model(two_input_model(batch=2))
    np.savez(tmp_path / "c.npz", **arrays)
    with pytest.raises(SlimccError, match=match) as info:
        load_calibration(tmp_path / "c.npz", model)
    assert "\n" not in str(info.value)


def test_pickled_or_garbage_npz_is_refused(tmp_path):
    model = load_model(two_input_model())
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object), z=np.zeros((2, 3), np.float32))
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    (tmp_path / "data.txt").write_text("x")
    for name, match in [("obj.npz", "not a readable"), ("junk.npz", "not a readable"), ("data.txt", "give an .npz"),
                        ("nothere.npz", "no such file")]:
        with pytest.raises(SlimccError, match=match):
            load_calibration(tmp_path / name, model)


def test_reader_and_arrays():
    class Reader:
        def __init__(self):
            self.items = iter([{"x": np.full((2, 3), i, np.float32), "z": np.ones((2, 3), np.float32)} for i in range(3)])

        def get_next(self):
            return next(self.items, None)

    model = load_model(two_input_model())
    calib = CalibrationData.from_reader(Reader(), model)
    assert [float(b["x"][0, 0]) for b in calib] == [0.0, 1.0, 2.0]
    listed = CalibrationData.from_arrays([calib.batches[0], calib.batches[1]], model)
    assert len(listed) == 2
    with pytest.raises(SlimccError, match="get_next"):
        CalibrationData.from_reader(object())


def test_folder_of_pngs_matches_stated_preprocessing(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (10, 12, 3), dtype=np.uint8) for _ in range(3)]
    for i, img in enumerate(images):
        Image.fromarray(img).save(tmp_path / f"img{i}.png")
    Image.fromarray(images[0][:, :, 0]).save(tmp_path / "grey.png")  # grey images are converted to RGB
    (tmp_path / "notes.txt").write_text("ignored")
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    model = load_model(make_proto(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 10, 12])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 10, 12])]))
    calib = load_calibration(tmp_path, model)
    assert len(calib) == 2  # 4 images in batches of 2
    first = calib.batches[0]["x"]
    assert first.shape == (2, 3, 10, 12) and first.dtype == np.float32
    mean, std = np.array(ImagePreprocessing().mean), np.array(ImagePreprocessing().std)
    expected = ((images[1] / 255.0 - mean) / std).transpose(2, 0, 1)  # sorted: grey, img0, img1, img2
    np.testing.assert_allclose(first[1], ((images[0] / 255.0 - mean) / std).transpose(2, 0, 1), atol=1e-5)
    np.testing.assert_allclose(calib.batches[1]["x"][0], expected, atol=1e-5)
    grey = images[0][:, :, 0] / 255.0
    np.testing.assert_allclose(first[0], (grey[None] - mean[:, None, None]) / std[:, None, None], atol=1e-5)


def test_folder_resizes_and_rejects_unreadable_images(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((40, 20, 3), np.uint8)).save(tmp_path / "a.jpg")
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    model = load_model(make_proto(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 16, 16])]))
    calib = load_calibration(tmp_path, model)
    assert calib.batches[0]["x"].shape == (1, 3, 16, 16)
    np.testing.assert_allclose(calib.batches[0]["x"][0, 0], -0.485 / 0.229, atol=1e-5)
    (tmp_path / "b.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(SlimccError, match="cannot read image"):
        load_calibration(tmp_path, model)


def test_collect_activations_equals_manual_onnxruntime_run():
    proto = branchy_model()
    model = load_model(proto)
    rng = np.random.default_rng(3)
    batches = [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(3)]
    calib = CalibrationData.from_arrays(batches, model)
    acts = collect_activations(model, calib, ["c", "r", "s", "x", "y"], progress=False)
    for i, batch in enumerate(batches):
        manual = run_onnxruntime(proto, batch)
        np.testing.assert_array_equal(acts["y"][i], manual["y"])
        np.testing.assert_array_equal(acts["s"][i], manual["s"])  # int64 tensor
        assert acts["s"][i].dtype == np.int64
        np.testing.assert_array_equal(acts["r"][i], np.maximum(acts["c"][i], 0))
        np.testing.assert_array_equal(acts["x"][i], batch["x"])
    # compute conv by hand for one position to tie "c" to the weights
    w = model.graph.tensors()["w"].values
    b = model.graph.tensors()["b"].values
    x = np.pad(batches[0]["x"][0], ((0, 0), (1, 1), (1, 1)))
    np.testing.assert_allclose(acts["c"][0][0, 2, 4, 5], np.sum(w[2] * x[:, 4:7, 5:8]) + b[2], rtol=1e-5)
    assert len(model.graph.outputs) == 2  # the model itself is untouched


def test_collect_activations_bad_names():
    model = load_model(branchy_model())
    calib = CalibrationData.from_arrays({"x": np.zeros((1, 3, 8, 8), np.float32)}, model)
    with pytest.raises(SlimccError, match="not in the model"):
        collect_activations(model, calib, ["nope"], progress=False)
    with pytest.raises(SlimccError, match="constant"):
        collect_activations(model, calib, ["w"], progress=False)
