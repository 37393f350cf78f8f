"""Memory of a cell and the frontier, end to end on tiny backbones: phases apart (cold vs warm caches), the
per-sequence exponent by attention kernel, the frontier with and without checkpointing, bad budgets."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from results import FRONTIER_COLUMNS
from ssmlora import AdapterConfig, inject_adapters
from ssmlora.lab.backbone import load_backbone, save_tiny_backbone
from ssmlora.lab.memory import activation_scaling, fit_exponent
from ssmlora.sweep.config import SweepConfig
from ssmlora.sweep.launch import run_cell_in_process

SIZES = {"n_train": 16, "n_validation": 4, "n_test": 8}


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return save_tiny_backbone(tmp_path_factory.mktemp("mem") / "bert", "bert", max_positions=64)


@pytest.mark.slow
def test_train_peak_is_the_same_with_cold_and_warm_caches(tmp_path, monkeypatch):
    # The default sweep's backbone and settings at 512 tokens, two steps. Cold: the cell builds the data set (in a
    # child process) and extracts the probe's features; warm: both are cached. A single-threaded tokenizer
    # (TOKENIZERS_PARALLELISM=false, as this suite runs) used to leave the cold cell 14 MiB higher.
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    cfg = SweepConfig.from_flat(task="topic-mix", cache_dir=str(tmp_path / "data"), max_steps=2, **SIZES)
    cell = cfg.cell("lora", 512, 0)
    cold = run_cell_in_process(cell, tmp_path / "cold", tmp_path / "probe")
    warm = run_cell_in_process(cell, tmp_path / "warm", tmp_path / "probe")
    assert cold["status"] == warm["status"] == "ok"
    assert cold["memory_pass_s"] > 0 and warm["memory_pass_s"] > 0  # figures from a forked pass, not the timed run
    assert cold["phases"]["data_build_rise_mb"] > 50 and "data_build_rise_mb" not in warm["phases"]
    assert cold["build_peak_mb"] > warm["build_peak_mb"] + 50  # the cold cell's figure carries the build
    gap = abs(cold["train_peak_mb"] - warm["train_peak_mb"])
    assert gap <= 0.03 * warm["train_peak_mb"], (cold["phases"], warm["phases"])
    assert cold["mem_basis"] == "cpu_rss_rise" and warm["train_peak_mb"] > 200
    # counted parts: exact, so equal both ways; the remainder is what the count leaves out (runtime of the step)
    for key in ("weights_frozen_mb", "weights_trainable_mb", "grads_mb", "optimizer_mb", "activations_mb",
                "activations_mb_per_seq"):
        assert cold[key] == warm[key] and cold[key] > 0
    assert cold["optimizer_mb"] == pytest.approx(2 * cold["grads_mb"], rel=0.05)
    explained = cold["grads_mb"] + cold["optimizer_mb"] + cold["activations_mb"]
    assert cold["unexplained_mb"] == pytest.approx(cold["train_peak_mb"] - explained)
    assert cold["peak_mem_mb"] > cold["train_peak_mb"]  # the whole process holds the runtime too
    # The methods' training peaks differ by what their adapters hold (gradients, AdamW state, saved
    # activations), so their remainders agree. With glibc's mmap threshold at 512 KiB, SSMLoRA's small per-token
    # tensors left heap holes that put its remainder 8 MiB above LoRA's at 4096.
    other = run_cell_in_process(cfg.cell("ssmlora", 512, 0), tmp_path / "ssmlora", tmp_path / "probe")
    assert other["status"] == "ok"
    counted = lambda r: r["grads_mb"] + r["optimizer_mb"] + r["activations_mb"]  # noqa: E731
    assert counted(warm) - counted(other) > 10  # LoRA drops out each adapted input, SSMLoRA its rank-r state
    gap = (warm["train_peak_mb"] - other["train_peak_mb"]) - (counted(warm) - counted(other))
    assert abs(gap) <= 0.015 * warm["train_peak_mb"], (warm["unexplained_mb"], other["unexplained_mb"])


@pytest.mark.parametrize("attn, low, high", [("sdpa", 0.9, 1.2), ("eager", 1.7, 2.3)])
def test_per_sequence_exponent_follows_the_kernel(bert, attn, low, high):
    def build(length):
        torch.manual_seed(0)
        model, info = load_backbone(str(bert), num_labels=2, reach=length, attn_implementation=attn)
        assert info.attn_impl == attn
        return inject_adapters(model, AdapterConfig(method="lora"))

    points = activation_scaling(build, [512, 1024, 2048])
    assert low <= fit_exponent(*zip(*points)) <= high


@pytest.mark.slow
def test_frontier_is_longer_with_checkpointing(bert, tmp_path):
    from ssmlora.sweep.frontier import run_frontier

    cfg = SweepConfig.from_flat(model=str(bert), attn="eager", methods=["lora"], precision="32", threads=1)
    budget = 300 * 2**20
    folder, rows = run_frontier(cfg, budget, out=tmp_path, name="f", probe_lengths=(512, 1024, 2048), reach=8192,
                                log=lambda *a, **k: None)
    by = {r["gradient_checkpointing"]: r for r in rows}
    assert 0 < by[False]["fit_len"] < by[True]["fit_len"] < 8192
    for r in rows:
        assert r["fit_len"] % 256 == 0 and r["how"] == "predicted" and not r["cap_hit"]
        assert r["step_peak_mb"] <= budget / 2**20  # the confirming real step fitted
        assert json.loads(r["attempts"])[str(r["fit_len"])] == pytest.approx(r["step_peak_mb"])
    with (folder / "frontier.csv").open(newline="") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == [c for c, _ in FRONTIER_COLUMNS] and len(table) == 2
    assert table[0]["mem_budget_mb"] == "300.0"

    from plots.report import write_frontier_outputs

    written = write_frontier_outputs(folder)  # no sweep results in the folder: the frontier's own report
    assert folder / "plots" / "frontier.png" in written
    report = (folder / "report.md").read_text()
    assert f"| lora | off | {by[False]['fit_len']} | predicted |" in report
    assert f"from {by[False]['fit_len']} to {by[True]['fit_len']} tokens" in report


def test_frontier_reports_the_reach_when_memory_is_not_the_limit(bert, tmp_path):
    from ssmlora.sweep.frontier import run_frontier

    cfg = SweepConfig.from_flat(model=str(bert), methods=["lora"], precision="32", threads=1)
    _, rows = run_frontier(cfg, 4 * 2**30, out=tmp_path, name="f", probe_lengths=(256, 512), reach=1024,
                           log=lambda *a, **k: None)
    assert all(r["fit_len"] == 1024 and r["cap_hit"] and "reach" in r["note"] for r in rows)


@pytest.mark.parametrize("budget, message", [
    ("eight", "cannot read memory size 'eight'"),
    ("0", "memory size '0' must be at least one byte"),
    ("-8GiB", "cannot read memory size '-8GiB'"),
    ("1MiB", "--mem-budget 1 MiB is below the model's own weights"),
])
def test_bad_budgets_stop_before_training(bert, tmp_path, capsys, budget, message):
    argv = ["--frontier", f"--mem-budget={budget}", "--model", str(bert), "--out", str(tmp_path), "--name", "f"]
    assert exit_code(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "f" / "frontier.csv").exists()


@pytest.mark.parametrize("text", ["8GB", "8 GiB", "8192MiB", "8g"])
def test_budget_forms_are_accepted(text):
    from ssmlora.sweep.cli import build_parser

    assert build_parser().parse_args(["--frontier", "--mem-budget", text]).mem_budget == 8 * 2**30


@pytest.mark.parametrize("argv, message", [
    (["--frontier"], "--frontier needs --mem-budget"),
    (["--mem-budget", "8GiB"], "--mem-budget is the budget of --frontier"),
])
def test_frontier_flags_go_together(bert, tmp_path, capsys, argv, message):
    assert exit_code([*argv, "--model", str(bert), "--out", str(tmp_path), "--name", "f"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def exit_code(argv: list[str]) -> int:
    """The CLI's exit status: main's return value, or argparse's exit for a value it cannot parse."""
    from ssmlora.sweep.cli import main

    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code
