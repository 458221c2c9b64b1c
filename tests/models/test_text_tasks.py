"""Rendered text tasks for the PP-OCR models: direction labels, detector windows, text boxes."""

from __future__ import annotations

import numpy as np

from slimcc.models import text_tasks
from slimcc.models.text_pages import text_line


def test_text_lines_are_wide_dark_on_light_and_deterministic():
    line = text_line(3)
    assert line.ndim == 3 and line.shape[1] > 2 * line.shape[0]
    assert np.array_equal(line, text_line(3)) and not np.array_equal(line, text_line(4))
    assert np.median(line) > 150 and line.min() < 100


def test_cls_dataset_pairs_each_line_upright_and_turned():
    x, labels = text_tasks.cls_dataset(3, seed=5)
    assert x.shape == (6, 3, 48, 192) and labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert not np.array_equal(x[0], x[1])


def test_text_boxes_are_the_confident_regions_of_the_map():
    prob = np.zeros((1, 1, 40, 60), np.float32)
    prob[0, 0, 5:10, 4:30] = 0.9  # a text line
    prob[0, 0, 20:25, 10:40] = 0.4  # above the pixel threshold, below the box threshold
    prob[0, 0, 30, 50] = 0.9  # a speck
    boxes = text_tasks.text_boxes(prob)
    assert [b.tolist() for b in boxes] == [[4, 5, 30, 10]]


def test_det_feeds_have_the_detector_input_shape():
    feeds = text_tasks.det_feeds(2, seed=3)
    assert [f["x"].shape for f in feeds] == [(1, 3, 320, 320)] * 2
    assert not np.array_equal(feeds[0]["x"], feeds[1]["x"])
