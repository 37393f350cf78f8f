"""The verdict table: planted equivalence, a planted gap, Holm within a claim, and the report that opens with it."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from plots.stats import PairedDifference, paired_difference
from plots.verdict import MARGIN, judge, table_lines, verdicts


def _planted(gap: float, seeds: int = 3, docs: int = 400) -> PairedDifference:
    """B right on half the documents; A the same, plus `gap` x docs of B's wrong ones, in every seed."""
    b = np.zeros((seeds, docs), dtype=int)
    b[:, : docs // 2] = 1
    a = b.copy()
    a[:, docs // 2: docs // 2 + int(round(gap * docs))] = 1
    return paired_difference(a, b)


def test_twin_methods_are_judged_equivalent():
    twin = _planted(0.0)
    assert (twin.low, twin.high) == (0.0, 0.0)
    word, why, _ = judge("C1", {"L=512": twin, "L=1024": twin})
    assert word == "supported" and f"+-{MARGIN:g}" in why


def test_too_few_documents_cannot_support_equivalence():
    """Eight twin documents agree everywhere, so the bootstrap interval is [0, 0]; 3/8 bounds nothing near 0.03."""
    word, why, _ = judge("C1", {"L=512": _planted(0.0, seeds=1, docs=8)})
    assert word == "inconclusive" and "too few test documents at L=512" in why


def test_a_planted_gap_of_ten_points_contradicts_equivalence():
    gap = _planted(0.10)
    assert gap.low > MARGIN and gap.p_value < 1e-6
    word, why, at = judge("C1", {"L=512": _planted(0.0), "L=1024": gap})
    assert (word, at) == ("contradicted", "L=1024") and "Holm" in why
    # C2 (better on longer inputs): the same gap in SSMLoRA's favour supports it; against it contradicts
    assert judge("C2", {"L=1024": gap})[0] == "supported"
    assert judge("C2", {"L=1024": gap.flipped()})[0] == "contradicted"
    # no gain at all (twins) contradicts "better", a noisy small one is inconclusive
    assert judge("C2", {"L=1024": _planted(0.0)})[0] == "contradicted"
    noisy = PairedDifference(0.02, -0.05, 0.09, 0.3, 100, 1)
    assert judge("C2", {"L=1024": noisy})[0] == "inconclusive"
    assert judge("C1", {"L=1024": noisy})[0] == "inconclusive"


def test_holm_decides_whether_a_difference_counts():
    """p = 0.02 alone is shown; with three other lengths at p = 0.5, Holm's 4 x 0.02 = 0.08 is not: the interval
    lies beyond the margin but the corrected test does not agree, so nothing is claimed."""
    edge = PairedDifference(0.08, 0.04, 0.12, 0.02, 200, 3)
    flat = PairedDifference(0.0, -0.04, 0.04, 0.5, 200, 3)
    assert judge("C2", {"L=1024": edge})[0] == "supported"
    assert judge("C2", {"L=1024": edge, "L=2048": flat, "L=4096": flat, "L=8192": flat})[0] == "inconclusive"


def test_a_gain_counts_only_beyond_the_margin():
    """A precise +0.01 gain (interval [+0.004, +0.016], p tiny) is real but not meaningful: inside the margin, so
    "better" is contradicted, not supported. A +0.02 gain whose interval straddles the margin decides nothing; a
    large one is supported. The same rule reads losses."""
    precise = PairedDifference(0.01, 0.004, 0.016, 1e-6, 4000, 3)
    assert precise.detected
    word, why, _ = judge("C2", {"L=1024": precise})
    assert word == "contradicted" and "no meaningful difference" in why
    straddle = PairedDifference(0.02, 0.005, 0.045, 1e-4, 400, 3)
    assert judge("C2", {"L=1024": straddle})[0] == "inconclusive"
    assert judge("C2", {"L=1024": _planted(0.10)})[0] == "supported"
    assert judge("C2", {"L=1024": _planted(0.10).flipped()})[0] == "contradicted"
    below = PairedDifference(-0.03, -0.08, 0.02, 0.2, 400, 3)  # a gain of 0.03 excluded, a loss not shown
    word, why, _ = judge("C2", {"L=1024": below})
    assert word == "contradicted" and "no meaningful gain" in why
    # C1: a sub-margin difference is equivalence; a shown gain beyond the margin contradicts it
    word, why, _ = judge("C1", {"L=1024": precise})
    assert word == "supported" and "2.5 % per side" in why


def test_c3_counts_only_what_reading_further_adds():
    """SSMLoRA leads LoRA by 0.10 at its training length and by the same 0.10 read 4x further: C3's point is the
    difference in differences, 0, so the lead it already had is not "better beyond its training length". A lead
    that grows from 0 to 0.10 when read further supports it."""
    from plots.stats import difference_in_differences

    docs, seeds = 400, 3
    lora = np.zeros((seeds, docs))
    lora[:, : docs // 2] = 1
    ssm = lora.copy()
    ssm[:, docs // 2: docs // 2 + 40] = 1  # +0.10, the same documents at both lengths
    same_lead = difference_in_differences(ssm, lora, ssm, lora)
    assert (same_lead.diff, same_lead.p_value) == (0.0, 1.0)
    grown = difference_in_differences(ssm, lora, lora, lora)
    assert grown.diff == pytest.approx(0.10) and grown.low > MARGIN
    sweep = SimpleNamespace(series=["lora", "ssmlora"])
    key = {"max_len": 512, "eval_len": 2048, "a": "ssmlora", "b": "lora"}
    rows = {r.claim: r for r in verdicts(sweep, {}, [(key, same_lead)])}
    assert rows["C3"].word == "contradicted" and rows["C3"].at == "trained 512, read 2048"
    rows = {r.claim: r for r in verdicts(sweep, {}, [({**key, "a": "lora", "b": "ssmlora"}, grown.flipped())])}
    assert rows["C3"].word == "supported" and rows["C3"].estimate.diff == pytest.approx(0.10)
    assert rows["C1"].word == rows["C2"].word == "not measured"


def test_rows_per_claim_and_control_and_the_table():
    eq, gap = _planted(0.0), _planted(0.10)
    sweep = SimpleNamespace(series=["lora", "ssmlora", "lora-at-ssmlora-lr"])
    trained = {("ssmlora", "lora"): {512: eq, 1024: gap}, ("ssmlora", "lora-at-ssmlora-lr"): {512: eq, 1024: eq}}
    extrapolated = [({"max_len": 512, "eval_len": 1024, "a": "lora", "b": "ssmlora"}, gap),
                    ({"max_len": 512, "eval_len": 2048, "a": "lora", "b": "ssmlora"}, eq),
                    ({"max_len": 512, "eval_len": 4096, "a": "lora", "b": "ssmlora"}, eq)]
    rows = verdicts(sweep, trained, extrapolated)
    assert [(r.claim, r.comparison, r.word) for r in rows] == [
        ("C1", "ssmlora - lora", "contradicted"), ("C2", "ssmlora - lora", "supported"),
        ("C2", "ssmlora - lora-at-ssmlora-lr", "contradicted"), ("C3", "ssmlora - lora", "contradicted"),
        ("C3", "ssmlora - lora-at-ssmlora-lr", "not measured")]
    assert rows[3].estimate.diff == pytest.approx(-0.10)  # computed as lora - ssmlora, turned round
    # smallest detectable: (z(1 - 0.05/2m) + z(0.8)) x SE, 2.80 for one point, 3.24 for C3's three
    assert rows[1].at == "L=1024" and rows[1].points == 1 and rows[1].detectable() == pytest.approx(
        2.8016 * (gap.high - gap.low) / 3.9199, rel=1e-3)
    assert rows[3].points == 3 and rows[3].detectable() == pytest.approx(
        3.2357 * (gap.high - gap.low) / 3.9199, rel=1e-3)
    assert rows[0].estimate is gap and rows[2].detectable() == pytest.approx(3 / 400)  # twins: the 3/n floor
    assert rows[4].estimate is None and rows[4].why.startswith("no read beyond the training length")
    lines = table_lines(rows, "")
    assert lines[0].startswith("| claim | comparison | estimate | 95 % interval |") and len(lines) == 2 + 5 + 2
    assert "| **supported** |" in lines[3] and "| **not measured** |" in lines[6]


def test_a_listed_difference_needs_the_corrected_test_to_agree():
    """The report's list of paired differences: an interval excluding 0 with a Holm-corrected p of 0.08 states
    no difference; with 0.01 it does."""
    edge = PairedDifference(0.06, 0.01, 0.11, 0.02, 200, 3)
    assert edge.describe("a", "b", 0.08).startswith("a vs b: no difference stated: the interval excludes 0 but the "
                                                    "corrected test does not agree (95 % CI [+0.010, +0.110]")
    assert edge.describe("a", "b", 0.01).startswith("a is 0.060 higher in accuracy than b (95 % CI [+0.010, +0.110], "
                                                    "sign-flip p = 0.02, Holm-corrected 0.01")


def test_the_report_opens_with_the_verdict_table(tmp_path):
    """A sweep without predictions.csv (the fixture): every claim is there, each with its word and why."""
    import shutil
    from pathlib import Path

    from plots import make_report

    folder = tmp_path / "three"
    shutil.copytree(Path(__file__).parent / "fixtures" / "sweep_three_seeds", folder)
    make_report(folder)
    report = (folder / "report.md").read_text()
    lines = report.split("## Summary")[0].splitlines()
    assert lines[4] == "## Verdict" and lines[6].startswith("| claim | comparison | estimate |")
    rows = [line for line in lines if line.startswith("| C")]
    assert [r.split("|")[1].strip()[:2] for r in rows] == ["C1", "C2", "C3"]
    assert all("**not measured**" in r for r in rows)
    assert "sign-flip p, Holm-corrected over the points of the row" in report.split("## Summary")[0]


def test_every_ssmlora_reading_gets_its_rows():
    """A sweep of ssmlora:depth and ssmlora:scan (no plain ssmlora) is judged per reading, not left empty; a
    control is compared only with the entry it is matched to."""
    gap = _planted(0.10)
    sweep = SimpleNamespace(series=["lora", "ssmlora:depth", "ssmlora:scan", "lora-at-ssmlora-lr"],
                            matched={"lora-at-ssmlora-lr": "ssmlora:depth"})
    key = {"max_len": 512, "eval_len": 2048, "b": "lora"}
    rows = verdicts(sweep, {}, [({**key, "a": "ssmlora:depth"}, gap), ({**key, "a": "ssmlora:scan"}, gap)])
    assert [(r.claim, r.comparison) for r in rows] == [
        ("C1", "ssmlora:depth - lora"), ("C1", "ssmlora:scan - lora"), ("C2", "ssmlora:depth - lora"),
        ("C2", "ssmlora:scan - lora"), ("C2", "ssmlora:depth - lora-at-ssmlora-lr"), ("C3", "ssmlora:depth - lora"),
        ("C3", "ssmlora:scan - lora"), ("C3", "ssmlora:depth - lora-at-ssmlora-lr")]
    assert [r.word for r in rows if r.claim == "C3"] == ["supported", "supported", "not measured"]


def test_a_claim_decided_at_a_ceiling_or_at_chance_does_not_count():
    from plots.stats import PairedDifference
    from plots.verdict import verdict_row

    def c1(rates, chance=0.2):
        d = PairedDifference(0.0, -0.01, 0.012, 1.0, 600, 3, rates=rates)
        return verdict_row("C1", "ssmlora", "lora", {("ssmlora", "lora"): {512: d}}, [], chance)

    assert c1((0.50, 0.50)).word == "supported"
    top = c1((0.99, 0.985))
    assert top.word == "inconclusive" and "decided at a ceiling" in top.why and "otherwise supported" in top.why
    low = c1((0.21, 0.22))
    assert low.word == "inconclusive" and "chance" in low.why and "majority-class rate 0.20" in low.why
    gain = PairedDifference(0.2, 0.1, 0.3, 1e-4, 600, 3, rates=(0.99, 0.98, 0.5, 0.6))  # C3 at a ceiling read long
    key = {"max_len": 512, "eval_len": 2048, "a": "ssmlora", "b": "lora"}
    assert verdict_row("C3", "ssmlora", "lora", {}, [(key, gain)]).word == "supported"  # not every rate is high
