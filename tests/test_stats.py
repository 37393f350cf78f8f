"""plots.stats against known values: Wilson and McNemar by hand and by scipy, the paired bootstrap's behaviour."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from plots.stats import holm, mcnemar_exact, paired_difference, wilson_interval


def test_wilson_matches_the_hand_formula_and_scipy():
    # 29 of 50 right: p = 0.58, z^2 = 3.841459; by hand, centre (p + z^2/2n) / (1 + z^2/n) = 0.574296, half-width
    # z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/4n^2) = 1.820121 * 0.0724993 = 0.131958
    low, high = wilson_interval(29, 50)
    assert low == pytest.approx(0.442338, abs=1e-5) and high == pytest.approx(0.706254, abs=1e-5)
    ref = sps.binomtest(29, 50).proportion_ci(confidence_level=0.95, method="wilson")
    assert (low, high) == pytest.approx((ref.low, ref.high), abs=1e-12)
    for k, n in ((0, 50), (50, 50), (1, 3), (77, 100)):
        ref = sps.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson_interval(k, n) == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_mcnemar_exact_by_hand():
    # 1 vs 9 discordant pairs: p = 2 * P(X <= 1), X ~ Bin(10, 1/2) = 2 * 11/1024
    assert mcnemar_exact(1, 9) == pytest.approx(22 / 1024)
    assert mcnemar_exact(9, 1) == pytest.approx(22 / 1024)
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    assert mcnemar_exact(3, 12) == pytest.approx(sps.binomtest(3, 15, 0.5).pvalue)


def test_identical_methods_show_no_difference():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2, size=(1, 100))
    d = paired_difference(a, a.copy())
    assert (d.diff, d.low, d.high, d.p_mcnemar) == (0.0, 0.0, 0.0, 1.0)
    assert not d.detected
    assert "no detectable difference at this budget (95 % CI [+0.000, +0.000]" in d.describe("a", "b")


def test_a_large_paired_difference_is_detected_and_a_small_one_is_not():
    rng = np.random.default_rng(2)
    b = rng.integers(0, 2, size=(1, 100))
    a = b.copy()
    a[0, :30] = 1  # a is right wherever b is, and on the first 30 documents too
    flips = int((a != b).sum())
    d = paired_difference(a, b)
    assert d.diff == pytest.approx(flips / 100) and d.detected and d.low > 0
    assert d.p_mcnemar == pytest.approx(mcnemar_exact(flips, 0))
    assert d.describe("a", "b").startswith(f"a is {flips / 100:.3f} higher in accuracy than b (95 % CI [")
    small = b.copy()
    small[0, np.flatnonzero(b[0] == 0)[:2]] = 1  # two more right of 100: within noise
    d = paired_difference(small, b)
    assert not d.detected and d.low <= 0 <= d.high


def test_bootstrap_interval_has_about_the_normal_width_and_covers_seeds():
    rng = np.random.default_rng(3)
    b = rng.integers(0, 2, size=(3, 200))
    a = np.where(rng.random((3, 200)) < 0.2, 1 - b, b)  # 20 % of pairs discordant, in both directions
    d = paired_difference(a, b)
    delta = (a - b).astype(float)
    se = delta.mean(axis=0).std(ddof=1) / math.sqrt(200)  # documents only: the seed level adds a little
    assert d.n_seeds == 3 and d.n_docs == 200
    assert 0.9 * 3.92 * se < d.high - d.low < 1.6 * 3.92 * se
    assert d.low < d.diff < d.high
    with pytest.raises(ValueError, match="one equal, non-empty shape"):
        paired_difference(a, b[:, :10])


def test_a_planted_seed_effect_widens_the_two_level_interval():
    """One seed shifted: A gains on 30 % of the documents in seed 2 only. The documents-only interval sees one
    fixed set of seeds and stays narrow; the two-level one resamples seeds and widens (several times here)."""
    rng = np.random.default_rng(1)
    b = rng.integers(0, 2, size=(3, 200))
    a = b.copy()
    a[2] = np.where(rng.random(200) < 0.3, 1, b[2])
    two_level = paired_difference(a, b)
    documents_only = paired_difference(a, b, resample_seeds=False)
    assert two_level.diff == documents_only.diff > 0
    assert (two_level.high - two_level.low) > 3 * (documents_only.high - documents_only.low)
    # without a seed effect (every seed the same outcomes), the seed level adds little
    same = np.repeat(a[2:3], 3, axis=0), np.repeat(b[2:3], 3, axis=0)
    calm, fixed = paired_difference(*same), paired_difference(*same, resample_seeds=False)
    assert (calm.high - calm.low) < 1.3 * (fixed.high - fixed.low)


def test_holm_against_a_hand_computed_case():
    """p = 0.01, 0.04, 0.03, 0.005 (m = 4). Sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06;
    0.04 x 1 = 0.04, raised to the running maximum 0.06. Back in input order:"""
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == [] and holm([0.2]) == [0.2]
