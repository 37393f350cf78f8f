"""plots.stats against known values and planted data: Wilson and McNemar by hand and by scipy, the sign-flip test
by enumeration, the crossed bootstrap's variance by its formula, and coverage and error rates under a crossed design
(every seed scores the same documents) simulated with numpy."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from plots.stats import (accuracy_from_seed_rates, accuracy_interval, crossed_bootstrap, crossed_variance, holm,
                         mcnemar_exact, paired_difference, sign_flip_p, wilson_interval)


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


def test_sign_flip_with_one_seed_is_exact_mcnemar():
    rng = np.random.default_rng(0)
    for only_a, only_b, ties in ((1, 9, 5), (9, 1, 0), (5, 5, 3), (0, 6, 10), (3, 12, 40), (0, 0, 7)):
        delta = np.array([[1.0] * only_a + [-1.0] * only_b + [0.0] * ties])
        rng.shuffle(delta[0])
        assert sign_flip_p(delta) == pytest.approx(mcnemar_exact(only_a, only_b), abs=1e-12)


def test_sign_flip_equals_full_enumeration_with_three_seeds():
    """12 documents, 3 seeds: every one of the 2^12 sign vectors of the document means, counted by hand."""
    rng = np.random.default_rng(4)
    a, b = rng.integers(0, 2, size=(2, 3, 12)).astype(float)
    a[:, :4] = 1  # a leans ahead, so the p-value is neither 1 nor tiny
    delta = a - b
    means = delta.mean(axis=0)
    observed = abs(means.sum())
    flips = np.array(list(itertools.product((-1, 1), repeat=12)))
    expected = np.mean(np.abs(flips @ means) >= observed - 1e-9)
    assert 0.001 < expected < 0.5
    assert sign_flip_p(delta) == pytest.approx(expected, abs=1e-12)


def test_identical_methods_show_no_difference():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2, size=(1, 100))
    d = paired_difference(a, a.copy())
    assert (d.diff, d.low, d.high, d.p_value) == (0.0, 0.0, 0.0, 1.0)
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
    assert d.p_value == pytest.approx(mcnemar_exact(flips, 0))
    assert d.describe("a", "b").startswith(f"a is {flips / 100:.3f} higher in accuracy than b (95 % CI [")
    small = b.copy()
    small[0, np.flatnonzero(b[0] == 0)[:2]] = 1  # two more right of 100: within noise
    d = paired_difference(small, b)
    assert not d.detected and d.low <= 0 <= d.high
    with pytest.raises(ValueError, match="one equal, non-empty shape"):
        paired_difference(a, b[:, :10])
    with pytest.raises(ValueError, match="0/1 outcomes"):
        paired_difference(a * 0.5, b)


def test_copied_seeds_add_no_information():
    """One seed's outcomes copied three times: the interval is exactly the one seed's (not narrower) and so is
    the p-value. A nested bootstrap and pooled McNemar counted each document three times."""
    rng = np.random.default_rng(5)
    b = (rng.random((1, 120)) < 0.5).astype(float)
    a = np.where(rng.random((1, 120)) < 0.06, 1.0, b)  # a small gain, near the edge of detection
    one = paired_difference(a, b)
    three = paired_difference(np.repeat(a, 3, axis=0), np.repeat(b, 3, axis=0))
    assert (three.low, three.high) == pytest.approx((one.low, one.high), abs=1e-12)
    assert three.p_value == pytest.approx(one.p_value, abs=1e-12)
    only_a = int(((a == 1) & (b == 0)).sum())
    assert mcnemar_exact(3 * only_a, 0) < one.p_value / 10  # what pooling over the copies claimed
    copied, single = accuracy_interval(np.repeat(a, 3, axis=0)), accuracy_interval(a)
    assert (copied.mean, copied.low, copied.high) == pytest.approx((single.mean, single.low, single.high), abs=1e-12)


def test_crossed_variance_is_the_bootstrap_variance():
    """The formula s2(r)/k + s2(c)/d + ||Z||^2/(k(k-1)d(d-1)) against 40,000 Monte Carlo replicates."""
    rng = np.random.default_rng(6)
    table = (rng.random((3, 150)) < rng.beta(2, 1.5, size=150)).astype(float)
    table[2] = np.where(rng.random(150) < 0.2, 1 - table[2], table[2])  # a seed that disagrees more
    boot = crossed_bootstrap(table, samples=40_000, seed=1)
    assert boot.mean() == pytest.approx(table.mean(), abs=3e-4)
    assert boot.var() == pytest.approx(crossed_variance(table), rel=0.03)
    one = table[:1]
    assert crossed_variance(one) == pytest.approx(one.var(ddof=1) / 150)  # one seed: the documents' term alone


def test_a_planted_seed_effect_widens_the_interval():
    """A gains on 30 % of the documents in seed 2 only: the seed level sees it and widens the interval several
    times over the same gain spread over all seeds."""
    rng = np.random.default_rng(1)
    b = rng.integers(0, 2, size=(3, 200)).astype(float)
    a = b.copy()
    a[2] = np.where(rng.random(200) < 0.3, 1, b[2])
    spread, per_seed = b.copy(), round(int((a != b).sum()) / 3)
    for seed in range(3):  # about the same mean gain, a third of it in every seed
        spread[seed, np.flatnonzero(b[seed] == 0)[:per_seed]] = 1
    one_seed, every_seed = paired_difference(a, b), paired_difference(spread, b)
    assert one_seed.diff == pytest.approx(every_seed.diff, abs=0.01)
    assert (one_seed.high - one_seed.low) > 2 * (every_seed.high - every_seed.low)


def _crossed_dataset(rng, docs: int, seeds: int, gain: float = 0.0):
    """Two methods on the same documents: each document has a difficulty shared by both methods and every seed; a
    method's seeds share its prediction of a document except for a retrained 25 % (seeds agree on 83-93 %)."""
    difficulty = rng.beta(2, 1.2, size=docs)

    def method(shift):
        p = np.clip(difficulty + shift, 0, 1)
        shared = rng.random(docs) < p
        retrained = rng.random((seeds, docs)) < 0.25
        return np.where(retrained, rng.random((seeds, docs)) < p, shared[None, :]).astype(float)

    return method(gain), method(0.0)


def test_null_coverage_and_error_rate_under_the_crossed_design():
    """300 datasets with no true difference, 100-200 documents, 3 seeds: the 95 % interval covers 0 in at least
    93 % of them and the sign-flip test rejects at most 7 % (nested resampling covered 81-89 %)."""
    rng = np.random.default_rng(11)
    covered = rejected = 0
    agreement = []
    for i in range(300):
        a, b = _crossed_dataset(rng, int(rng.integers(100, 201)), 3)
        agreement.append((a[0] == a[1]).mean())
        d = paired_difference(a, b, samples=1000, seed=i)
        covered += d.low <= 0 <= d.high
        rejected += d.p_value < 0.05
    assert 0.8 < np.mean(agreement) < 0.95
    assert covered / 300 >= 0.93
    assert rejected / 300 <= 0.07


def test_a_real_difference_is_still_found():
    """A planted gain of 0.2 in the right rate on 150 documents x 3 seeds: shown (interval and test) in 95 % of
    100 datasets, with an interval that covers the true mean gain."""
    rng = np.random.default_rng(12)
    found = 0
    for i in range(100):
        a, b = _crossed_dataset(rng, 150, 3, gain=0.2)
        d = paired_difference(a, b, samples=1000, seed=i)
        found += d.detected and d.p_value < 0.05
    assert found >= 95


def test_accuracy_interval_is_one_quantity_at_every_seed_count():
    rng = np.random.default_rng(13)
    one = (rng.random((1, 100)) < 0.7).astype(float)
    acc = accuracy_interval(one)
    k = one.sum()
    assert (acc.low, acc.high) == pytest.approx(wilson_interval(k * 99 / 100, 99))  # Wilson at n - 1
    assert accuracy_from_seed_rates([one.mean()], 100) == pytest.approx(acc)  # the same from the rate alone
    # seeds that disagree widen it; all right gives Wilson over the documents, not [1, 1]
    noisy = np.vstack([one, 1 - one, one])
    assert accuracy_interval(noisy).high - accuracy_interval(noisy).low > acc.high - acc.low
    full = accuracy_interval(np.ones((3, 100)))
    assert full.mean == 1.0 and (full.low, full.high) == pytest.approx(wilson_interval(100, 100))
    # coverage of the true mean accuracy over datasets drawn from one crossed population
    covered = 0
    difficulty = rng.beta(2, 1.2, size=4000)
    truth = difficulty.mean()
    for _ in range(200):
        docs = rng.choice(4000, size=120, replace=False)
        shared = rng.random(120) < difficulty[docs]
        table = np.where(rng.random((3, 120)) < 0.25, rng.random((3, 120)) < difficulty[docs], shared).astype(float)
        a = accuracy_interval(table)
        covered += a.low <= truth <= a.high
    assert covered / 200 >= 0.92


def test_holm_against_a_hand_computed_case():
    """p = 0.01, 0.04, 0.03, 0.005 (m = 4). Sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06;
    0.04 x 1 = 0.04, raised to the running maximum 0.06. Back in input order:"""
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == [] and holm([0.2]) == [0.2]
