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
    monkeypatch.setattr(cli, "calibrate", lambda cell, lengths: Calibration((64,), (0.01,), "gpu"))
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


def test_a_calibration_that_fails_leaves_the_run_without_an_estimate(env, tmp_path, capsys, monkeypatch):  # noqa: F811
    def broken(cell, lengths):
        raise RuntimeError("Error while deserializing header: header too large")

    monkeypatch.setattr(cli, "calibrate", broken)
    assert cli.main([*tiny_args(env, tmp_path), "--lengths", "64", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("preset full: 2 cells, 2 to run, no estimate (the calibration failed: Error while "
                      "deserializing header: header too large)")
