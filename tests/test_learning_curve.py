"""Validation learning curves: a tune-only run with --val-every draws them from metrics.csv, test split sealed;
a sweep whose cells validated during training gets the figure in its report."""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pandas as pd
import pytest

from plots.learning_curve import learning_curve_figure, load_curves
from ssmlora.sweep.cli import main
from tiny_models import tiny_sweep_env

SIZES = {"n_train": 32, "n_validation": 16, "n_test": 16}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return tiny_sweep_env(tmp_path_factory.mktemp("curve"), [64], **SIZES)


def _common(env) -> list[str]:
    return ["--preset", "full", "--methods", "lora,ssmlora", "--seeds", "0", "--model", str(env["bert"]), "--cache-dir",
            str(env["cache"]), "--n-train", "32", "--n-validation", "16", "--n-test", "16", "--max-steps", "4",
            "--tokens-per-step", "256", "--lengths", "64", "--in-process", "--probe-examples", "32"]


def _args(env, out, *extra) -> list[str]:
    return [*_common(env), "--out", str(out), "--name", "c", "--val-every", "2", *extra]


def test_tune_only_draws_the_trials_curves_from_validation_alone(env, tmp_path, monkeypatch, capsys):
    opened = []
    monkeypatch.setattr(L.Trainer, "test", lambda *a, **k: opened.append(1))
    assert main(_args(env, tmp_path, "--tune", "lr", "--tune-grid", "1e-4,1e-2", "--tune-only")) == 0
    assert not opened  # the test split stays sealed
    folder = tmp_path / "c"
    assert f"learning curves: {folder / 'tune' / 'learning_curve.png'}" in capsys.readouterr().out
    curves = load_curves(folder)
    assert set(curves["source"]) == {"trial"} and set(curves["series"]) == {"lora", "ssmlora"}
    assert sorted(set(curves["lr"])) == [1e-4, 1e-2] and sorted(set(curves["step"])) == [0, 2, 4]
    # step 0 is the head the probe fitted, before any update: both methods' adapters start as the identity, so
    # every trial starts from the same validation score whatever its rate
    start = curves[curves["step"] == 0]
    assert len(start) == 4 and start["val_acc"].nunique() == 1
    np.testing.assert_allclose(start["val_loss"], start["val_loss"].iloc[0], rtol=1e-5)
    # each point is the trial's own metrics.csv: step and validation score as Lightning logged them
    logged = pd.read_csv(folder / "tune" / "lora-L64-s0-lr0.01" / "metrics.csv").dropna(subset=["val_acc"])
    # step 0 before training; the last: the trial re-scores its best checkpoint
    assert list(logged["val_after_steps"]) == [0, 2, 4, 4]
    logged = logged.iloc[:3]
    mine = curves[(curves["series"] == "lora") & (curves["lr"] == 1e-2)].sort_values("step")
    np.testing.assert_allclose(mine["val_acc"], logged["val_acc"])
    assert list(mine["step"]) == [0, 2, 4]
    fig = learning_curve_figure(curves, "about")
    drawn = {line.get_gid(): line for ax in fig.axes for line in ax.get_lines()}
    np.testing.assert_allclose(drawn["acc:lora@L64@lr0.01"].get_ydata(), logged["val_acc"])
    np.testing.assert_allclose(drawn["loss:lora@L64@lr0.01"].get_ydata(), logged["val_loss"])
    assert [ax.get_xlabel() for ax in fig.axes] == ["optimizer step", "optimizer step"]
    assert (folder / "tune" / "learning_curve.png").stat().st_size > 0


def test_a_sweep_that_validates_during_training_gets_the_figure(env, tmp_path):
    assert main(_args(env, tmp_path, "--methods", "lora")) == 0
    folder = tmp_path / "c"
    curves = load_curves(folder)
    assert set(curves["source"]) == {"cell"} and sorted(set(curves["step"])) == [0, 2, 4]
    report = (folder / "report.md").read_text()
    assert "![learning curve](plots/learning_curve.png)" in report and (folder / "plots" / "learning_curve.svg").exists()
    assert json.loads((folder / "config.json").read_text())["config"]["optim"]["val_every"] == 2


def test_no_validation_during_training_no_curves(tmp_path):
    assert load_curves(tmp_path).empty


def _budget_search():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "experiments" / "budget_search.py"
    spec = importlib.util.spec_from_file_location("budget_search", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_budget_search_reads_each_budgets_validation_curves(env, tmp_path, monkeypatch):
    search = _budget_search()
    opened = []
    monkeypatch.setattr(L.Trainer, "test", lambda *a, **k: opened.append(1))
    assert search.main([*_common(env), "--methods", "lora", "--tune-grid", "1e-2", "--val-every", "2", "--out",
                        str(tmp_path / "b"), "--budget", "base=", "--budget", "flat=--schedule constant"]) == 0
    assert not opened
    table = pd.read_csv(tmp_path / "b" / "budget_search.csv")
    assert list(table["budget"]) == ["base", "flat"] and set(table["steps"]) == {4}
    assert table["acc_step0"].nunique() == 1  # both start from the same probe head on the same documents
    for row in table.itertuples():  # each row is its own sweep folder's curve
        curve = load_curves(tmp_path / "b" / row.budget).sort_values("step")
        assert list(curve["step"]) == [0, 2, 4]
        assert row.acc_last == pytest.approx(curve["val_acc"].iloc[-1])
        assert row.gain_last == pytest.approx(curve["val_acc"].iloc[-1] - curve["val_acc"].iloc[0])
    flat = json.loads((tmp_path / "b" / "flat" / "config.json").read_text())["config"]
    assert flat["optim"]["schedule"] == "constant" and flat["tune"]["tune_only"] and flat["optim"]["val_every"] == 2
    assert "| flat | " in (tmp_path / "b" / "budget_search.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--budget", "no-equals-sign"], "expected NAME=FLAGS"),
    (["--budget", "a=", "--budget", "a=--schedule constant"], "names must differ"),
    (["--budget", "a=", "--tune-only"], "--tune-only is set by the search itself"),
])
def test_budget_search_refuses_bad_budgets(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        _budget_search().main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err
