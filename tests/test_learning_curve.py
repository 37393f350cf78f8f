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


def _args(env, out, *extra) -> list[str]:
    return ["--methods", "lora,ssmlora", "--seeds", "0", "--model", str(env["bert"]), "--cache-dir",
            str(env["cache"]), "--n-train", "32", "--n-validation", "16", "--n-test", "16", "--max-steps", "4",
            "--tokens-per-step", "256", "--lengths", "64", "--in-process", "--out", str(out), "--name", "c",
            "--probe-examples", "32", "--val-every", "2", *extra]


def test_tune_only_draws_the_trials_curves_from_validation_alone(env, tmp_path, monkeypatch, capsys):
    opened = []
    monkeypatch.setattr(L.Trainer, "test", lambda *a, **k: opened.append(1))
    assert main(_args(env, tmp_path, "--tune", "lr", "--tune-grid", "1e-4,1e-2", "--tune-only")) == 0
    assert not opened  # the test split stays sealed
    folder = tmp_path / "c"
    assert f"learning curves: {folder / 'tune' / 'learning_curve.png'}" in capsys.readouterr().out
    curves = load_curves(folder)
    assert set(curves["source"]) == {"trial"} and set(curves["series"]) == {"lora", "ssmlora"}
    assert sorted(set(curves["lr"])) == [1e-4, 1e-2] and sorted(set(curves["step"])) == [2, 4]
    # each point is the trial's own metrics.csv: step and validation score as Lightning logged them
    logged = pd.read_csv(folder / "tune" / "lora-L64-s0-lr0.01" / "metrics.csv").dropna(subset=["val_acc"])
    assert list(logged["val_after_steps"]) == [2, 4, 4]  # the third: the trial re-scores its best checkpoint
    logged = logged.iloc[:2]
    mine = curves[(curves["series"] == "lora") & (curves["lr"] == 1e-2)].sort_values("step")
    np.testing.assert_allclose(mine["val_acc"], logged["val_acc"])
    assert list(mine["step"]) == [2, 4]
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
    assert set(curves["source"]) == {"cell"} and sorted(set(curves["step"])) == [2, 4]
    report = (folder / "report.md").read_text()
    assert "![learning curve](plots/learning_curve.png)" in report and (folder / "plots" / "learning_curve.svg").exists()
    assert json.loads((folder / "config.json").read_text())["config"]["optim"]["val_every"] == 2


def test_no_validation_during_training_no_curves(tmp_path):
    assert load_curves(tmp_path).empty
