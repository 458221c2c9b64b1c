"""Numpy reference of integer inference arithmetic (what an int8 kernel must compute).

Conv/MatMul accumulate (q_x - z_x) * (q_w - z_w) exactly in int32; the accumulator is
requantized with a fixed-point multiplier M0 in [0.5, 1) held as an int32 (M0 * 2^31) and
a right shift, rounding half to even, then the output zero point is added and the result
saturated. Used to check onnxruntime's QLinearConv/QLinearMatMul and our lowered graphs.
"""

from __future__ import annotations

import numpy as np

from slimcc.ir.layout import channel_axis

QRANGE = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127)}


def quantize(x: np.ndarray, scale, zero_point, dtype=np.uint8) -> np.ndarray:
    """q = saturate(round_half_even(x / scale) + zero_point)  (float32 division, as ONNX specifies)."""
    qmin, qmax = QRANGE[np.dtype(dtype)]
    q = np.round(np.asarray(x, np.float32) / np.float32(scale)) + np.asarray(zero_point, np.int64)
    return np.clip(q, qmin, qmax).astype(dtype)


def dequantize(q: np.ndarray, scale, zero_point, axis: int = 1) -> np.ndarray:
    """x = (q - zero_point) * scale; 1-D scale/zero point apply along `axis`."""
    scale, zero_point = np.asarray(scale, np.float32), np.asarray(zero_point, np.int64)
    if scale.ndim == 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    return ((q.astype(np.int64) - zero_point).astype(np.float32) * scale).astype(np.float32)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """(m, shift) with real == m * 2^-(31 + shift) (to int32 precision), m in [2^30, 2^31)."""
    real = float(real)
    if not real > 0:
        raise ValueError(f"requantize multiplier must be positive, got {real}")
    mantissa, exponent = np.frexp(real)  # real = mantissa * 2^exponent, mantissa in [0.5, 1)
    m = int(round(float(mantissa) * (1 << 31)))
    if m == 1 << 31:
        m //= 2
        exponent += 1
    return m, -int(exponent)


def rounding_shift(values: np.ndarray, shift: int) -> np.ndarray:
    """values / 2^shift rounded half to even (exact integer arithmetic on int64/object)."""
    values = np.asarray(values, dtype=object)
    if shift <= 0:
        return values * (1 << -shift)
    divisor = 1 << shift
    floor = values // divisor
    remainder = values - floor * divisor
    half = divisor // 2
    round_up = (remainder > half) | ((remainder == half) & (floor % 2 == 1))
    return floor + round_up.astype(object)


def requantize(acc: np.ndarray, multiplier: np.ndarray | float, zero_point: int, dtype=np.uint8,
               axis: int = 1) -> np.ndarray:
    """saturate(round_half_even(acc * M) + zero_point) with M as fixed-point (m, shift) per channel."""
    acc = np.asarray(acc, np.int64)
    multipliers = np.atleast_1d(np.asarray(multiplier, np.float64))
    out = np.empty(acc.shape, dtype=object)
    moved = np.moveaxis(out, axis, 0) if multipliers.size > 1 else out[None]
    source = np.moveaxis(acc, axis, 0) if multipliers.size > 1 else acc[None]
    for c in range(moved.shape[0]):
        m, shift = quantize_multiplier(multipliers[c if multipliers.size > 1 else 0])
        moved[c] = rounding_shift(source[c].astype(object) * m, 31 + shift)
    qmin, qmax = QRANGE[np.dtype(dtype)]
    return np.clip(out.astype(np.int64) + int(zero_point), qmin, qmax).astype(dtype)


def conv_accumulate(x_q: np.ndarray, x_zp: int, w_q: np.ndarray, w_zp, *, strides=(1, 1), pads=(0, 0, 0, 0),
                    dilations=(1, 1), group: int = 1) -> np.ndarray:
    """int32 accumulators of a 2-D NCHW convolution on zero-point-shifted integers."""
    x = np.asarray(x_q, np.int64) - int(x_zp)
    w_zp = np.asarray(w_zp, np.int64)
    w = np.asarray(w_q, np.int64) - (w_zp.reshape(-1, 1, 1, 1) if w_zp.ndim == 1 else w_zp)
    n, cin, _, _ = x.shape
    cout, cin_g, kh, kw = w.shape
    x = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))  # padding holds real 0
    h_out = (x.shape[2] - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    w_out = (x.shape[3] - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    acc = np.zeros((n, cout, h_out, w_out), np.int64)
    cout_g = cout // group
    for g in range(group):
        xs = x[:, g * cin_g:(g + 1) * cin_g]
        ws = w[g * cout_g:(g + 1) * cout_g]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dilations[0]: i * dilations[0] + strides[0] * (h_out - 1) + 1: strides[0],
                           j * dilations[1]: j * dilations[1] + strides[1] * (w_out - 1) + 1: strides[1]]
                acc[:, g * cout_g:(g + 1) * cout_g] += np.einsum("nchw,oc->nohw", patch, ws[:, :, i, j])
    if acc.size and (acc.max() > 2**31 - 1 or acc.min() < -2**31):
        raise OverflowError("int32 accumulator overflow")
    return acc.astype(np.int32)


def qlinear_conv(x_q, x_scale, x_zp, w_q, w_scale, w_zp, y_scale, y_zp, bias_q=None, *, strides=(1, 1),
                 pads=(0, 0, 0, 0), dilations=(1, 1), group: int = 1) -> np.ndarray:
    """QLinearConv semantics: int32 conv (+ int32 bias), requantized by x_s * w_s / y_s per output channel."""
    acc = conv_accumulate(x_q, x_zp, w_q, w_zp, strides=strides, pads=pads, dilations=dilations, group=group)
    acc = acc.astype(np.int64)
    if bias_q is not None:
        acc = acc + np.asarray(bias_q, np.int64).reshape(1, -1, 1, 1)
    w_scale = np.asarray(w_scale, np.float32).reshape(-1)
    multiplier = (np.float32(x_scale) * w_scale / np.float32(y_scale)).astype(np.float32)
    if multiplier.size == 1:
        multiplier = np.full(acc.shape[1], multiplier[0], np.float32)
    return requantize(acc, multiplier, int(y_zp), _out_dtype(y_zp), axis=1)


def qlinear_matmul(a_q, a_scale, a_zp, b_q, b_scale, b_zp, y_scale, y_zp) -> np.ndarray:
    """QLinearMatMul for a [..., M, K] (e.g. [M, K] or [N, T, K]) and a 2-D b [K, N]
    (b scale per tensor or per column: the output channels are on the last axis)."""
    b_zp = np.asarray(b_zp, np.int64)
    acc = (np.asarray(a_q, np.int64) - int(a_zp)) @ (np.asarray(b_q, np.int64) - b_zp.reshape(1, -1))
    b_scale = np.asarray(b_scale, np.float32).reshape(-1)
    multiplier = (np.float32(a_scale) * b_scale / np.float32(y_scale)).astype(np.float32)
    axis = channel_axis("QLinearMatMul", acc.ndim)
    if multiplier.size == 1:
        multiplier = np.full(acc.shape[axis], multiplier[0], np.float32)
    return requantize(acc, multiplier, int(y_zp), _out_dtype(y_zp), axis=axis)


ADD_MULTIPLIER_BITS = 21


def add_multipliers(ra: float, rb: float) -> tuple[int, int, int]:
    """(ma, mb, shift) with ra ~ ma / 2^shift and rb ~ mb / 2^shift, the larger of ma, mb in [2^20, 2^21].

    One shared shift lets a quantized Add rescale both inputs to the output scale and round once.
    21 bits (relative error <= 2^-21, about float32's: onnxruntime's QDQ Add runs in float32) keep
    (a - za) * ma + (b - zb) * mb below 2^30 for 8-bit inputs, so TVM sums it in int32 lanes
    (targets/int8.py): twice the lanes of int64, the zoo ResNet's first residual conv 0.53 -> 0.47 ms.
    """
    _, exponent = quantize_multiplier(max(ra, rb))
    shift = ADD_MULTIPLIER_BITS + exponent
    return int(round(ra * 2.0**shift)), int(round(rb * 2.0**shift)), shift


def qlinear_add(a_q, a_zp, b_q, b_zp, ra: float, rb: float, y_zp: int, dtype, relu: bool = False) -> np.ndarray:
    """Integer Add of two quantized tensors rescaled to the output scale (ra = s_a/s_y, rb = s_b/s_y):
    round_half_even(((a - za)*ma + (b - zb)*mb) / 2^shift) + zy, saturated (relu: >= zy)."""
    ma, mb, shift = add_multipliers(ra, rb)
    total = (np.asarray(a_q).astype(object) - int(a_zp)) * ma + (np.asarray(b_q).astype(object) - int(b_zp)) * mb
    lo, hi = QRANGE[np.dtype(dtype)]
    lo = max(lo, int(y_zp)) if relu else lo
    return np.clip(rounding_shift(total, shift).astype(np.int64) + int(y_zp), lo, hi).astype(dtype)


def _out_dtype(zero_point) -> np.dtype:
    """The output integer type: the zero point's when it is u8/s8, else uint8 (ONNX default)."""
    dtype = np.asarray(zero_point).dtype
    return dtype if dtype in QRANGE else np.dtype(np.uint8)
