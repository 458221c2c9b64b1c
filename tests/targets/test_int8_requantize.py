"""The requantize kernel of targets/int8.py: bit-exact with the integer rounding over the int32 accumulator
range, in its float64 forms (shifts <= EXACT_FLOAT64_SHIFT; int32 bias and lrint within a bound) and its int64 form."""

from __future__ import annotations

import numpy as np
import pytest

from slimcc.passes.quant.intref import QRANGE, rounding_shift
from slimcc.targets.int8 import EXACT_FLOAT64_SHIFT, _Kernels, float64_exact, int32_rounding_fits
from slimcc.targets.tvm_import import ensure_tvm

UNIFORM = 1024  # accumulators per channel drawn over the whole int32 range


def _channels(rng, shifts):
    """(multiplier, shift, bias) per channel: m in [2^30, 2^31), half of them 2^30 or 3 * 2^29 (their
    products with the accumulators land exactly on ties k + 1/2 often)."""
    m = rng.integers(2**30, 2**31, len(shifts))
    m[::2] = np.where(np.arange(len(shifts))[::2] % 4 == 0, 2**30, 3 * 2**29)
    return m.astype(np.int64), np.asarray(shifts, np.int64), rng.integers(-2**20, 2**20, len(shifts))


def _accumulators(rng, m: int, s: int, bias: int) -> np.ndarray:
    """int32 accumulators: the extremes, uniform over the int32 range, and every tie and near-tie of
    the unclamped band |acc + bias| * m / 2^s <= 400 (each half k/2 and the 2 integers either side)."""
    info = np.iinfo(np.int32)
    halves = np.arange(-800, 801) / 2
    near = np.round(halves * 2.0**s / m).astype(np.int64)[:, None] + np.arange(-2, 3)[None, :] - bias
    uniform = rng.integers(info.min, info.max, UNIFORM, endpoint=True)
    return np.concatenate([[info.min, info.max, 0, -1, 1], uniform, near.reshape(-1)]).astype(np.int32)


def _run_requantize(acc, bias, m, s, zy, lo, hi, dtype, magnitude=None):
    """The kernel built alone for the host and run on acc [1, C, 1, N]."""
    tvm = ensure_tvm()
    from tvm import relax

    builder = relax.BlockBuilder()
    x = relax.Var("acc", relax.TensorType(acc.shape, "int32"))
    with builder.function("main", [x]):
        with builder.dataflow():
            out = builder.emit_output(_Kernels(builder).requantize(x, acc.shape, 1, bias, m, s, zy, lo, hi, dtype,
                                                                         magnitude=magnitude))
        builder.emit_func_output(out)
    executable = tvm.compile(builder.get(), target="llvm")
    return relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(acc)).numpy()


@pytest.mark.parametrize("dtype, zy", [("uint8", 117), ("int8", -5)])
@pytest.mark.parametrize("form", ["float64", "int64"])
def test_requantize_is_bit_exact_over_the_accumulator_range(form, dtype, zy):
    rng = np.random.default_rng(3)
    shifts = list(range(31, EXACT_FLOAT64_SHIFT + 1)) + ([EXACT_FLOAT64_SHIFT + 2] if form == "int64" else [])
    m, s, bias = _channels(rng, shifts)
    assert float64_exact(s) == (form == "float64")
    acc = np.stack([_accumulators(rng, int(mc), int(sc), int(bc)) for mc, sc, bc in zip(m, s, bias)])
    acc = acc.reshape(1, len(shifts), 1, -1)
    lo, hi = QRANGE[np.dtype(dtype)]
    got = _run_requantize(acc, bias, m, s, zy, lo, hi, dtype)
    want = np.empty(acc.shape, np.int64)
    ties = 0
    for c in range(len(shifts)):
        exact = (acc[0, c, 0].astype(object) + int(bias[c])) * int(m[c])
        ties += sum(1 for v in exact if v % 2**int(s[c]) == 2**(int(s[c]) - 1) and abs(v >> int(s[c])) < 400)
        want[0, c, 0] = rounding_shift(exact, int(s[c])).astype(np.int64)
    want = np.clip(want + zy, lo, hi).astype(dtype)
    np.testing.assert_array_equal(got, want)
    assert ties > 100  # exact ties were rounded (to even), not only values off them
    assert len(np.unique(want)) == hi - lo + 1  # every output code, clamped ends included


@pytest.mark.parametrize("dtype, zy", [("uint8", 117), ("int8", -5)])
def test_float64_requantize_clamps_products_beyond_its_rounding_range(dtype, zy):
    """Small shifts (scale ratios above 1) take |(acc + bias) * m / 2^s| past 2^51, where adding
    1.5 * 2^52 no longer rounds to an integer: the clamp must still give the saturated byte."""
    rng = np.random.default_rng(5)
    shifts = [1, 4, 8, 12]
    m, s, bias = _channels(rng, shifts)
    assert float64_exact(s)
    acc = np.stack([_accumulators(rng, int(mc), int(sc), int(bc)) for mc, sc, bc in zip(m, s, bias)])
    acc = acc.reshape(1, len(shifts), 1, -1)
    lo, hi = QRANGE[np.dtype(dtype)]
    got = _run_requantize(acc, bias, m, s, zy, lo, hi, dtype)
    exact = [(acc[0, c, 0].astype(object) + int(bias[c])) * int(m[c]) for c in range(len(shifts))]
    assert max(abs(int(v)) >> int(s[c]) for c, values in enumerate(exact) for v in values) > 2**51
    want = np.stack([rounding_shift(values, int(s[c])).astype(np.int64) for c, values in enumerate(exact)])
    want = np.clip(want + zy, lo, hi).astype(dtype).reshape(acc.shape)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype, zy", [("uint8", 117), ("int8", -5)])
def test_int32_requantize_with_lrint_is_bit_exact_within_its_bound(dtype, zy):
    """Given a bound on |acc + bias| (x86 builds), the bias is added in int32 and v rounded by lrint:
    the same bytes as the integer reference, ties included, up to the bound's extremes."""
    rng = np.random.default_rng(7)
    shifts = list(range(31, EXACT_FLOAT64_SHIFT + 1))
    m, s, bias = _channels(rng, shifts)
    rate = np.ldexp(m.astype(np.float64), -s)
    magnitude = np.minimum(2**31 - 1, np.floor(2.0**30 / rate) - 1).astype(np.int64)
    assert int32_rounding_fits(magnitude, bias, rate)
    rows = []
    for mc, sc, bc, bound in zip(m, s, bias, magnitude):
        near = _accumulators(rng, int(mc), int(sc), int(bc))
        low, high = max(-bound - bc, np.iinfo(np.int32).min), min(bound - bc, np.iinfo(np.int32).max)
        inside = near[(near >= low) & (near <= high)]
        rows.append(np.resize(np.concatenate([[low, high], inside]), near.size).astype(np.int32))
    acc = np.stack(rows).reshape(1, len(shifts), 1, -1)
    lo, hi = QRANGE[np.dtype(dtype)]
    got = _run_requantize(acc, bias, m, s, zy, lo, hi, dtype, magnitude=magnitude)
    want = np.stack([rounding_shift((acc[0, c, 0].astype(object) + int(bias[c])) * int(m[c]), int(s[c]))
                     .astype(np.int64) for c in range(len(shifts))])
    np.testing.assert_array_equal(got, np.clip(want + zy, lo, hi).astype(dtype).reshape(acc.shape))
    assert len(np.unique(got)) == hi - lo + 1


def test_the_int32_form_is_refused_where_the_sum_could_wrap():
    rate = np.full(2, 2.0**-31)
    assert int32_rounding_fits(np.array([2**31 - 1, 5]), np.array([0, 0]), rate)
    assert not int32_rounding_fits(np.array([2**31, 5]), np.array([0, 0]), rate)  # acc + bias may wrap
    assert not int32_rounding_fits(np.array([2**20, 5]), np.array([0, 0]), np.full(2, 2.0**11))  # |v| >= 2^30
