"""AdaRound (Nagel et al. 2020): choose each int8 weight's rounding (down or up) to keep the layer's
output close to the float one on calibration data, instead of rounding every weight to nearest.

Per layer, with X the layer's float input patches (im2col columns for a Conv, rows for a
Gemm/MatMul; `PATCHES` sampled positions) and H = X X^T / n, the output error of a weight change
D is tr(D H D^T). Each weight is s * (floor(w/s) + h(V)), h the rectified sigmoid
clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1), V starting where h reproduces w exactly; Adam
minimizes error / error(nearest) + lambda * mean(1 - |2h - 1|^beta) with beta annealed
from 20 to 2 (the regularizer pushes h to 0 or 1), then h is rounded. numpy only: grouped and
depthwise convs are batched per group. A layer keeps nearest rounding when AdaRound's final
error is not lower (never worse than nearest on its calibration patches).
"""

from __future__ import annotations

import numpy as np

PATCHES = 2048
ITERATIONS = 400
WARMUP = 0.2  # first fifth of the iterations: reconstruction only
ZETA, GAMMA = 1.1, -0.1
LAMBDA = 1.0  # against the reconstruction error normalized to nearest rounding's (1.0)
LEARNING_RATE = 0.01


def conv_patches(x: np.ndarray, attrs: dict, kernel: tuple[int, int], groups: int, count: int,
                 rng: np.random.Generator) -> np.ndarray | None:
    """[groups, inputs per group x kh x kw, count] input patches of a 2-D Conv at random output positions
    (None when its padding is implicit, auto_pad, or the input is not 4-D)."""
    if x.ndim != 4 or attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        return None
    kh, kw = kernel
    sh, sw = attrs.get("strides", [1, 1])
    dh, dw = attrs.get("dilations", [1, 1])
    top, left, bottom, right = attrs.get("pads", [0, 0, 0, 0])
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    out_h = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    out_w = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    if out_h < 1 or out_w < 1:
        return None
    n = rng.integers(0, x.shape[0], count)
    rows = rng.integers(0, out_h, count)[:, None] * sh + np.arange(kh) * dh
    cols = rng.integers(0, out_w, count)[:, None] * sw + np.arange(kw) * dw
    channels = np.arange(x.shape[1])
    patches = xp[n[:, None, None, None], channels[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]
    return patches.reshape(count, groups, -1).transpose(1, 2, 0).astype(np.float64)


def row_patches(x: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """[1, features, count] rows of a Gemm/MatMul input (its last axis is the reduction)."""
    rows = x.reshape(-1, x.shape[-1])
    picked = rows[rng.integers(0, rows.shape[0], min(count, rows.shape[0]))]
    return picked.T[None].astype(np.float64)


def output_error(delta: np.ndarray, hessian: np.ndarray) -> float:
    """sum over groups of tr(D H D^T): the summed squared output change per input patch."""
    return float(np.sum((delta @ hessian) * delta))


def adaround_groups(weight: np.ndarray, scales: np.ndarray, hessian: np.ndarray, *, qmax: int = 127,
                    iterations: int = ITERATIONS) -> tuple[np.ndarray, dict]:
    """Integer weights [G, O, K] for float weights [G, O, K] with per-row scales [G, O] and H [G, K, K],
    and {"error_nearest", "error_adaround"} (tr(D H D^T) of each rounding)."""
    w = weight.astype(np.float64) / scales[..., None]
    base = np.floor(w)
    rest = w - base
    nearest = np.clip(np.round(w), -qmax, qmax)
    s = scales[..., None]
    error_nearest = output_error(s * (nearest - w), hessian)
    p = np.clip((rest - GAMMA) / (ZETA - GAMMA), 1e-4, 1 - 1e-4)
    v = np.log(p / (1 - p))
    m1, m2 = np.zeros_like(v), np.zeros_like(v)
    norm = max(error_nearest, 1e-30)
    warm = int(iterations * WARMUP)
    for step in range(iterations):
        sig = 1.0 / (1.0 + np.exp(-v))
        raw = sig * (ZETA - GAMMA) + GAMMA
        h = np.clip(raw, 0.0, 1.0)
        delta = s * (base + h - w)
        grad_h = 2.0 * s * (delta @ hessian) / norm
        if step >= warm:
            beta = 20.0 + (2.0 - 20.0) * (step - warm) / max(iterations - warm - 1, 1)
            centered = 2.0 * h - 1.0
            grad_h -= LAMBDA * beta * np.abs(centered) ** (beta - 1) * np.sign(centered) * 2.0 / h.size
        grad_v = grad_h * ((raw > 0) & (raw < 1)) * sig * (1 - sig) * (ZETA - GAMMA)
        m1 = 0.9 * m1 + 0.1 * grad_v
        m2 = 0.999 * m2 + 0.001 * grad_v ** 2
        v -= LEARNING_RATE * (m1 / (1 - 0.9 ** (step + 1))) / (np.sqrt(m2 / (1 - 0.999 ** (step + 1))) + 1e-8)
    h = np.clip(1.0 / (1.0 + np.exp(-v)) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)
    rounded = np.clip(base + (h >= 0.5), -qmax, qmax)
    error_ada = output_error(s * (rounded - w), hessian)
    chosen = rounded if error_ada < error_nearest else nearest
    return chosen.astype(np.int8), {"error_nearest": error_nearest, "error_adaround": min(error_ada, error_nearest)}


def hessian_of(patches: np.ndarray) -> np.ndarray:
    """H = X X^T / n per group, from [G, K, n] patches."""
    return patches @ patches.transpose(0, 2, 1) / patches.shape[2]


def adaround_weight(op: str, attrs: dict, weight: np.ndarray, scales: np.ndarray, axis: int | None,
                    inputs: list[np.ndarray], seed: int = 0) -> tuple[np.ndarray | None, dict]:
    """int8 weights in `weight`'s layout chosen by AdaRound from the layer's float `inputs` (one array per
    calibration batch), with the symmetric `scales` along `axis` (None: per tensor); None when the layer's
    form is not handled (ConvTranspose, non-2-D convs, implicit padding), with nearest rounding to use."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([np.asarray(a, np.float32) for a in inputs]) if inputs[0].ndim == 4 else \
        np.concatenate([np.asarray(a, np.float32).reshape(-1, a.shape[-1]) for a in inputs])
    if op == "Conv" and weight.ndim == 4:
        groups = int(attrs.get("group", 1))
        patches = conv_patches(x, attrs, weight.shape[2:], groups, PATCHES, rng)
        if patches is None:
            return None, {}
        rows = weight.reshape(groups, weight.shape[0] // groups, -1)
        back = lambda q: q.reshape(weight.shape)  # noqa: E731
    elif op in ("Gemm", "MatMul") and weight.ndim == 2:
        patches = row_patches(x, PATCHES, rng)
        transposed = not (op == "Gemm" and attrs.get("transB", 0))
        rows = (weight.T if transposed else weight)[None]
        back = (lambda q: q[0].T) if transposed else (lambda q: q[0])  # noqa: E731
    else:
        return None, {}
    row_scales = np.broadcast_to(np.asarray(scales, np.float64).reshape(-1), (rows.shape[0] * rows.shape[1],)) \
        if axis is not None else np.full(rows.shape[0] * rows.shape[1], float(np.asarray(scales).reshape(-1)[0]))
    q, stats = adaround_groups(rows, row_scales.reshape(rows.shape[:2]), hessian_of(patches))
    return back(q), stats
