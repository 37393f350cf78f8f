"""The statistics behind every accuracy claim: intervals per point and paired differences between methods.

- Wilson 95 % score interval of one accuracy (k right out of n documents): the interval for one seed, where the
  test documents are the only sampling unit. (Wilson rather than the normal approximation: it stays inside
  [0, 1] and keeps its coverage at n = 50 and accuracies near 0 or 1.)
- Paired difference of two methods scored on the same test documents (and the same seeds): the mean
  difference in accuracy, a 95 % percentile-bootstrap interval that resamples documents and, where there are
  several seeds, seeds first and documents within each (a two-level bootstrap: seeds and documents both vary),
  and McNemar's exact p-value on the discordant pairs (pooled over seeds; with several seeds the same documents
  repeat, so the p-value is only a companion of the bootstrap interval).
- Holm's step-down correction over the tests of one claim (the verdict table, plots.verdict).

numpy and scipy only, so the plots stay free of torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from ssmlora.results import wilson_interval  # noqa: F401  (one Wilson interval for the sweep and the plots)

BOOTSTRAP_SAMPLES = 4000
BOOTSTRAP_SEED = 0  # a fixed generator: the report of one sweep is the same on every run
_CHUNK = 500  # bootstrap draws per block


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: sorted ascending, the i-th smallest (from 0) is
    multiplied by (m - i), made monotone by a running maximum, and capped at 1. Controls the family-wise error
    rate over the m tests of one claim, without assuming they are independent."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: `only_a` pairs right for A only, `only_b` right for B only; under the null
    each discordant pair is a fair coin. 1.0 when there is no discordant pair."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    return float(min(1.0, 2 * sps.binom.cdf(min(only_a, only_b), n, 0.5)))


@dataclass(frozen=True)
class PairedDifference:
    """Accuracy of A minus accuracy of B on the same documents and seeds, with its 95 % interval."""

    diff: float
    low: float
    high: float
    p_mcnemar: float
    n_docs: int
    n_seeds: int

    @property
    def detected(self) -> bool:
        """True when the 95 % interval excludes 0: the only case in which the report states a difference."""
        return self.low > 0 or self.high < 0

    def describe(self, a: str, b: str, p_holm: float | None = None) -> str:
        """One sentence for report.md: a difference only when the interval excludes 0 and, given `p_holm` (the
        McNemar p corrected over the lengths of its comparison), that corrected test agrees (p_holm < 0.05)."""
        ci = f"95 % CI [{self.low:+.3f}, {self.high:+.3f}]"
        basis = f"{self.n_docs} test documents x {self.n_seeds} seed{'s' if self.n_seeds != 1 else ''}"
        p = f"McNemar p = {self.p_mcnemar:.3g}" + ("" if p_holm is None else f", Holm-corrected {p_holm:.3g}")
        if not self.detected:
            return (f"{a} vs {b}: no detectable difference at this budget ({ci}; difference {self.diff:+.3f}, "
                    f"{p}, {basis}).")
        if p_holm is not None and p_holm >= 0.05:
            return (f"{a} vs {b}: no difference stated: the interval excludes 0 but the corrected test does not "
                    f"agree ({ci}; difference {self.diff:+.3f}, {p}, {basis}).")
        word = "higher" if self.diff > 0 else "lower"
        return f"{a} is {abs(self.diff):.3f} {word} in accuracy than {b} ({ci}, {p}, {basis})."


def paired_difference(correct_a, correct_b, samples: int = BOOTSTRAP_SAMPLES,
                      seed: int = BOOTSTRAP_SEED, resample_seeds: bool = True) -> PairedDifference:
    """`correct_a`, `correct_b`: 0/1 arrays of shape (seeds, documents), the same documents in the same order.

    With several seeds the bootstrap is two-level: it draws seeds with replacement and, within each drawn seed,
    documents with replacement (the same draw for A and B: that is the pairing), so a run whose seeds disagree
    gets a wide interval. `resample_seeds=False` draws documents only and keeps every seed (the interval of one
    fixed set of seeds; it ignores seed-to-seed variance). The interval is the 2.5 and 97.5 percentiles of the
    drawn differences.
    """
    a = np.atleast_2d(np.asarray(correct_a, dtype=float))
    b = np.atleast_2d(np.asarray(correct_b, dtype=float))
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired arrays must have one equal, non-empty shape (seeds, documents): {a.shape} vs "
                         f"{b.shape}")
    delta = a - b
    seeds, docs = delta.shape
    rng = np.random.default_rng(seed)
    boot = np.empty(samples)
    for start in range(0, samples, _CHUNK):  # chunks bound the memory of the index arrays
        n = min(_CHUNK, samples - start)
        if seeds > 1 and resample_seeds:
            seed_draw = rng.integers(0, seeds, size=(n, seeds))
            doc_draw = rng.integers(0, docs, size=(n, seeds, docs))
            boot[start:start + n] = delta[seed_draw[:, :, None], doc_draw].mean(axis=(1, 2))
        else:
            doc_draw = rng.integers(0, docs, size=(n, docs))
            boot[start:start + n] = delta[:, doc_draw].mean(axis=(0, 2))
    low, high = np.percentile(boot, [2.5, 97.5])
    only_a = int(((a == 1) & (b == 0)).sum())
    only_b = int(((a == 0) & (b == 1)).sum())
    return PairedDifference(diff=float(delta.mean()), low=float(low), high=float(high),
                            p_mcnemar=mcnemar_exact(only_a, only_b), n_docs=docs, n_seeds=seeds)
