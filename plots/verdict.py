"""The verdict table that opens report.md: one row per claim of the SSMLoRA paper (arXiv 2502.04958), judged on
this sweep's paired differences (same test documents, same seeds; plots.stats).

One margin, MARGIN, is the smallest accuracy difference that matters. Every point of a claim (a length, or a
(train length, longer read) pair) is read by the same rule, on its 95 % interval and its Holm-corrected
sign-flip p (Holm over the points of one row):

- **gain**: the interval lies wholly above +MARGIN and the corrected test rejects "no difference" (p < ALPHA);
- **loss**: the interval lies wholly below -MARGIN and the corrected test rejects;
- **no meaningful difference**: the interval lies wholly inside +-MARGIN;
- **no meaningful gain**: the interval lies wholly below +MARGIN (a gain of the margin's size is excluded).

A bound of a 95 % interval is a one-sided test at 2.5 %. The claims:

- **C1** SSMLoRA's accuracy equals LoRA's with fewer adapter parameters: an equivalence test (two one-sided
  tests at 2.5 % each) at every length. Supported when every point is "no meaningful difference" with enough
  test documents to bound a difference that small (3/n <= MARGIN, `resolution`); contradicted when some point
  is a gain or a loss; otherwise inconclusive. (Requiring every point is an intersection-union test: no
  correction over the lengths is needed.)
- **C2** SSMLoRA beats LoRA on longer inputs, each trained at its length: the lengths above the sweep's shortest
  (the only length when there is one). Supported when some point is a gain and none a loss; contradicted when
  some point is a loss, or every point is "no meaningful gain"; otherwise inconclusive.
- **C3** SSMLoRA beats LoRA when read beyond its training length (`--eval-lengths`): C2's rule over the
  extrapolation effect of every (train length, longer read), the difference in differences
  (SSMLoRA - LoRA read long) - (SSMLoRA - LoRA at the training length), so a lead SSMLoRA already had where it
  trained is not counted as gained by reading further.

Every SSMLoRA entry of the sweep (`ssmlora`, or each reading `ssmlora:<mode>`) gets its own rows. A claim with no
point reads **not measured**. A claim decided at a ceiling (every accuracy the deciding point compares is at
least CEILING) or at chance (every one within MARGIN of the majority-class rate) does not count: it reads
inconclusive, with the reason. A sweep that trained at its shortest length only (`--train-at shortest`) has no
C2 point; its row says what `--preset full` would cost, from the run's own estimate. Each row also gives the smallest difference the run could detect
(80 % power for the first step of Holm over the row's m points, from the interval's width). With a control in the
sweep, its comparison gets a row of its own: C1 against the parameter-matched LoRA, C2 and C3 against LoRA at
SSMLoRA's rate.
"""

from __future__ import annotations

from dataclasses import dataclass

from scipy.stats import norm

from plots.data import Sweep
from plots.stats import PairedDifference, holm

MARGIN = 0.03  # accuracy, fraction: the smallest difference that matters, for every claim
CEILING = 0.97  # every compared accuracy at or above it: a claim decided there says nothing about the methods
ALPHA = 0.05
POWER = 0.80
Z_INTERVAL = 1.959963984540054  # the 95 % interval's half-width in standard errors
CLAIMS = {
    "C1": "accuracy equal to LoRA's with fewer adapter parameters",
    "C2": "better than LoRA on longer inputs, trained at that length",
    "C3": "better than LoRA when read beyond its training length",
}
# (claim, the LoRA-side entry) rows; controls enter when the sweep ran them
COMPARISONS = (("C1", "lora"), ("C1", "lora-at-ssmlora-params"), ("C2", "lora"), ("C2", "lora-at-ssmlora-lr"),
               ("C3", "lora"), ("C3", "lora-at-ssmlora-lr"))


@dataclass(frozen=True)
class Verdict:
    claim: str
    comparison: str  # e.g. "ssmlora - lora"
    estimate: PairedDifference | None  # the deciding point (see `judge`); None when not measured
    at: str  # where the estimate is from, e.g. "L=4096" or "trained 512, read 2048"
    word: str  # supported | contradicted | inconclusive | not measured
    why: str
    points: int = 1  # m, the points Holm corrects over

    def detectable(self) -> float:
        """Smallest true difference this row detects with 80 % power at the first step of Holm over its m points
        (a two-sided test at ALPHA / m): (z(1 - ALPHA / 2m) + z(POWER)) x the interval's standard error, never below
        `resolution(n)` (a bootstrap over documents that all agree has a zero-width interval)."""
        e = self.estimate
        if e is None:
            return float("nan")
        return max(power_factor(self.points) * (e.high - e.low) / (2 * Z_INTERVAL), resolution(e.n_docs))


def power_factor(m: int) -> float:
    """z(1 - ALPHA / (2m)) + z(POWER): 2.80 for one point, 3.24 for three."""
    return float(norm.ppf(1 - ALPHA / (2 * max(m, 1))) + norm.ppf(POWER))


def resolution(n_docs: int) -> float:
    """3/n: the 95 % upper bound on a rate of discordant documents when none of n disagree (the rule of three),
    so the smallest difference n test documents can bound, however the intervals look."""
    return 3 / max(n_docs, 1)


def classify(points: dict[str, PairedDifference]) -> dict[str, str]:
    """{point: gain | loss | no meaningful difference | no meaningful gain | undecided}, by the module's rule."""
    adjusted = dict(zip(points, holm([d.p_value for d in points.values()])))
    out = {}
    for key, d in points.items():
        if d.low > MARGIN and adjusted[key] < ALPHA:
            out[key] = "gain"
        elif d.high < -MARGIN and adjusted[key] < ALPHA:
            out[key] = "loss"
        elif -MARGIN < d.low and d.high < MARGIN:
            out[key] = "no meaningful difference"
        elif d.high < MARGIN:
            out[key] = "no meaningful gain"
        else:
            out[key] = "undecided"
    return out


def judge(claim: str, points: dict[str, PairedDifference]) -> tuple[str, str, str]:
    """(word, why, key of the deciding point) for one claim over its points {where: difference}."""
    keys = list(points)
    kind = classify(points)
    gains = [k for k in keys if kind[k] == "gain"]
    losses = [k for k in keys if kind[k] == "loss"]
    widest = max(keys, key=lambda k: points[k].high - points[k].low)
    if claim == "C1":
        if gains or losses:
            beyond = gains + losses
            return "contradicted", (f"beyond +-{MARGIN:g} at {', '.join(beyond)} (interval wholly outside, "
                                    f"Holm-corrected test agrees)"), beyond[0]
        coarse = [k for k in keys if resolution(points[k].n_docs) > MARGIN]
        if all(kind[k] == "no meaningful difference" for k in keys):
            if coarse:
                return "inconclusive", (f"too few test documents at {', '.join(coarse)} to bound a difference "
                                        f"within +-{MARGIN:g} (3/n > {MARGIN:g})"), coarse[0]
            worst = max(keys, key=lambda k: max(abs(points[k].low), abs(points[k].high)))
            return "supported", (f"95 % interval inside +-{MARGIN:g} at every point (equivalence, 2.5 % per "
                                 f"side)"), worst
        return "inconclusive", f"an interval reaches beyond +-{MARGIN:g} without a difference being shown", widest
    if losses:
        return "contradicted", f"lower by more than {MARGIN:g} at {', '.join(losses)} (Holm-corrected)", losses[0]
    if gains:
        return "supported", (f"higher by more than {MARGIN:g} at {', '.join(gains)} (Holm-corrected), lower "
                             f"nowhere"), gains[-1]
    if all(kind[k] == "no meaningful difference" for k in keys):
        return "contradicted", f"no meaningful difference: every 95 % interval inside +-{MARGIN:g}", keys[-1]
    if all(kind[k] in ("no meaningful difference", "no meaningful gain") for k in keys):
        return "contradicted", f"no meaningful gain: every 95 % interval below +{MARGIN:g}", keys[-1]
    return "inconclusive", f"no gain beyond +{MARGIN:g} shown and none excluded", widest


def verdicts(sweep: Sweep, trained: dict, extrapolated: list) -> list[Verdict]:
    """Every row of the table. `trained`: plots.differences.differences(sweep); `extrapolated`:
    plots.extrapolation.effects(sweep) (the differences in differences)."""
    entries = [s for s in sweep.series if s == "ssmlora" or s.startswith("ssmlora:")]  # every SSMLoRA reading
    matched = getattr(sweep, "matched", {})
    table = getattr(sweep, "table", None)
    chance = float(table["majority_rate"].max()) if table is not None and "majority_rate" in table else 0.0
    config = getattr(sweep, "config", {})
    rows = []
    for claim, other in COMPARISONS:
        for ssm in entries:
            if other in sweep.series and (other == "lora" or matched.get(other, "ssmlora") == ssm):
                if claim == "C2" and not trains_every_length(config):
                    rows.append(Verdict(claim, f"{ssm} - {other}", None, "", "not measured", full_grid_cost(config),
                                        0))
                    continue
                rows.append(verdict_row(claim, ssm, other, trained, extrapolated, chance))
    return rows


def trains_every_length(config: dict) -> bool:
    return ((config.get("config") or {}).get("design") or {}).get("train_at", "every") != "shortest"


def full_grid_cost(config: dict) -> str:
    """Why C2 is missing from a sweep that trained at its shortest length only, and what measuring it costs."""
    full = (config.get("plan") or {}).get("full")
    cost = (f": {full['cells']} more cells, about {full['estimate_s'] / 3600:.1f} h on this run's {full['device']} "
            f"by its estimate") if full else ""
    return f"needs --preset full (every entry trained at every length){cost}"


def at_a_limit(d: PairedDifference, chance: float) -> str:
    """Where a point says nothing about the methods: 'a ceiling' or 'chance' (see the module's docstring), or ''."""
    if d.rates and min(d.rates) >= CEILING:
        return f"a ceiling (every compared accuracy >= {CEILING:g})"
    if d.rates and max(d.rates) <= chance + MARGIN:
        return f"chance (every compared accuracy within {MARGIN:g} of the majority-class rate {chance:.2f})"
    return ""


def verdict_row(claim: str, ssm: str, other: str, trained: dict, extrapolated: list,
                chance: float = 0.0) -> Verdict:
    """One claim for one SSMLoRA entry against one LoRA-side entry (a control: only against its counterpart)."""
    comparison = f"{ssm} - {other}"
    if claim == "C3":
        points = {f"trained {k['max_len']}, read {k['eval_len']}": d if k["a"] == ssm else d.flipped()
                  for k, d in extrapolated if {k["a"], k["b"]} == {ssm, other}}
    else:
        by_length = trained.get((ssm, other)) or {}
        lengths = sorted(by_length)
        if claim == "C2" and len(lengths) > 1:
            lengths = lengths[1:]
        points = {f"L={n}": by_length[n] for n in lengths}
    if not points:
        why = ("no read beyond the training length (--eval-lengths) for this pair" if claim == "C3"
               else "no paired test predictions")
        return Verdict(claim, comparison, None, "", "not measured", why, 0)
    word, why, at = judge(claim, points)
    if word in ("supported", "contradicted"):
        deciding = list(points) if claim == "C1" and word == "supported" else [at]
        limits = {k: at_a_limit(points[k], chance) for k in deciding}
        limited = [k for k in deciding if limits[k]]
        if limited:
            at = limited[0]
            why = f"decided at {limits[at]} at {at}, which does not count (otherwise {word}: {why})"
            word = "inconclusive"
    return Verdict(claim, comparison, points[at], at, word, why, len(points))


def table_lines(rows: list[Verdict], parameter_ratio: str) -> list[str]:
    """The markdown table, its rule and the parameter ratio behind C1."""
    lines = ["| claim | comparison | estimate | 95 % interval | at | smallest detectable | verdict | why |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        e = r.estimate
        est, ci = ("", "") if e is None else (f"{e.diff:+.3f}", f"[{e.low:+.3f}, {e.high:+.3f}]")
        mde = "" if e is None else f"{r.detectable():.3f}"
        lines.append(f"| {r.claim}: {CLAIMS[r.claim]} | {r.comparison} | {est} | {ci} | {r.at} | {mde} | "
                     f"**{r.word}** | {r.why} |")
    return lines + ["", f"Accuracy differences are fractions, paired on the same test documents and seeds (95 % "
                        f"crossed bootstrap: seeds, and one draw of the documents shared by them); C3's are "
                        f"differences in differences, (read long) - (at the training length). Margin +-{MARGIN:g}: "
                        f"a gain or loss counts only when its interval lies wholly beyond the margin and its "
                        f"sign-flip p, Holm-corrected over the points of the row, is below {ALPHA:g}; an interval "
                        f"inside +-{MARGIN:g} is no meaningful difference (C1: equivalence, 2.5 % per side). "
                        f"Smallest detectable: 80 % power at Holm's first step over the row's points. "
                        f"{parameter_ratio}"]
