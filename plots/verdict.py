"""The verdict table that opens report.md: one row per claim of the SSMLoRA paper (arXiv 2502.04958), judged on
this sweep's paired differences (same test documents, same seeds).

- **C1** SSMLoRA's accuracy equals LoRA's with fewer adapter parameters: an equivalence test with a stated
  margin (`MARGIN`). Supported when the 95 % interval of ssmlora - lora lies inside +-MARGIN at every length
  and each length has enough test documents to bound a difference that small (3/n <= MARGIN, `resolution`);
  contradicted when, at some length, the interval lies wholly outside the margin and the Holm-corrected test
  rejects "no difference"; otherwise inconclusive.
- **C2** SSMLoRA beats LoRA on longer inputs, each trained at its length: the lengths above the sweep's shortest
  (the only length when there is one). Supported when the difference is positive at one or more of them and
  negative at none; contradicted when it is negative at one or more, or inside +-MARGIN at every one (no gain
  worth the name); otherwise inconclusive.
- **C3** SSMLoRA beats LoRA when read beyond its training length (`--eval-lengths`), with C2's rule over every
  (train length, longer read) pair. Without `--eval-lengths` it is not measured.

A difference counts ("positive", "negative", "outside the margin") only when its Holm-corrected sign-flip
p-value (plots.stats: the unit is the test document) is below ALPHA *and* its 95 % interval excludes 0: the corrected test and the interval must agree.
Holm runs over the lengths (or length pairs) of one claim and one comparison. Each row also gives the smallest
difference the run could detect (80 % power at ALPHA, from the interval's width). With a control in the sweep,
its comparison gets a row of its own: C1 against the parameter-matched LoRA, C2 and C3 against LoRA at
SSMLoRA's rate.
"""

from __future__ import annotations

from dataclasses import dataclass

from plots.data import Sweep
from plots.stats import PairedDifference, holm

MARGIN = 0.03  # accuracy, fraction: the equivalence margin of C1 and the smallest gain C2 and C3 count
ALPHA = 0.05
POWER_FACTOR = 1.959963984540054 + 0.8416212335729143  # z(1 - ALPHA/2) + z(0.80): detectable = factor x SE
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
    comparison: str  # e.g. "ssmlora - lora at L=512, 1024"
    estimate: PairedDifference | None  # the deciding point (see `judge`); None when not measured
    at: str  # where the estimate is from, e.g. "L=4096" or "trained 512, read 2048"
    word: str  # supported | contradicted | inconclusive
    why: str

    def detectable(self) -> float:
        """Smallest difference this run detects: with 80 % power at ALPHA, POWER_FACTOR x the interval's SE, and
        never below `resolution(n)` (a bootstrap over documents that all agree has a zero-width interval)."""
        e = self.estimate
        if e is None:
            return float("nan")
        return max(POWER_FACTOR * (e.high - e.low) / (2 * 1.959963984540054), resolution(e.n_docs))


def resolution(n_docs: int) -> float:
    """3/n: the 95 % upper bound on a rate of discordant documents when none of n disagree (the rule of three),
    so the smallest difference n test documents can bound, however the intervals look."""
    return 3 / max(n_docs, 1)


def judge(claim: str, points: dict[str, PairedDifference]) -> tuple[str, str, str]:
    """(word, why, key of the deciding point) for one claim over its points {where: difference}."""
    keys = list(points)
    adjusted = dict(zip(keys, holm([points[k].p_value for k in keys])))
    shown = {k: adjusted[k] < ALPHA and points[k].detected for k in keys}
    inside = {k: -MARGIN < points[k].low and points[k].high < MARGIN for k in keys}
    if claim == "C1":
        outside = [k for k in keys if shown[k] and (points[k].low > MARGIN or points[k].high < -MARGIN)]
        if outside:
            return "contradicted", f"outside +-{MARGIN:g} at {', '.join(outside)} (Holm-corrected)", outside[0]
        coarse = [k for k in keys if resolution(points[k].n_docs) > MARGIN]
        if all(inside.values()) and coarse:
            return "inconclusive", (f"too few test documents at {', '.join(coarse)} to bound a difference within "
                                    f"+-{MARGIN:g} (3/n > {MARGIN:g})"), coarse[0]
        if all(inside.values()):
            worst = max(keys, key=lambda k: max(abs(points[k].low), abs(points[k].high)))
            return "supported", f"95 % interval inside +-{MARGIN:g} at every point", worst
        return "inconclusive", f"an interval reaches beyond +-{MARGIN:g} without the difference being shown", \
            max(keys, key=lambda k: points[k].high - points[k].low)
    better = [k for k in keys if shown[k] and points[k].diff > 0]
    worse = [k for k in keys if shown[k] and points[k].diff < 0]
    if worse:
        return "contradicted", f"lower at {', '.join(worse)} (Holm-corrected)", worse[0]
    if better:
        return "supported", f"higher at {', '.join(better)} (Holm-corrected), lower nowhere", better[-1]
    if all(inside.values()):
        return "contradicted", f"no gain: every 95 % interval inside +-{MARGIN:g}", keys[-1]
    return "inconclusive", "no difference shown after Holm correction", keys[-1]


def verdicts(sweep: Sweep, trained: dict, extrapolated: list) -> list[Verdict]:
    """Every row of the table. `trained`: plots.differences.differences(sweep); `extrapolated`:
    plots.extrapolation.differences(sweep)."""
    ssm = next((s for s in sweep.series if s == "ssmlora"), None)
    rows = []
    for claim, other in COMPARISONS:
        if ssm is None or other not in sweep.series:
            continue
        comparison = f"{ssm} - {other}"
        if claim == "C3":
            points = {f"trained {k['train_len']}, read {k['eval_len']}": _oriented(d, k["a"], ssm)
                      for k, d in extrapolated if {k["a"], k["b"]} == {ssm, other} and k["eval_len"] > k["train_len"]
                      and k["b_eval_len"] == k["eval_len"]}
        else:
            by_length = trained.get((ssm, other)) or {}
            lengths = sorted(by_length)
            if claim == "C2" and len(lengths) > 1:
                lengths = lengths[1:]
            points = {f"L={n}": by_length[n] for n in lengths}
        if not points:
            why = ("not measured: no read beyond the training length (--eval-lengths) for this pair" if claim == "C3"
                   else "not measured: no paired test predictions")
            rows.append(Verdict(claim, comparison, None, "", "inconclusive", why))
            continue
        word, why, at = judge(claim, points)
        rows.append(Verdict(claim, comparison, points[at], at, word, why))
    return rows


def _oriented(d: PairedDifference, a: str, ssm: str) -> PairedDifference:
    """The difference as ssm - other, whichever way round the pair was computed."""
    if a == ssm:
        return d
    return d.flipped()


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
                        f"crossed bootstrap: seeds, and one draw of the documents shared by them). Equivalence margin "
                        f"+-{MARGIN:g}; a difference counts only when its Holm-corrected sign-flip p (over the points of one row) is "
                        f"below {ALPHA:g} and its interval excludes 0. {parameter_ratio}"]
