"""The statistics behind every accuracy claim, for the sweep's crossed design.

Every seed scores the same test documents, so an outcome table X (seeds x documents, 1 = right) is *crossed*: a
document that is hard for one seed is hard for all of them, and three seeds of one document are not three
documents. Every interval and test here resamples or permutes along both axes accordingly.

- **Crossed bootstrap** of the grand mean: one replicate draws seeds with replacement and, independently, *one*
  document index vector shared by every drawn seed (the pigeonhole bootstrap of Owen 2007, the resampling that
  matches a crossed design; it is mildly conservative, counting the seed x document interaction more than once).
  Each level's multinomial weights are rescaled about their mean by sqrt(n / (n - 1)) (Rao & Wu 1988), so the
  bootstrap variance of each level equals its sample variance over n instead of (n - 1)/n of it: with 3 seeds the
  plain bootstrap would understate the seed variance by a third. A replicate is u' X v with u the seed weights
  and v the document weights, each summing to 1.
- **Paired difference** of two methods on the same seeds and documents: the mean of A - B, the 2.5 and 97.5
  percentiles of its crossed-bootstrap replicates, and an exact **sign-flip permutation test** whose unit is the
  document: under "no difference", each document's difference averaged over the seeds, D_j, is as likely to be
  +D_j as -D_j, so the two-sided p-value is P(|sum_j e_j D_j| >= |sum_j D_j|) over independent signs e_j = +-1.
  With 0/1 outcomes k D_j is an integer in [-k, k], so the null distribution is a convolution computed exactly;
  with one seed the test is exact McNemar.
- **Difference in differences** (A - B read long) - (A - B read short) on the same seeds and documents: the same
  interval and test on the table of per-(seed, document) differences of differences (integers in [-2, 2]).
- **Accuracy** of one series: the mean of X with a Wilson score interval at the effective number of documents
  n_eff = p (1 - p) / Var, where Var is the exact variance of the crossed bootstrap above (so 1 seed gives
  Wilson over about n documents, and seeds that disagree widen it). One quantity at every seed count.
- Holm's step-down correction over the tests of one claim (the verdict table, plots.verdict).

numpy and scipy only, so the plots stay free of torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats as sps

from results import wilson_interval

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
    each discordant pair is a fair coin. 1.0 when there is no discordant pair. (The sign-flip test with one seed.)"""
    n = only_a + only_b
    if n == 0:
        return 1.0
    return float(min(1.0, 2 * sps.binom.cdf(min(only_a, only_b), n, 0.5)))


def outcome_table(values, name: str = "outcomes") -> np.ndarray:
    """A (seeds, documents) float array of 0/1 outcomes; one row for a 1-d input. Refuses anything else."""
    table = np.atleast_2d(np.asarray(values, dtype=float))
    if table.ndim != 2 or table.size == 0:
        raise ValueError(f"{name} must be a non-empty (seeds, documents) array of 0/1 outcomes, got shape "
                         f"{table.shape}")
    if not np.isin(table, (0.0, 1.0)).all():
        raise ValueError(f"{name} must hold 0/1 outcomes (1 = right); found other values, e.g. "
                         f"{table[~np.isin(table, (0.0, 1.0))][0]!r}")
    return table


def _rescaled(counts: np.ndarray) -> np.ndarray:
    """Multinomial counts (draws, n) -> weights summing to 1 whose covariance is (I - J/n) / (n (n - 1)): the
    bootstrap weights 1/n + sqrt(n / (n - 1)) (c/n - 1/n) of Rao & Wu. n = 1: the single weight 1."""
    n = counts.shape[1]
    if n == 1:
        return np.ones_like(counts, dtype=float)
    return 1 / n + math.sqrt(n / (n - 1)) * (counts / n - 1 / n)


def crossed_bootstrap(table: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """`samples` crossed-bootstrap replicates u' X v of the mean of X (seeds, documents); see the module text.

    Documents and seeds draw from two streams of one seed, so a table whose rows are all equal gets exactly the
    replicates of its single row: copied seeds add no information and no width."""
    seeds, docs = table.shape
    doc_rng, seed_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    out = np.empty(samples)
    for start in range(0, samples, _CHUNK):  # blocks bound the memory of the weight arrays
        n = min(_CHUNK, samples - start)
        v = _rescaled(doc_rng.multinomial(docs, np.full(docs, 1 / docs), size=n))
        u = _rescaled(seed_rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=n))
        out[start:start + n] = ((u @ table) * v).sum(axis=1)
    return out


def crossed_variance(table: np.ndarray) -> float:
    """The exact variance of `crossed_bootstrap`'s replicates (no Monte Carlo error): with r the seed means, c
    the document means and Z the doubly centred table,
    Var = s2(r) / k + s2(c) / d + ||Z||^2 / (k (k - 1) d (d - 1)), a level with one member contributing 0."""
    seeds, docs = table.shape
    var = 0.0
    if seeds > 1:
        var += table.mean(axis=1).var(ddof=1) / seeds
    if docs > 1:
        var += table.mean(axis=0).var(ddof=1) / docs
    if seeds > 1 and docs > 1:
        z = table - table.mean(axis=1, keepdims=True) - table.mean(axis=0, keepdims=True) + table.mean()
        var += float((z ** 2).sum()) / (seeds * (seeds - 1) * docs * (docs - 1))
    return float(var)


def sign_flip_p(table: np.ndarray) -> float:
    """Exact two-sided sign-flip p-value of a (seeds, documents) table of integer paired differences (A - B of 0/1
    outcomes, or a difference of such differences): the document sums m_j = k D_j are integers; under the null
    sum_j e_j m_j (e_j = +-1 fair coins) has the distribution of sum over magnitudes s of s (2 B_s - c_s),
    B_s ~ Binomial(c_s, 1/2) for the c_s documents with |m_j| = s, convolved exactly. 1.0 when no document
    differs."""
    m = np.rint(table.sum(axis=0)).astype(int)
    observed = abs(int(m.sum()))
    magnitudes, counts = np.unique(np.abs(m[m != 0]), return_counts=True)
    if magnitudes.size == 0:
        return 1.0
    pmf = np.ones(1)  # distribution of sum e_j |m_j| on the support -T..T, T = sum |m_j|, as offsets from -T
    for size, count in zip(magnitudes.tolist(), counts.tolist()):
        part = np.zeros(2 * size * count + 1)
        part[::2 * size] = sps.binom.pmf(np.arange(count + 1), count, 0.5)  # values size * (2b - count)
        pmf = np.convolve(pmf, part)
    total = int((magnitudes * counts).sum())
    values = np.arange(-total, total + 1)
    return float(min(1.0, pmf[np.abs(values) >= observed].sum()))


@dataclass(frozen=True)
class PairedDifference:
    """Accuracy of A minus accuracy of B on the same documents and seeds, with its 95 % crossed-bootstrap interval
    and the document-level sign-flip p-value."""

    diff: float
    low: float
    high: float
    p_value: float
    n_docs: int
    n_seeds: int
    rates: tuple[float, ...] = ()  # the compared accuracies on these documents and seeds (A, B; a DiD: its four)

    @property
    def detected(self) -> bool:
        """True when the 95 % interval excludes 0."""
        return self.low > 0 or self.high < 0

    def flipped(self) -> PairedDifference:
        """The same comparison as B - A."""
        return PairedDifference(-self.diff, -self.high, -self.low, self.p_value, self.n_docs, self.n_seeds,
                                self.rates)

    def describe(self, a: str, b: str, p_holm: float | None = None) -> str:
        """One sentence for report.md: a difference only when the interval excludes 0 and, given `p_holm` (the
        sign-flip p corrected over the lengths of its comparison), that corrected test agrees (p_holm < 0.05)."""
        ci = f"95 % CI [{self.low:+.3f}, {self.high:+.3f}]"
        basis = f"{self.n_docs} test documents x {self.n_seeds} seed{'s' if self.n_seeds != 1 else ''}"
        p = f"sign-flip p = {self.p_value:.3g}" + ("" if p_holm is None else f", Holm-corrected {p_holm:.3g}")
        if not self.detected:
            return (f"{a} vs {b}: no detectable difference at this budget ({ci}; difference {self.diff:+.3f}, "
                    f"{p}, {basis}).")
        if p_holm is not None and p_holm >= 0.05:
            return (f"{a} vs {b}: no difference stated: the interval excludes 0 but the corrected test does not "
                    f"agree ({ci}; difference {self.diff:+.3f}, {p}, {basis}).")
        word = "higher" if self.diff > 0 else "lower"
        return f"{a} is {abs(self.diff):.3f} {word} in accuracy than {b} ({ci}, {p}, {basis})."


def paired_difference(correct_a, correct_b, samples: int = BOOTSTRAP_SAMPLES,
                      seed: int = BOOTSTRAP_SEED) -> PairedDifference:
    """`correct_a`, `correct_b`: 0/1 arrays of shape (seeds, documents), the same seeds and documents in the same
    order. The interval is the crossed bootstrap's of A - B (one draw of seeds and documents for both methods:
    that is the pairing); the p-value the exact sign-flip test over documents."""
    a, b = outcome_table(correct_a, "correct_a"), outcome_table(correct_b, "correct_b")
    if a.shape != b.shape:
        raise ValueError(f"paired arrays must have one equal, non-empty shape (seeds, documents): {a.shape} vs "
                         f"{b.shape}")
    return replace(crossed_difference(a - b, samples, seed), rates=(float(a.mean()), float(b.mean())))


def difference_in_differences(a_long, b_long, a_short, b_short, samples: int = BOOTSTRAP_SAMPLES,
                              seed: int = BOOTSTRAP_SEED) -> PairedDifference:
    """(A - B read long) - (A - B read short): what reading further changes in A's lead, on the same seeds and
    documents (four 0/1 tables of one shape). Under "no difference" swapping A and B on a document flips the
    sign of its term, so the same crossed interval and sign-flip test apply."""
    tables = [outcome_table(t, name) for t, name in ((a_long, "a_long"), (b_long, "b_long"), (a_short, "a_short"),
                                                     (b_short, "b_short"))]
    if len({t.shape for t in tables}) != 1:
        raise ValueError(f"the four outcome tables must have one shape (seeds, documents): "
                         f"{[t.shape for t in tables]}")
    return replace(crossed_difference((tables[0] - tables[1]) - (tables[2] - tables[3]), samples, seed),
                   rates=tuple(float(t.mean()) for t in tables))


def crossed_difference(delta: np.ndarray, samples: int = BOOTSTRAP_SAMPLES,
                       seed: int = BOOTSTRAP_SEED) -> PairedDifference:
    """A (seeds, documents) table of integer paired differences -> its mean, crossed-bootstrap percentile interval
    and sign-flip p."""
    low, high = np.percentile(crossed_bootstrap(delta, samples, seed), [2.5, 97.5])
    seeds, docs = delta.shape
    return PairedDifference(diff=float(delta.mean()), low=float(low), high=float(high), p_value=sign_flip_p(delta),
                            n_docs=docs, n_seeds=seeds)


@dataclass(frozen=True)
class Accuracy:
    """Mean accuracy over seeds and documents with its 95 % interval (Wilson at the effective documents)."""

    mean: float
    low: float
    high: float
    n_docs: int
    n_seeds: int
    seed_values: tuple[float, ...]  # each seed's accuracy over the documents, for the seed spread


def accuracy_interval(correct) -> Accuracy:
    """Accuracy of a (seeds, documents) 0/1 table: Wilson's 95 % score interval at n_eff = p (1 - p) / Var, with
    Var the crossed bootstrap's exact variance (`crossed_variance`), n_eff capped at the k d outcomes. When every
    outcome is equal (Var = 0) n_eff is the number of documents: seeds that agree everywhere count once."""
    table = outcome_table(correct, "correct")
    return _wilson_at_effective_n(table.mean(axis=1), table.shape[1], crossed_variance(table))


def accuracy_from_seed_rates(rates, n_docs: int) -> Accuracy:
    """`accuracy_interval` for a sweep whose per-document outcomes are missing (results.csv only): the seed term
    s2(r) / k is known from the seeds' accuracies; the document term takes its largest value, p (1 - p) / (d - 1)
    (seeds agreeing on every document); the interaction term is unknown and left out. With one seed this is the
    exact variance `accuracy_interval` would use."""
    rates = np.asarray([r for r in rates if not math.isnan(r)], dtype=float)
    if not len(rates) or n_docs < 1:
        return Accuracy(math.nan, math.nan, math.nan, int(n_docs), len(rates), tuple(rates))
    p = float(rates.mean())
    seed_term = rates.var(ddof=1) / len(rates) if len(rates) > 1 else 0.0
    document_term = p * (1 - p) / (n_docs - 1) if n_docs > 1 else 0.0
    return _wilson_at_effective_n(rates, n_docs, seed_term + document_term)


def _wilson_at_effective_n(seed_rates: np.ndarray, n_docs: int, var: float) -> Accuracy:
    """Wilson's interval of the mean of `seed_rates` at n_eff = p (1 - p) / var, capped at the k d outcomes;
    n_docs when var = 0 (every outcome equal: the seeds count once)."""
    p, seeds = float(np.mean(seed_rates)), len(seed_rates)
    n_eff = min(p * (1 - p) / var, seeds * n_docs) if var > 0 else n_docs
    low, high = wilson_interval(p * n_eff, n_eff)
    return Accuracy(p, low, high, int(n_docs), seeds, tuple(float(r) for r in seed_rates))
