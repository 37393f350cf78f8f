"""Loggers by name: `--logger tensorboard` puts each cell's training loss, learning rate, validation scores and step
time into TensorBoard event files under the sweep folder, beside the CSV the figures read; without TensorBoard
installed it is one line naming the extra, before anything runs."""

import csv
import importlib.util

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ssmlora.sweep.cli import main
from tiny_models import tiny_sweep_env


def test_tensorboard_holds_each_cells_loss_rate_validation_and_step_time(tmp_path):
    env = tiny_sweep_env(tmp_path, [64], n_train=16, n_validation=4, n_test=8)
    code = main(["--preset", "full", "--model", str(env["bert"]), "--cache-dir", str(env["cache"]), "--n-train", "16",
                 "--n-validation", "4", "--n-test", "8", "--max-steps", "3", "--tokens-per-step", "256",
                 "--val-every", "1", "--lengths", "64", "--seeds", "0", "--methods", "lora", "--logger", "tensorboard",
                 "--in-process", "--out", str(tmp_path), "--name", "s"])
    assert code == 0
    cell = tmp_path / "s" / "cells" / "lora-L64-s0"
    events = EventAccumulator(str(cell / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train_loss", "step_time_s", "val_acc", "val_loss"} <= tags, tags
    rates = [t for t in tags if t.startswith("lr-")]
    assert rates and all(len(events.Scalars(t)) == 3 for t in rates)  # one rate per optimizer step
    assert [e.step for e in events.Scalars("step_time_s")] == [1, 2, 3] and all(
        e.value > 0 for e in events.Scalars("step_time_s"))
    with (cell / "metrics.csv").open() as fh:  # the CSV the figures read is still written, with the same columns
        columns = set(next(csv.reader(fh)))
    assert {"train_loss", "step_time_s", "val_acc"} <= columns and any(c.startswith("lr-") for c in columns)


def test_tensorboard_missing_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("tensorboard", "tensorboardX") else real(name, *a))
    assert main(["--logger", "tensorboard", "--dry-run", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install -e '.[tensorboard]'" in err and "--logger csv" in err
    assert not any(tmp_path.iterdir())  # refused before a folder was made
