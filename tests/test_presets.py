"""Presets and the estimate before the cells: the cost model against the reference machine's measured cells,
the calibration's fit, `--dry-run`'s table, a preset under explicit flags, and what config.json records."""

from __future__ import annotations

import json

import pytest

from ssmlora.sweep import cli, presets
from ssmlora.sweep.config import SweepConfig
from ssmlora.sweep.estimate import Calibration, calibration_lengths, cell_seconds, prep_seconds
from test_sweep import env, tiny_args  # noqa: F401  (the module's tiny backbone and data cache)

# The reference machine (2-core AMD EPYC, MiniLM, topic-mix, bf16-mixed): seconds per test document, and the
# measured cells at 0 and 15 steps and preparation steps at 512-4096 (docs/tuning-notes.md, "What a verdict costs")
REFERENCE = Calibration((512, 2048), (0.05, 0.33), "cpu")
MEASURED = {512: (25, 85, 31), 1024: (25, 115, 51), 2048: (32, 160, 100), 4096: (69, 254, 320)}


@pytest.mark.parametrize("length", sorted(MEASURED))
def test_the_cost_model_reproduces_the_reference_cells(length):
    idle, trained, prep = MEASURED[length]
    cfg = SweepConfig.from_flat(methods=["lora"], lengths=[length])
    cell = cfg.cell("lora", length, 0)
    assert cell_seconds(cell, REFERENCE) == pytest.approx(trained, rel=0.15)
    cfg0 = SweepConfig.from_flat(methods=["lora"], lengths=[length], max_steps=0)
    assert cell_seconds(cfg0.cell("lora", length, 0), REFERENCE) == pytest.approx(idle, rel=0.15)
    assert prep_seconds(cell, [0, 1, 2], REFERENCE) == pytest.approx(prep, rel=0.15)


def test_the_calibration_fits_a_linear_and_a_quadratic_part():
    a, b = 3e-5, 5e-8
    t = lambda L: a * L + b * L * L  # noqa: E731
    cal = Calibration((512, 2048), (t(512), t(2048)), "cpu")
    for length in (256, 1024, 4096, 32768):
        assert cal.per_document(length) == pytest.approx(t(length), rel=1e-9)
    # one length: linear through it; a curve bending down (timing noise) keeps b at 0
    assert Calibration((64,), (0.02,), "cpu").per_document(128) == pytest.approx(0.04)
    bent = Calibration((512, 2048), (0.1, 0.2), "cpu")
    assert bent.per_document(4096) == pytest.approx(0.1 / 512 * 4096)
    assert calibration_lengths([512, 1024, 4096]) == (512, 2048)
    assert calibration_lengths([64, 128]) == (64, 128) and calibration_lengths([4096, 8192]) == (4096,)


def test_dry_run_prints_the_preset_cells_estimate_and_table(env, tmp_path, capsys):  # noqa: F811
    code = cli.main([*tiny_args(env, tmp_path), "--lengths", "64,128", "--dry-run"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0].startswith("preset full: 4 cells, 4 to run, estimated ") and "on cpu" in out[0]
    header, *rows = out[1:6]
    assert header.split() == ["minutes", "64", "128", "seeds"]
    table = {r.split()[0]: r.split()[1:] for r in rows}
    assert set(table) == {"lora", "ssmlora", "preparation", "total"}
    assert table["lora"][-1] == "0" and all(float(m) > 0 for m in table["lora"][:2])
    assert out[-1].startswith("sweep folder: ")
    assert not (tmp_path / "s" / "cells").exists()  # nothing trained


def test_a_preset_fills_defaults_and_every_given_flag_wins(monkeypatch, capsys):
    monkeypatch.setitem(presets.PRESETS, "small", presets.Preset("small", "for the test",
                                                                  {"seeds": [1], "max_steps": 3}))
    args = cli.parse_args(["--preset", "small"])
    assert (args.preset, args.seeds, args.max_steps) == ("small", [1], 3)
    args = cli.parse_args(["--preset", "small", "--seeds", "0,2"])
    assert (args.seeds, args.max_steps) == ([0, 2], 3)
    assert cli.parse_args([]).preset == presets.DEFAULT_PRESET
    with pytest.raises(SystemExit) as stop:
        cli.parse_args(["--preset", "nope"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "--preset: invalid choice: 'nope'" in err


def test_on_a_cuda_device_a_smaller_preset_says_what_full_adds(env, tmp_path, capsys, monkeypatch):  # noqa: F811
    monkeypatch.setitem(presets.PRESETS, "small", presets.Preset("small", "for the test", {"seeds": [0]}))
    monkeypatch.setattr(cli, "calibrate_in_process", lambda cell, lengths: Calibration((64,), (0.01,), "gpu"))
    argv = [a for a in tiny_args(env, tmp_path) if a not in ("--seeds", "0")]
    assert cli.main([*argv, "--lengths", "64", "--preset", "small", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("preset small: 2 cells")
    assert out[1].startswith("this machine has a CUDA device: --preset full would add 4 cells")


def test_a_run_records_its_plan_and_a_resume_estimates_what_is_left(env, tmp_path, capsys):  # noqa: F811
    argv = [*tiny_args(env, tmp_path), "--lengths", "64", "--methods", "lora", "--in-process"]
    assert cli.main(argv) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("preset full: 1 cells, 1 to run, estimated ")
    plan = json.loads((tmp_path / "s" / "config.json").read_text())["plan"]
    assert (plan["preset"], plan["cells"], plan["to_run"]) == ("full", 1, 1)
    assert plan["estimate"]["total_s"] > 0 and list(plan["estimate"]["cells_s"]) == ["lora-L64-s0"]
    assert cli.main(argv) == 0  # resumed: nothing left to run
    assert capsys.readouterr().out.splitlines()[0].startswith("preset full: 1 cells, 0 to run, estimated 0 s")
    assert json.loads((tmp_path / "s" / "config.json").read_text())["plan"]["to_run"] == 0
    from ssmlora.sweep.launch import calibrate_in_process

    cell = SweepConfig.from_flat(model=str(env["bert"]), methods=["lora"], lengths=[64]).cell("lora", 64, 0)
    first = calibrate_in_process(cell, [64, 128])
    assert calibrate_in_process(cell, [64, 128]) is first  # once per process and settings
    assert first.lengths == (64, 128) and all(t > 0 for t in first.seconds)


def test_a_calibration_that_fails_leaves_the_run_without_an_estimate(env, tmp_path, capsys, monkeypatch):  # noqa: F811
    def broken(cell, lengths):
        raise RuntimeError("Error while deserializing header: header too large")

    monkeypatch.setattr(cli, "calibrate_in_process", broken)
    assert cli.main([*tiny_args(env, tmp_path), "--lengths", "64", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("preset full: 2 cells, 2 to run, no estimate (the calibration failed: Error while "
                      "deserializing header: header too large)")


# ---------------------------------------------------------------- the CPU design: train short, read long, cost apart

@pytest.mark.slow
def test_the_cpu_design_trains_short_reads_long_and_measures_cost_apart(env, tmp_path):  # noqa: F811
    """--preset cpu's shape on a tiny sweep: accuracy cells at the shortest length only, their first --read-docs
    documents read at 2x, cost cells (no test, --cost-steps steps) at every length; the report's cost figures
    and table come from the cost cells and C2 says what the full grid would cost."""
    import csv

    from plots.data import load_sweep

    argv = [*tiny_args(env, tmp_path), "--preset", "cpu", "--methods", "lora,ssmlora", "--seeds", "0,1",
            "--lengths", "64,128", "--eval-lengths", "2x", "--n-test", "8", "--read-docs", "5", "--max-steps", "2",
            "--cost-steps", "2", "--in-process"]
    assert cli.main(argv) == 0
    rows = list(csv.DictReader(open(tmp_path / "s" / "results.csv")))
    accuracy = sorted((r["variant"], int(r["max_len"]), int(r["seed"])) for r in rows if r["role"] == "accuracy")
    cost = sorted((r["variant"], int(r["max_len"]), int(r["seed"])) for r in rows if r["role"] == "cost")
    assert accuracy == [("lora", 64, 0), ("lora", 64, 1), ("ssmlora", 64, 0), ("ssmlora", 64, 1)]
    assert cost == [("lora", 64, 0), ("lora", 128, 0), ("ssmlora", 64, 0), ("ssmlora", 128, 0)]
    for r in rows:
        assert r["status"] == "ok"
        if r["role"] == "cost":
            assert r["accuracy"] == r["n_test"] == r["probe_accuracy"] == "" and int(r["train_steps"]) == 2
            assert float(r["train_peak_mb"]) > 0 and float(r["step_time_s"]) > 0
        else:
            assert int(r["n_test"]) == 8 and r["probe_accuracy"] != ""
    assert (tmp_path / "s" / "cells" / "lora-L128-s0-cost").is_dir()
    reads = list(csv.DictReader(open(tmp_path / "s" / "extrapolation.csv")))
    assert {(int(r["eval_len"]), int(r["n"])) for r in reads} == {(64, 8), (128, 5)}
    sweep = load_sweep(tmp_path / "s")
    assert sweep.lengths == [64] and sweep.costs().lengths == [64, 128]
    report = (tmp_path / "s" / "report.md").read_text()
    assert "### Cost cells" in report and "4 cost cells" in report
    c2 = [line for line in report.splitlines() if line.startswith("| C2")]
    assert c2 and all("**not measured**" in line and "needs --preset full" in line and "more cells, about" in line
                      for line in c2)
    assert any(line.startswith("| C3") and "trained 64, read 128" in line for line in report.splitlines())


def test_the_default_is_the_cpu_preset_with_cost_rows_in_its_table(tmp_path, capsys):
    assert cli.main(["--max-len", "4096", "--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("preset cpu: 20 cells, 20 to run, estimated ")
    table = {line.rsplit("  ", 1)[0].split("  ")[0].strip(): line for line in out[1:9]}
    assert "lora (cost)" in table and "ssmlora (cost)" in table
    assert table["lora"].split()[1:5] != ["-"] * 4 and table["lora"].split()[2:5] == ["-", "-", "-"]
    assert table["lora (cost)"].split()[2:6] != ["-"] * 4 and table["lora (cost)"].endswith("0")


def test_a_cost_cell_costs_its_steps_and_nothing_scored():
    cfg = SweepConfig.from_flat(methods=["lora"], lengths=[512, 4096], train_at="shortest", cost_methods=["lora"],
                                cost_steps=4, eval_lengths=["2x"], read_docs=100)
    cost, trained = cfg.cell("lora", 4096, 0, "cost"), cfg.cell("lora", 512, 0)
    t = REFERENCE.per_document
    assert cell_seconds(cost, REFERENCE) == pytest.approx(15 + 4 * 6 * 2 * t(4096))
    assert cell_seconds(trained, REFERENCE) == pytest.approx(15 + 15 * 6 * 16 * t(512) + 200 * t(512)
                                                             + 100 * t(1024))
    assert prep_seconds(cost, [0], REFERENCE) == pytest.approx(10)  # data only: a cost cell has no probe
    assert [c.tag() for c in cfg.cells()] == ["lora-L512-s0", "lora-L512-s1", "lora-L512-s2", "lora-L512-s0-cost",
                                              "lora-L4096-s0-cost"]


def test_repeated_inputs_are_scored_once(monkeypatch):
    """Two documents that are the same tokens at L are one unit of inference: the scored subset keeps the
    first; documents differing anywhere stay, in their order."""
    from datasets import Dataset

    from ssmlora.lab.data import DataConfig, build_splits, distinct_inputs

    split = Dataset.from_dict({"input_ids": [[1, 2, 3], [1, 2, 4], [1, 2, 3], [5], [1, 2, 4]],
                               "doc_id": ["a", "b", "c", "d", "e"]})
    assert distinct_inputs(split)["doc_id"] == ["a", "b", "d"]
    unique = split.select([0, 1, 3])
    assert distinct_inputs(unique) is unique

    task = {"train": split, "validation": split, "test": split}
    monkeypatch.setattr("ssmlora.lab.data.task_data", lambda cfg, max_len, tokenizer, into=None: dict(task))
    built = build_splits(DataConfig(min_eval=10, eval_tokens=1), 64, "tok")
    assert built["test"]["doc_id"] == ["a", "b", "d"] and len(built["train"]) == 5
    assert len(built["validation"]) == 5  # selection's split is scored whole: a repeat there decides nothing
    built = build_splits(DataConfig(min_eval=2, eval_tokens=1), 64, "tok")
    assert sorted(built["test"]["doc_id"]) in (["a", "b"], ["a", "d"], ["b", "d"])  # the repeat never counts
