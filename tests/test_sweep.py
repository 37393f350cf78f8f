"""The sweep end to end on a tiny backbone and tiny topic-mix: rows, resume, kill, failures, bad input, memory."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from results import COLUMN_NAMES, SCHEMA_VERSION
from ssmlora.lab.backbone import save_tiny_backbone
from ssmlora.sweep.launch import run_cell_in_process
from ssmlora.sweep.config import SweepConfig
from tiny_models import tiny_sweep_env

ROOT = Path(__file__).resolve().parents[1]
RUN = [sys.executable, str(ROOT / "experiments" / "run.py")]
SIZES = {"n_train": 16, "n_validation": 4, "n_test": 8}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return tiny_sweep_env(tmp_path_factory.mktemp("sweep"), [64, 128, 256], **SIZES)


def tiny_args(env, out, *extra) -> list[str]:
    return ["--preset", "full", "--methods", "lora,ssmlora", "--seeds", "0", "--model", str(env["bert"]), "--task",
            "topic-mix",
            "--cache-dir", str(env["cache"]), "--n-train", "16", "--n-validation", "4", "--n-test", "8",
            "--max-steps", "2", "--tokens-per-step", "256", "--lr", "5e-3", "--out", str(out), "--name", "s", *extra]


def rows_of(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_sweep_survives_sigkill_and_resumes(env):
    out = env["base"] / "kill"
    cmd = RUN + tiny_args(env, out, "--lengths", "64", "--methods", "lora,ssmlora")  # two cells: kill after the first
    results = out / "s" / "results.csv"
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (results.exists() and rows_of(results)):
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its cell process, mid-sweep
    proc.wait()
    kept = rows_of(results)
    assert len(kept) == 1 and kept[0]["status"] == "ok"

    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("skipped") == len(kept)
    assert "[2/2] ssmlora L=64 seed 0: ok" in done.stdout
    assert "examples/s" not in done.stdout + done.stderr  # no datasets progress bar ("Flattening the indices")
    rows = rows_of(results)
    assert list(rows[0]) == COLUMN_NAMES and len(rows) == 2
    assert {(r["method"], r["max_len"]) for r in rows} == {("lora", "64"), ("ssmlora", "64")}
    for r in rows:
        assert 0 <= float(r["accuracy"]) <= 1 and 0 < float(r["majority_rate"]) <= 1
        assert float(r["padded_tokens_per_s"]) >= float(r["real_tokens_per_s"]) > 0
        assert r["attn_impl"] == "sdpa" and int(r["n_test"]) == 8 and float(r["peak_mem_mb"]) > 0
    config = json.loads((out / "s" / "config.json").read_text())
    for key in ("schema_version", "name", "task", "model", "methods", "lengths", "seeds", "config", "resolved",
                "identity", "environment"):
        assert key in config
    assert set(config["config"]) == {"model", "adapter", "optim", "tune", "design", "data", "runtime"}
    assert config["lengths"] == [64] and set(config["config"]["adapter"]) >= {"r", "alpha", "dropout", "targets",
                                                                                 "scale", "ssm_mode"}
    assert config["resolved"]["device"] == "cpu" and config["resolved"]["lr"] == {"lora": 5e-3, "ssmlora": 5e-3}
    assert {"python", "torch", "transformers", "lightning", "platform", "device_name", "cpu_count"} <= set(
        config["environment"])


def test_failed_cells_are_recorded_and_exit_nonzero(env, tmp_path, capsys):
    from ssmlora.sweep.cli import main

    broken = save_tiny_backbone(tmp_path / "broken", "bert", max_positions=64)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    code = main(tiny_args({**env, "bert": broken}, tmp_path, "--lengths", "64", "--methods", "lora,frozen",
                          "--in-process"))
    rows = rows_of(tmp_path / "s" / "results.csv")
    assert code == 1 and len(rows) == 2  # the sweep went on after the first failure
    assert all(r["status"].startswith("failed: ") for r in rows)
    assert (tmp_path / "s" / "cells" / "lora-L64-s0" / "error.txt").exists()


def _bad(env, tmp_path, case) -> list[str]:
    if case == "task":
        return tiny_args(env, tmp_path, "--task", "no-such-task")
    if case == "model":
        return tiny_args({**env, "bert": tmp_path / "no-such-model"}, tmp_path)
    if case == "length":
        llama = save_tiny_backbone(tmp_path / "llama", "llama", max_positions=64)
        return tiny_args({**env, "bert": llama}, tmp_path, "--lengths", "64,128")
    if case == "out":
        (tmp_path / "file").write_text("x")
        return tiny_args(env, tmp_path / "file" / "sub")
    if case == "config":
        (tmp_path / "s").mkdir()
        other = SweepConfig.from_flat(model=str(env["bert"]), max_steps=2, tokens_per_step=256, lr={"*": 0.5},
                                      **SIZES)
        (tmp_path / "s" / "config.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION,
                                                                "identity": other.identity()}))
        return tiny_args(env, tmp_path)
    if case == "memory":  # a folder written before the memory figures had a pass of their own
        (tmp_path / "s").mkdir()
        same = SweepConfig.from_flat(model=str(env["bert"]), max_steps=2, tokens_per_step=256, lr={"*": 5e-3},
                                     **SIZES).identity()
        del same["memory_protocol"]
        (tmp_path / "s" / "config.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION, "identity": same}))
        return tiny_args(env, tmp_path)
    if case == "layout":  # a folder written before the tuning settings had a section of their own
        (tmp_path / "s").mkdir()
        old = SweepConfig.from_flat(model=str(env["bert"]), max_steps=2, tokens_per_step=256, lr={"*": 5e-3},
                                    **SIZES).identity()
        old["optim"].update(old.pop("tune"))
        (tmp_path / "s" / "config.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION, "identity": old}))
        return tiny_args(env, tmp_path)
    if case == "results":
        (tmp_path / "s").mkdir()
        (tmp_path / "s" / "results.csv").write_text("task,acc\nx,1\n")
        return tiny_args(env, tmp_path)
    raise AssertionError(case)


@pytest.mark.parametrize("case, message", [
    ("task", "unknown task 'no-such-task'"),
    ("model", "no such model folder"),
    ("length", "beyond what"),
    ("out", "cannot write to the output folder"),
    ("config", "different configuration (differs in: --lr)"),
    ("memory", "memory figures were measured within the timed run"),
    ("layout", "an earlier ssmlora whose tuning settings sat in the optim section"),
    ("results", "lacks columns"),
])
def test_bad_input_is_one_clear_line_before_training(env, tmp_path, capsys, case, message):
    from ssmlora.sweep.cli import main

    argv = _bad(env, tmp_path, case)
    before = (tmp_path / "s" / "results.csv").read_text() if case == "results" else None
    capsys.readouterr()  # drop the fixtures' own output
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "s" / "cells").exists()  # nothing was trained
    if before is not None:
        assert (tmp_path / "s" / "results.csv").read_text() == before  # never overwritten


@pytest.mark.parametrize("task", ["contract_nli", "arxiv"])
def test_a_hub_task_offline_is_one_line_and_exit_2_in_seconds(env, tmp_path, capsys, monkeypatch, task):
    from ssmlora.sweep.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    capsys.readouterr()
    start = time.perf_counter()
    assert main(tiny_args(env, tmp_path, "--task", task)) == 2
    assert time.perf_counter() - start < 5
    err = capsys.readouterr().err
    assert err.startswith(f"error: hub task {task!r} needs the dataset hub") and err.count("\n") == 1
    assert "its data is not cached at L = " in err and "Traceback" not in err
    assert not (tmp_path / "s" / "cells").exists()


@pytest.mark.slow
def test_cell_peak_memory_does_not_depend_on_earlier_cells(env, tmp_path):
    cfg = SweepConfig.from_flat(model=str(env["bert"]), task="topic-mix", cache_dir=str(env["cache"]), max_steps=2,
                                tokens_per_step=4096, micro_tokens=4096, lr={"*": 5e-3}, **SIZES)
    small, large = cfg.cell("lora", 64, 0), cfg.cell("lora", 256, 0)
    alone = run_cell_in_process(small, tmp_path / "alone")
    big = run_cell_in_process(large, tmp_path / "big")
    after = run_cell_in_process(small, tmp_path / "after")
    assert alone["status"] == big["status"] == after["status"] == "ok"
    assert big["peak_mem_mb"] > alone["peak_mem_mb"]
    assert abs(after["peak_mem_mb"] - alone["peak_mem_mb"]) < 0.05 * alone["peak_mem_mb"]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_stopping_the_sweep_ends_its_cell_process(env, tmp_path, sig):
    import psutil

    cmd = RUN + tiny_args(env, tmp_path / "out", "--lengths", "64", "--methods", "lora") + ["--max-steps", "100000"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline, cells = time.time() + 120, []
    while time.time() < deadline and not cells:
        cells = [c for c in psutil.Process(proc.pid).children() if "spawn_main" in " ".join(c.cmdline())]
        time.sleep(0.5)
    assert cells, "the cell process never started"
    time.sleep(3)  # let it get into training
    os.kill(proc.pid, sig)  # the sweep alone, not its process group
    proc.wait(timeout=60)
    gone, alive = psutil.wait_procs(cells, timeout=20)
    assert not alive, f"cell process outlived the sweep after {sig.name}"
    if sig == signal.SIGTERM:
        assert proc.returncode == 130 and "rerun the same command to resume" in proc.stderr.read()


@pytest.mark.slow
def test_each_length_is_prepared_once_and_its_cells_start_warm(env, tmp_path):
    """The preparation step fills the data and probe caches before a length's first cell, in a process of its own,
    with the features a cell would extract itself: the same tensors and the same accuracy as a sweep without it."""
    from ssmlora.sweep.cli import main

    out = tmp_path / "prepared"
    done = subprocess.run(RUN + tiny_args(env, out, "--lengths", "64", "--methods", "lora", "--seeds", "0,1"),
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("[prep] L=64: data and probe features ready") == 1
    assert done.stdout.index("[prep] L=64") < done.stdout.index("[1/2]")
    prep = json.loads((out / "s" / "config.json").read_text())["prep"]["64"]
    assert prep["status"] == "ok" and prep["prep_s"] >= prep["features_s"] > 0 and prep["peak_rss_mb"] > 0
    for tag in ("lora-L64-s0", "lora-L64-s1"):  # every seed's probe rows were extracted by the step
        assert json.loads((out / "s" / "cells" / tag / "result.json").read_text())["probe_cached"] is True

    alone = tmp_path / "alone"  # --in-process: no preparation step, the cell extracts its own features
    assert main(tiny_args(env, alone, "--lengths", "64", "--methods", "lora", "--in-process")) == 0
    from safetensors.torch import load_file

    for name in ("L64-s0.safetensors", "L64-test.safetensors"):
        mine, theirs = load_file(str(out / "s" / "probe" / name)), load_file(str(alone / "s" / "probe" / name))
        assert mine.keys() == theirs.keys() and all((mine[k] == theirs[k]).all() for k in mine)
    lora = [r for r in rows_of(out / "s" / "results.csv") if r["method"] == "lora" and r["seed"] == "0"]
    assert lora[0]["accuracy"] == rows_of(alone / "s" / "results.csv")[0]["accuracy"]
