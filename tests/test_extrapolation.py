"""`--methods METHOD:VARIANT` and `--eval-lengths`: a tiny sweep end to end, extrapolation.csv, the figure, and
every bad input as one line with exit code 2 before training."""

from __future__ import annotations

import csv

import pytest

from plots.extrapolation import DIFFERENCE_COLUMNS
from results import EXTRAPOLATION_COLUMNS, wilson_interval
from ssmlora.arch import FAMILIES, Family
from ssmlora.lab.backbone import save_tiny_backbone
from ssmlora.lab.data import DataConfig
from tiny_models import tiny_sweep_env

SIZES = {"n_train": 16, "n_validation": 4, "n_test": 8}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return tiny_sweep_env(tmp_path_factory.mktemp("extrapolation"), [64, 128, 256], **SIZES)


def tiny_args(env, out, *extra) -> list[str]:
    return ["--preset", "full", "--methods", "lora,ssmlora", "--seeds", "0", "--model", str(env["bert"]), "--task",
            "topic-mix",
            "--cache-dir", str(env["cache"]), "--n-train", "16", "--n-validation", "4", "--n-test", "8",
            "--max-steps", "2", "--tokens-per-step", "256", "--lr", "5e-3", "--out", str(out), "--name", "s", *extra]


def rows_of(path):
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_variants_and_extrapolation_end_to_end(env, tmp_path, capsys):
    from ssmlora.sweep.cli import main

    code = main(tiny_args(env, tmp_path, "--methods", "lora,ssmlora:depth,ssmlora:scan", "--lengths", "64",
                          "--eval-lengths", "2x,4x", "--in-process", "--seeds", "0,1",
                          "--lr", "lora=5e-3,ssmlora=4e-3,ssmlora:scan=3e-3"))
    assert code == 0, capsys.readouterr().err
    folder = tmp_path / "s"
    results = rows_of(folder / "results.csv")
    assert sorted((r["method"], r["ssm_mode"], r["seed"]) for r in results) == [
        ("lora", "", "0"), ("lora", "", "1"), ("ssmlora", "depth", "0"), ("ssmlora", "depth", "1"),
        ("ssmlora", "scan", "0"), ("ssmlora", "scan", "1")]
    # --lr: the variant's key overrides its method's, which serves the other variant
    assert {r["ssm_mode"] or r["method"]: float(r["lr"]) for r in results} == {"lora": 5e-3, "depth": 4e-3,
                                                                              "scan": 3e-3}
    params = {r["ssm_mode"]: int(r["adapter_params"]) for r in results}
    assert params["scan"] != params["depth"]  # each cell built its own variant (scan: r^2 + r, depth: 2 r^2)
    assert {p.name for p in (folder / "cells").iterdir()} == {f"{m}-L64-s{s}" for m in (
        "lora", "ssmlora-depth", "ssmlora-scan") for s in (0, 1)}
    rows = rows_of(folder / "extrapolation.csv")
    assert list(rows[0]) == list(EXTRAPOLATION_COLUMNS)
    by_cell = {}
    for r in rows:
        by_cell.setdefault((r["method"], r["ssm_mode"], r["seed"]), []).append(r)
    assert len(by_cell) == 6
    for key, group in by_cell.items():
        assert [int(r["eval_len"]) for r in group] == [64, 128, 256], key
        assert {int(r["max_len"]) for r in group} == {64}
        assert len({r["n"] for r in group}) == 1  # the same documents at every eval length
        for r in group:
            acc, low, high = float(r["accuracy"]), float(r["interval_low"]), float(r["interval_high"])
            assert 0 <= low <= acc <= high <= 1
            assert (low, high) == pytest.approx(wilson_interval(round(acc * int(r["n"])), int(r["n"])), abs=1e-6)
        # eval_len == L is the cell's own test score
        own = next(x for x in results if (x["method"], x["ssm_mode"], x["seed"]) == key)
        assert float(group[0]["accuracy"]) == pytest.approx(float(own["accuracy"]), abs=1e-6)

    # per-document predictions at every eval length: the same documents, in the same order, for every method and
    # seed, and each file's accuracy is its extrapolation.csv row's
    docs = {}
    for (method, mode, seed), group in by_cell.items():
        cell = folder / "cells" / f"{method}{'-' + mode if mode else ''}-L64-s{seed}"
        for r in group:
            length = int(r["eval_len"])
            lines = rows_of(cell / ("predictions.csv" if length == 64 else f"predictions-L{length}.csv"))
            assert list(lines[0]) == ["doc_id", "label", "prediction", "p_pred", "p_true"]
            docs.setdefault(length, set()).add(tuple(x["doc_id"] for x in lines))
            right = sum(x["label"] == x["prediction"] for x in lines)
            assert (len(lines), right) == (int(r["n"]), round(float(r["accuracy"]) * int(r["n"])))
    assert sorted(docs) == [64, 128, 256] and all(len(v) == 1 for v in docs.values())
    assert len(docs[64] | docs[128] | docs[256]) == 1 and len(next(iter(docs[256]))) == 8

    assert (folder / "plots" / "accuracy_vs_eval_length.png").exists()
    report = (folder / "report.md").read_text()
    assert "## Length extrapolation" in report and "| ssmlora:scan | 64 | 256 |" in report
    # the train-length differences find the variants' cells too (cells/ssmlora-scan-..., not cells/ssmlora-...)
    assert "- L=64: ssmlora:scan vs lora: " in report or "- L=64: ssmlora:scan is " in report
    # the paired differences: every pair of methods at every (train, eval) length, and each method read further
    # against itself at its train length, over both seeds
    differences = rows_of(folder / "extrapolation_differences.csv")
    assert list(differences[0]) == list(DIFFERENCE_COLUMNS)
    compared = {(int(d["eval_len"]), d["a"], d["b"], int(d["b_eval_len"])) for d in differences}
    pairs = {("ssmlora:depth", "lora"), ("ssmlora:scan", "lora"), ("ssmlora:scan", "ssmlora:depth")}
    assert compared == {(e, a, b, e) for e in (64, 128, 256) for a, b in pairs} | {
        (e, s, s, 64) for e in (128, 256) for s in ("lora", "ssmlora:depth", "ssmlora:scan")}
    assert all(int(d["n_seeds"]) == 2 and int(d["n_docs"]) == 8 for d in differences)
    for d in differences:
        assert float(d["ci_low"]) <= float(d["diff"]) <= float(d["ci_high"])
        said = "no detectable difference" if d["detected"] == "False" else "in accuracy than"
        a = d["a"] if d["a"] != d["b"] else f"{d['a']} read to {d['eval_len']}"
        assert f"- trained at 64, read to {d['eval_len']}: {a}" in report and said in report
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
     "error: --methods ssmlora and ssmlora:depth are the same cells (ssm_mode depth, r 8, lr 0.005); keep one of "
     "them"),
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
    # per-method options keyed by a variant follow the rule of --methods
    (("--lr", "lora=5e-4,ssmlora:foo=1e-4"),
     "error: --lr ssmlora:foo=...: ssm_mode 'foo' is not allowed: choose one of depth, carry, scan"),
    (("--lr", "bogus=1e-4"), "error: --lr bogus=...: unknown method 'bogus': choose one of lora, ssmlora, frozen"),
    (("--lr", "lora:scan=1e-4"), "error: --lr lora:scan=...: method 'lora' has no variants: write it as 'lora'"),
    (("--tune-grid", "ssmlora:foo=1e-5,1e-4"),
     "error: --tune-grid ssmlora:foo=...: ssm_mode 'foo' is not allowed: choose one of depth, carry, scan"),
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


@pytest.mark.slow
def test_extrapolation_differences_find_a_planted_difference_and_none_between_twins(env, tmp_path, monkeypatch):
    """tests/test_tuning.py's planted pair, read to 2x: `blind` (always class 0) is found below lora at the longer
    length too; `twin` (LoRA under another name) equals lora there, and every method equals itself read further
    (the planted documents are shorter than either length, so reading further changes nothing)."""
    from plots.data import load_sweep
    from plots.extrapolation import differences, effects
    from ssmlora.sweep.cli import main
    from test_tuning import planted_sweep_setup

    with planted_sweep_setup(monkeypatch):
        code = main(["--preset", "full", "--model", str(env["bert"]), "--cache-dir", str(tmp_path / "data"),
                     "--task", "planted",
                     "--max-steps", "1", "--tokens-per-step", "256", "--lengths", "64", "--eval-lengths", "2x",
                     "--in-process", "--out", str(tmp_path), "--name", "p", "--probe-examples", "40",
                     "--min-eval", "100", "--methods", "lora,twin,blind", "--seeds", "0"])
        assert code == 0
        found = {(k["eval_len"], k["a"], k["b"], k["b_eval_len"]): d for k, d in differences(load_sweep(tmp_path / "p"))}
        twins = found[(128, "twin", "lora", 128)]
        assert (twins.diff, twins.low, twins.high, twins.p_value) == (0.0, 0.0, 0.0, 1.0) and twins.n_docs == 40
        planted = found[(128, "blind", "lora", 128)]
        assert planted.detected and planted.high < 0 and planted.p_value < 0.01, planted
        for method in ("lora", "twin", "blind"):
            itself = found[(128, method, method, 64)]
            assert (itself.diff, itself.low, itself.high, itself.detected) == (0.0, 0.0, 0.0, False)
        report = (tmp_path / "p" / "report.md").read_text()
        assert "- trained at 64, read to 128: blind is " in report and " lower in accuracy than lora (95 % CI [" in report
        assert "- trained at 64, read to 128: twin vs lora: no detectable difference at this budget (95 % CI " \
               "[+0.000, +0.000]" in report
        assert "- trained at 64, read to 128: blind read to 128 vs blind at its train length 64: no detectable " \
               "difference" in report
        # the extrapolation effect (difference in differences): blind's deficit is the same at 64 and 128, so
        # reading further adds nothing to it, exactly
        effect = {(k["a"], k["b"]): d for k, d in effects(load_sweep(tmp_path / "p"))}
        assert set(effect) == {("twin", "lora"), ("blind", "lora"), ("twin", "blind")}
        gone = effect[("blind", "lora")]
        assert (gone.diff, gone.low, gone.high, gone.p_value, gone.n_docs) == (0.0, 0.0, 0.0, 1.0, 40)
        assert "### Extrapolation effects" in report and "- blind \u2212 lora read to 128 vs blind \u2212 lora at " \
            "its train length 64: no detectable difference" in report
        written = rows_of(tmp_path / "p" / "extrapolation_differences.csv")
        row = next(r for r in written if (r["eval_len"], r["a"], r["b"]) == ("128", "blind", "lora"))
        assert row["detected"] == "True" and float(row["ci_high"]) == pytest.approx(planted.high, abs=1e-5)
        # a file written when the cell's length was called train_len there still reads, as max_len
        from plots.extrapolation import load_extrapolation
        path = tmp_path / "p" / "extrapolation.csv"
        now = load_extrapolation(load_sweep(tmp_path / "p"))
        path.write_text(path.read_text().replace("max_len", "train_len", 1))
        assert load_extrapolation(load_sweep(tmp_path / "p")).equals(now)


def test_lr_and_tune_grid_keyed_by_a_variant():
    """A variant's key overrides its method's value; the method's key serves every variant; "*" every method."""
    from ssmlora.sweep.config import SweepConfig

    cfg = SweepConfig.from_flat(methods=["lora", "ssmlora:depth", "ssmlora:scan"], lengths=[512],
                                lr={"lora": 5e-4, "ssmlora:scan": 1e-4})
    assert [cfg.cell(m, 512, 0).lr for m in cfg.methods] == [5e-4, 5e-5, 1e-4]  # depth: ssmlora's registry default
    cfg = SweepConfig.from_flat(methods=cfg.methods, lengths=[512], lr={"*": 3e-4, "ssmlora": 2e-5})
    assert [cfg.cell(m, 512, 0).lr for m in cfg.methods] == [3e-4, 2e-5, 2e-5]
    grid = {"lora": [1e-4], "ssmlora": [1e-5, 3e-5], "ssmlora:scan": [3e-4, 1e-3]}
    cfg = SweepConfig.from_flat(methods=cfg.methods, lengths=[512], tune="lr", tune_grid=grid)
    assert [v.tune_grid for v in cfg.variants] == [(1e-4,), (1e-5, 3e-5), (3e-4, 1e-3)]


def test_tuning_selects_each_variant_on_its_own(tmp_path, monkeypatch):
    """--tune lr with ssmlora:depth and ssmlora:scan: each entry gets its own trials (its own grid) and its own
    choice, applied to its own cells (trials stubbed: their validation accuracy peaks at a known rate)."""
    from ssmlora.sweep import tune
    from ssmlora.sweep.config import SweepConfig

    best = {"lora": 1e-4, "ssmlora:depth": 3e-5, "ssmlora:scan": 1e-3}

    def trial(cell, cell_dir, probe_dir):
        return {"status": "ok", "val_acc": 1.0 if cell.lr == best[cell.label] else 0.5, "val_loss": 1.0,
                "n_validation": 4, "train_steps": 1, "wall_s": 0.0}

    monkeypatch.setattr(tune, "run_cell_safely", trial)
    methods = ["lora", "ssmlora:depth", "ssmlora:scan"]
    cfg = SweepConfig.from_flat(methods=methods, lengths=[512], tune="lr", tune_grid={
        "lora": [1e-4, 1e-3], "ssmlora": [1e-5, 3e-5], "ssmlora:scan": [1e-4, 1e-3]})
    record = tune.run_tuning(cfg, tmp_path, in_process=True, log=lambda *a, **k: None)
    assert {m: [t["lr"] for t in trials] for m, trials in record["trials"].items()} == {
        "lora": [1e-4, 1e-3], "ssmlora:depth": [1e-5, 3e-5], "ssmlora:scan": [1e-4, 1e-3]}
    assert record["chosen"] == {m: {"512": v} for m, v in best.items()}
    cells = tune.apply_choice(cfg, cfg.cells(), record)
    assert {c.label: c.lr for c in cells} == best and {c.selected_on for c in cells} == {"val@L512"}
    assert len({p.name for p in (tmp_path / "tune").iterdir()}) == 7  # six trial folders and tuning.json
