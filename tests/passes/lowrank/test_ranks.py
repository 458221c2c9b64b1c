"""Rank math: the survey's closed-form Tucker bound, its stride-aware generalisation, rounding, energy, EVBMF."""

from __future__ import annotations

import numpy as np
import pytest

from slimcc.errors import PipelineError
from slimcc.passes.lowrank.ranks import (ConvGeometry, energy_rank, evbmf_rank, parse_explicit_ranks, round_rank,
                                         survey_k_max, svd_macs, svd_rank_for_speedup, tucker_macs,
                                         tucker_rank_for_speedup, validate_policy)


def ratio_at(k: float, n: float, kernel: int) -> float:
    """Original/Tucker MACs at stride 1 with Cin=C, Cout=nC, R3=R4=kC (C cancels)."""
    return n * kernel / (k + k * k * kernel + k * n)


def k_by_bisection(m: float, n: float, kernel: int) -> float:
    """k where the MACs ratio equals m, found numerically (independent of the closed form)."""
    lo, hi = 1e-9, 10.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if ratio_at(mid, n, kernel) > m:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@pytest.mark.parametrize("m", [2, 3, 4])
@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("kernel", [1, 9])
def test_survey_k_max_table(m, n, kernel):
    assert survey_k_max(m, n, kernel) == pytest.approx(k_by_bisection(m, n, kernel), rel=1e-9)


def test_survey_value_for_m2_n1_3x3():
    assert 0.604 <= survey_k_max(2, 1, 9) < 0.605  # the survey truncates to 0.604
    # and values that differ by the other table entries, to catch swapped arguments
    assert survey_k_max(2, 2, 9) > survey_k_max(2, 1, 9) > survey_k_max(4, 1, 9)
    assert survey_k_max(2, 1, 1) < survey_k_max(2, 1, 9)


@pytest.mark.parametrize("m,n,kernel", [(2, 1, 9), (3, 2, 9), (4, 1, 1), (2, 2, 1)])
def test_predicted_macs_ratio_is_m_at_k_max(m, n, kernel):
    c = 64
    geo = ConvGeometry(cin=c, cout=n * c, kernel=kernel, in_pixels=28 * 28, out_pixels=28 * 28)
    r = survey_k_max(m, n, kernel) * c
    assert geo.original_macs / tucker_macs(geo, r, r) == pytest.approx(m, rel=1e-9)
    # the stride-aware solver gives the same rank at stride 1
    assert tucker_rank_for_speedup(geo, m) == pytest.approx(r, rel=1e-9)


def test_stride_aware_rank_accounts_for_first_1x1_at_input_resolution():
    stride1 = ConvGeometry(cin=64, cout=128, kernel=9, in_pixels=28 * 28, out_pixels=28 * 28)
    stride2 = ConvGeometry(cin=64, cout=128, kernel=9, in_pixels=56 * 56, out_pixels=28 * 28)
    r1, r2 = tucker_rank_for_speedup(stride1, 2), tucker_rank_for_speedup(stride2, 2)
    assert r2 < r1  # the first 1x1 costs 4x more, so the rank must shrink
    assert stride2.original_macs / tucker_macs(stride2, r2, r2) == pytest.approx(2, rel=1e-9)
    # the unstrided closed form would overshoot the MACs budget on the strided layer
    assert stride2.original_macs / tucker_macs(stride2, r1, r1) < 2


def test_grouped_geometry_and_svd_rank():
    geo = ConvGeometry(cin=64, cout=64, kernel=9, in_pixels=100, out_pixels=100, groups=2)
    r = tucker_rank_for_speedup(geo, 3)
    assert geo.original_macs / tucker_macs(geo, r, r) == pytest.approx(3, rel=1e-9)
    rs = svd_rank_for_speedup(geo, 2)
    assert geo.original_macs / svd_macs(geo, rs) == pytest.approx(2, rel=1e-9)


def test_round_rank():
    assert round_rank(38.7, 64) == 32
    assert round_rank(38.7, 64, up=True) == 40
    assert round_rank(3.0, 64) == 8          # never below one multiple
    assert round_rank(3.0, 3) == 3           # but never above the dimension
    assert round_rank(100, 64, up=True) == 64
    assert round_rank(5.2, 64, multiple=1, up=True) == 6


def test_energy_rank():
    s = np.array([4.0, 2.0, 1.0, 1.0])  # energies 16, 4, 1, 1 of 22
    assert energy_rank(s, 16 / 22) == 1
    assert energy_rank(s, 0.8) == 2
    assert energy_rank(s, 0.99) == 4
    assert energy_rank(s, 1.0) == 4


def test_evbmf_finds_the_signal_rank():
    rng = np.random.default_rng(0)
    signal = rng.standard_normal((96, 5)) @ rng.standard_normal((5, 160)) * 3
    noisy = signal + 0.5 * rng.standard_normal((96, 160))
    assert evbmf_rank(noisy) == 5
    assert evbmf_rank(noisy.T) == 5
    assert evbmf_rank(0.5 * rng.standard_normal((96, 160))) <= 1


def test_policy_validation_and_explicit_ranks():
    with pytest.raises(PipelineError, match="only one"):
        validate_policy("decompose-tucker", 2.0, 0.5, 0, False, 0.1, 8)
    with pytest.raises(PipelineError, match="rank="):
        validate_policy("decompose-tucker", 0, 1.5, 0, False, 0.1, 8)
    with pytest.raises(PipelineError, match="speedup="):
        validate_policy("decompose-tucker", 0.5, 0, 0, False, 0.1, 8)
    assert parse_explicit_ranks("x", "conv1=32;b.c=16:24") == {"conv1": (32,), "b.c": (16, 24)}
    with pytest.raises(PipelineError, match="NAME=R"):
        parse_explicit_ranks("x", "conv1=0")
