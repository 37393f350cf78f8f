"""`--methods METHOD:VARIANT` and `--eval-lengths`: a tiny sweep end to end, extrapolation.csv, the figure, and
every bad input as one line with exit code 2 before training."""

from __future__ import annotations

import csv

import pytest

from ssmlora.arch import FAMILIES, Family
from ssmlora.lab.backbone import save_tiny_backbone
from ssmlora.lab.data import DataConfig
from ssmlora.results import EXTRAPOLATION_COLUMNS, wilson_interval
from tiny_models import tiny_sweep_env

SIZES = {"n_train": 16, "n_validation": 4, "n_test": 8}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return tiny_sweep_env(tmp_path_factory.mktemp("extrapolation"), [64, 128, 256], **SIZES)


def tiny_args(env, out, *extra) -> list[str]:
    return ["--model", str(env["bert"]), "--task", "topic-mix", "--cache-dir", str(env["cache"]),
            "--n-train", "16", "--n-validation", "4", "--n-test", "8", "--max-steps", "2",
            "--tokens-per-step", "256", "--lr", "5e-3", "--out", str(out), "--name", "s", *extra]


def rows_of(path):
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_variants_and_extrapolation_end_to_end(env, tmp_path, capsys):
    from ssmlora.sweep.cli import main

    code = main(tiny_args(env, tmp_path, "--methods", "lora,ssmlora:depth,ssmlora:scan", "--lengths", "64",
                          "--eval-lengths", "2x,4x", "--in-process"))
    assert code == 0, capsys.readouterr().err
    folder = tmp_path / "s"
    results = rows_of(folder / "results.csv")
    assert sorted((r["method"], r["ssm_mode"]) for r in results) == [("lora", ""), ("ssmlora", "depth"),
                                                                      ("ssmlora", "scan")]
    params = {r["ssm_mode"]: int(r["adapter_params"]) for r in results}
    assert params["scan"] != params["depth"]  # each cell built its own variant (scan: r^2 + r, depth: 2 r^2)
    assert {p.name for p in (folder / "cells").iterdir()} == {"lora-L64-s0", "ssmlora-depth-L64-s0",
                                                              "ssmlora-scan-L64-s0"}
    rows = rows_of(folder / "extrapolation.csv")
    assert list(rows[0]) == list(EXTRAPOLATION_COLUMNS)
    by_method = {}
    for r in rows:
        by_method.setdefault((r["method"], r["ssm_mode"]), []).append(r)
    assert set(by_method) == {("lora", ""), ("ssmlora", "depth"), ("ssmlora", "scan")}
    for key, group in by_method.items():
        assert [int(r["eval_len"]) for r in group] == [64, 128, 256], key
        assert {int(r["train_len"]) for r in group} == {64}
        assert len({r["n"] for r in group}) == 1  # the same documents at every eval length
        for r in group:
            acc, low, high = float(r["accuracy"]), float(r["interval_low"]), float(r["interval_high"])
            assert 0 <= low <= acc <= high <= 1
            assert (low, high) == pytest.approx(wilson_interval(round(acc * int(r["n"])), int(r["n"])), abs=1e-6)
        # eval_len == L is the cell's own test score
        own = next(x for x in results if (x["method"], x["ssm_mode"]) == key)
        assert float(group[0]["accuracy"]) == pytest.approx(float(own["accuracy"]), abs=1e-6)
    assert (folder / "plots" / "accuracy_vs_eval_length.png").exists()
    report = (folder / "report.md").read_text()
    assert "## Length extrapolation" in report and "| ssmlora:scan | 64 | 256 |" in report


def test_wilson_interval_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for k, n in [(0, 5), (3, 8), (8, 10), (50, 50), (412, 1000)]:
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_eval_lengths_resolve_per_train_length():
    cfg = DataConfig(eval_lengths=["2x", "4x", "8192", "512"])
    assert cfg.eval_lengths_for(512) == [1024, 2048, 8192]  # the train length itself is the cell's own score
    assert DataConfig().eval_lengths_for(512) == []
    with pytest.raises(ValueError, match=r"^1024 tokens is below the train length 2048"):
        DataConfig(eval_lengths=["1024"]).eval_lengths_for(2048)
    with pytest.raises(ValueError, match=r"^'twice' is neither a multiple of L \(2x\) nor a length in tokens"):
        DataConfig(eval_lengths=["twice"]).eval_lengths_for(512)


def _undecided_bert(monkeypatch):
    monkeypatch.setitem(FAMILIES, "bert", Family("bert", FAMILIES["bert"].roles, FAMILIES["bert"].heads))
    return ()


@pytest.mark.parametrize("extra, message", [
    (("--methods", "lora,ssmlora:foo"),
     "error: --methods ssmlora:foo: ssm_mode 'foo' is not allowed: choose one of depth, carry, scan"),
    (("--methods", "lora:scan"), "error: --methods lora:scan: method 'lora' has no variants: write it as 'lora'"),
    (("--methods", "ssmlora,ssmlora:depth"),
     "error: --methods ssmlora and ssmlora:depth are the same cells (ssm_mode depth); keep one of them"),
    (("--methods", "ssmlora:scan", "--scan-direction", "up"),
     "error: --scan-direction up: choose one of auto, causal, bidirectional"),
    (("--lengths", "128", "--eval-lengths", "64"),
     "error: --eval-lengths 64: 64 tokens is below the train length 128: an extrapolation reads further than "
     "training did"),
    (("--lengths", "64", "--eval-lengths", "1024x"),
     "error: --eval-lengths 1024x: 65536 tokens is beyond what"),
    (("--task", "needle", "--lengths", "64", "--eval-lengths", "2x"),
     "error: --eval-lengths: task 'needle' builds other documents at every length"),
    ("undecided", "error: --methods ssmlora:scan: scan_direction auto cannot tell whether 'bert' reads its input "
                  "causally"),
    ("fixed", "error: --eval-lengths 2x: 128 tokens is beyond what"),
    # --ssm-mode scan for plain ssmlora: lora has no direction to decide, so the error names ssmlora
    ("undecided-global", "error: --methods ssmlora: scan_direction auto cannot tell whether 'bert'"),
])
def test_bad_input_is_one_line_and_exit_2(env, tmp_path, capsys, monkeypatch, extra, message):
    from ssmlora.sweep.cli import main

    if extra == "undecided":
        _undecided_bert(monkeypatch)
        extra = ("--methods", "ssmlora:scan")
    if extra == "undecided-global":
        _undecided_bert(monkeypatch)
        extra = ("--methods", "lora,ssmlora", "--ssm-mode", "scan")
    if extra == "fixed":  # llama positions are not extended: 64 is its limit
        llama = save_tiny_backbone(tmp_path / "llama", "llama", max_positions=64)
        env = {**env, "bert": llama}
        extra = ("--lengths", "64", "--eval-lengths", "2x")
    capsys.readouterr()
    assert main(tiny_args(env, tmp_path, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "s" / "cells").exists()  # nothing was trained
