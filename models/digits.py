"""The bundled trained classifier: a small CNN on scikit-learn's digits, upsampled to 32x32.

    python -m slimcc.models.digits eval MODEL.onnx      # held-out accuracy of any variant
    python -m slimcc.models.digits calib OUT.npz [-n 64] # calibration batches from the training split

The split (75/25, stratified, seed 0) and the preprocessing (bilinear 8x8 -> 32x32,
pixel/16 scaled to [-1, 1]) are fixed here so that every variant is measured the same way.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

MODEL_PATH = Path(__file__).with_name("digits_cnn.onnx")
INPUT_NAME = "x"
SIZE = 32
SPLIT_SEED = 0
TEST_FRACTION = 0.25


def bilinear_matrix(src: int, dst: int) -> np.ndarray:
    """Matrix A (dst x src) so that A @ img @ A.T is align-corners=False bilinear resize."""
    matrix = np.zeros((dst, src), np.float64)
    for i in range(dst):
        pos = min(max((i + 0.5) * src / dst - 0.5, 0.0), src - 1.0)
        lo = int(np.floor(pos))
        hi = min(lo + 1, src - 1)
        frac = pos - lo
        matrix[i, lo] += 1.0 - frac
        matrix[i, hi] += frac
    return matrix


def preprocess(images: np.ndarray) -> np.ndarray:
    """N x 8 x 8 digits (0..16) -> N x 1 x 32 x 32 float32 in [-1, 1]."""
    resize = bilinear_matrix(images.shape[-1], SIZE)
    up = np.einsum("ij,njk,lk->nil", resize, images.astype(np.float64) / 16.0, resize)
    return ((up - 0.5) / 0.5).astype(np.float32)[:, None]


def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test), preprocessed, always the same split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        data.images, data.target, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=data.target)
    return preprocess(x_train), y_train.astype(np.int64), preprocess(x_test), y_test.astype(np.int64)


def predict(model, images: np.ndarray, batch: int | None = None) -> np.ndarray:
    """Class predictions of a digits-model variant on onnxruntime (batched to its input batch size)."""
    return scores(model, images, batch).argmax(axis=1)


def scores(model, images: np.ndarray, batch: int | None = None) -> np.ndarray:
    """The model's output scores [N, 10] on onnxruntime, batched to its input batch size."""
    from slimcc.ir.verify import make_session

    session = make_session(model, optimize=True)
    declared = session.get_inputs()[0].shape[0]
    step = declared if isinstance(declared, int) and declared > 0 else (batch or 64)
    logits = []
    for start in range(0, len(images), step):
        chunk = images[start:start + step]
        pad = step - len(chunk) if isinstance(declared, int) and declared > 0 else 0
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
        out = session.run(None, {session.get_inputs()[0].name: chunk})[0]
        logits.append(out[: len(out) - pad])
    return np.concatenate(logits)


def accuracy(model) -> float:
    """Held-out top-1 accuracy (fraction) of a model variant (a Model, a ModelProto or a path)."""
    if isinstance(model, (str, Path)):
        from slimcc.ir.model import load_model

        model = load_model(model)
    _, _, x_test, y_test = split()
    return float((predict(model, x_test) == y_test).mean())


def calibration_batches(count: int = 64, batch: int = 1) -> list[dict[str, np.ndarray]]:
    """`count` samples of the training split as feeds of `batch` images each."""
    x_train, _, _, _ = split()
    rng = np.random.default_rng(SPLIT_SEED)
    picked = x_train[rng.permutation(len(x_train))[: count]]
    return [{INPUT_NAME: picked[i:i + batch]} for i in range(0, len(picked) - batch + 1, batch)]


def main(argv: list[str] | None = None) -> int:
    """CLI: `eval MODEL` prints accuracy; `calib OUT.npz` writes calibration data."""
    parser = argparse.ArgumentParser(prog="python -m slimcc.models.digits", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    eval_parser = sub.add_parser("eval", help="held-out accuracy of a model")
    eval_parser.add_argument("model", nargs="?", default=str(MODEL_PATH))
    calib_parser = sub.add_parser("calib", help="write calibration samples from the training split")
    calib_parser.add_argument("out")
    calib_parser.add_argument("-n", "--count", type=int, default=64)
    args = parser.parse_args(argv)
    from slimcc.errors import exit_status

    def run() -> None:
        if args.command == "eval":
            from slimcc.ir.model import load_model

            print(f"accuracy {accuracy(load_model(args.model)):.4f}")
        else:
            from slimcc.ir.atomic import save_npz_atomic

            x_train = np.concatenate([b[INPUT_NAME] for b in calibration_batches(args.count)])
            save_npz_atomic(args.out, {INPUT_NAME: x_train})
            print(f"wrote {len(x_train)} samples to {args.out}")

    return exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
