"""Text tasks for the PP-OCR models, from rendered text (`models.text_pages`): inputs and labels.

- Detection (ppocr-det): square windows of rendered pages (a seeded crop of 40-70% of the page's
  shorter side, where the text is as large as the detector expects), stretched to its input.
- Direction (ppocr-cls): rendered text lines, each upright (label 0) and turned 180 degrees
  (label 1), as the classifier's 48x192 input.

Every set is drawn from its own seed; page k of seed s is page s * 1000 + k (`text_pages`), and
line k of seed s is line s * 1000 + k, so calibration and evaluation seeds never share an input.
"""

from __future__ import annotations

import numpy as np

CALIB_SEED = 1
EVAL_SEED = 7


def det_feeds(count: int, seed: int = EVAL_SEED) -> list[dict[str, np.ndarray]]:
    """`count` ppocr-det feeds: one seeded window of each of `count` rendered pages."""
    from slimcc.models.data import preprocess
    from slimcc.models.fetch import get_real_model
    from slimcc.models.text_pages import text_pages

    entry = get_real_model("ppocr-det")
    hw = entry.input_shape[2:]
    rng = np.random.default_rng(seed)
    feeds = []
    for page in text_pages(count, seed):
        h, w = page.shape[:2]
        side = int(min(h, w) * rng.uniform(0.4, 0.7))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        window = np.ascontiguousarray(page[top:top + side, left:left + side])
        feeds.append({entry.input_name: preprocess(window, entry.preprocessing, hw)})
    return feeds


def cls_dataset(count: int, seed: int = EVAL_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(x [2 * count, 3, 48, 192], labels): `count` rendered lines, each upright (0) and turned 180 (1)."""
    from slimcc.models.data import preprocess
    from slimcc.models.fetch import get_real_model
    from slimcc.models.text_pages import text_line

    entry = get_real_model("ppocr-cls")
    hw = entry.input_shape[2:]
    x, labels = [], []
    for k in range(count):
        line = text_line(seed * 1000 + k)
        for label, view in enumerate((line, line[::-1, ::-1])):
            x.append(preprocess(np.ascontiguousarray(view), entry.preprocessing, hw)[0])
            labels.append(label)
    return np.stack(x), np.asarray(labels, np.int64)


def cls_scores(model, x: np.ndarray) -> np.ndarray:
    """ppocr-cls class probabilities [N, 2] (0: upright, 180: turned), one input at a time."""
    from slimcc.ir.verify import make_session

    session = make_session(model, optimize=True)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + 1]})[0].reshape(1, -1) for i in range(len(x))])


def text_boxes(probability: np.ndarray, threshold: float = 0.3, box_threshold: float = 0.6,
               min_pixels: int = 9) -> list[np.ndarray]:
    """DBNet-style text boxes of a [1, 1, H, W] probability map: the bounding boxes (x0, y0, x1, y1)
    of the connected regions above `threshold` whose mean probability is at least `box_threshold`."""
    from scipy import ndimage

    prob = np.asarray(probability, np.float32).reshape(probability.shape[-2:])
    labels, count = ndimage.label(prob > threshold)
    boxes = []
    for index, region in enumerate(ndimage.find_objects(labels), start=1):
        mask = labels[region] == index
        if mask.sum() < min_pixels or prob[region][mask].mean() < box_threshold:
            continue
        ys, xs = region
        boxes.append(np.array([xs.start, ys.start, xs.stop, ys.stop], np.float64))
    return boxes
