"""Distributed path on the CPU: a 2-process DDP (gloo) sweep cell on a tiny backbone, and bad device input.

The DDP cell is launched by the sweep itself (one spawned process per rank with the torchrun environment);
its accuracy must equal a one-process evaluation of the adapters it saved, both ranks must end with the same
adapter weights, and rank 0 alone writes exactly one results.csv row. It runs for SSMLoRA's depth reading and
for its scan over positions, each also read to 2x (the per-document predictions gathered over both ranks).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from ssmlora.lab.backbone import save_tiny_backbone
from ssmlora.sweep.config import SweepConfig
from ssmlora.sweep.validate import SweepError, check_devices
from tiny_models import tiny_sweep_env

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"n_train": 16, "n_validation": 4, "n_test": 12}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return tiny_sweep_env(tmp_path_factory.mktemp("ddp"), [64, 128], **SIZES)


def args(env, out, *extra) -> list[str]:
    return ["--preset", "full", "--methods", "lora,ssmlora", "--seeds", "0", "--model", str(env["bert"]), "--task",
            "topic-mix",
            "--cache-dir", str(env["cache"]), "--n-train", "16", "--n-validation", "4", "--n-test", "12", "--max-steps", "3",
            "--tokens-per-step", "256", "--lr", "5e-3", "--precision", "32", "--threads", "1",
            "--out", str(out), "--name", "s", "--lengths", "64", *extra]


@pytest.mark.parametrize("method", ["ssmlora", "ssmlora:scan"])
@pytest.mark.slow
def test_two_process_ddp_cell_matches_one_process_evaluation(env, tmp_path, capsys, method):
    """DDP here runs without find_unused_parameters, so a trainable parameter left without a gradient in one
    step fails the next forward on every rank: 3 steps that finish ok mean every parameter had its gradient in
    the steps before the last (the adapters' graph is the same at every step)."""
    from ssmlora.sweep.cli import main

    from ssmlora.lab.cell import evaluate_adapters

    argv = args(env, tmp_path, "--methods", method, "--devices", "2", "--strategy", "ddp",
                "--accelerator", "cpu", "--eval-lengths", "2x")
    assert main(argv) == 0, capsys.readouterr().err[-2000:]
    with (tmp_path / "s" / "results.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1  # one row per cell, written by rank 0 only
    row = rows[0]
    assert row["status"] == "ok" and row["devices"] == "2x1" and int(row["n_test"]) == 12
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert config["config"]["runtime"]["devices"] == 2 and config["config"]["runtime"]["strategy"] == "ddp"
    plan = config["resolved"]["batch_plan"]["64"]
    assert plan["effective_batch"] == int(row["effective_batch"]) == 4  # 256 tokens // 64, any world size

    assert row["ssm_mode"] == ("scan" if method == "ssmlora:scan" else "depth")
    cell_dir = tmp_path / "s" / "cells" / f"{method.replace(':', '-')}-L64-s0"
    result = json.loads((cell_dir / "result.json").read_text())
    assert result["world_size"] == 2 and result["strategy"] == "DDPStrategy"
    assert result["accumulate"] * result["micro_batch"] * 2 == 4  # accumulation fills the fixed effective batch
    ranks = result["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert ranks[0]["adapter_sha256"] == ranks[1]["adapter_sha256"]  # identical adapters on both ranks
    assert result["peak_mem_mb"] == max(r["peak_mem_mb"] for r in ranks)
    assert result["real_tokens_per_s"] == pytest.approx(sum(r["real_tokens"] / r["timed_s"] for r in ranks))

    cfg = SweepConfig.from_flat(model=str(env["bert"]), task="topic-mix", cache_dir=str(env["cache"]), max_steps=3,
                                tokens_per_step=256, lr={"*": 5e-3}, precision="32", threads=1,
                                eval_lengths=["2x"], **SIZES)
    alone = evaluate_adapters(cfg.cell(method, 64, 0), cell_dir / "adapter")
    assert alone["n_test"] == 12  # every test example scored exactly once, in one process and over 2 ranks
    assert alone["accuracy"] == pytest.approx(float(row["accuracy"]), abs=1e-6)
    assert alone["macro_f1"] == pytest.approx(float(row["macro_f1"]), abs=1e-6)
    # read to 2x: both ranks' predictions gathered into one file, each document once, in the order at L
    with (tmp_path / "s" / "extrapolation.csv").open(newline="") as fh:
        longer = next(r for r in csv.DictReader(fh) if r["eval_len"] == "128")
    with (cell_dir / "predictions.csv").open(newline="") as fh:
        at_l = [r["doc_id"] for r in csv.DictReader(fh)]
    with (cell_dir / "predictions-L128.csv").open(newline="") as fh:
        read = list(csv.DictReader(fh))
    assert [r["doc_id"] for r in read] == at_l and len(at_l) == 12 == int(longer["n"])
    assert sum(r["label"] == r["prediction"] for r in read) / 12 == pytest.approx(float(longer["accuracy"]), abs=1e-6)


@pytest.mark.parametrize("extra, message", [
    (["--devices", "4", "--accelerator", "gpu"], "no CUDA GPU"),
    (["--strategy", "ddp"], "needs more than one device in total"),
    (["--strategy", "deepspeed_stage_9", "--devices", "2"], "--strategy deepspeed_stage_9: choose one of auto, ddp, fsdp"),
    (["--accelerator", "gpu"], "no CUDA GPU"),
    (["--accelerator", "tpu"], "--accelerator tpu: choose one of auto, cpu, gpu"),
    (["--devices", "2", "--strategy", "ddp", "--in-process"], "needs an external launcher"),
    (["--devices", "2", "--num-nodes", "2", "--strategy", "ddp"], "needs MASTER_ADDR"),
    (["--devices", "2", "--strategy", "fsdp"], "fsdp runs on GPUs only"),
])
def test_bad_device_input_is_one_clear_line_before_training(env, tmp_path, capsys, monkeypatch, extra, message):
    from ssmlora.sweep.cli import main

    for var in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    capsys.readouterr()
    assert main(args(env, tmp_path, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "s").exists()  # checked before the sweep folder is even made


def test_too_many_gpus_and_launcher_mismatch(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(SweepError, match="has 2 GPU"):
        check_devices(SweepConfig.from_flat(accelerator="gpu", devices=4, strategy="ddp"))
    check_devices(SweepConfig.from_flat(accelerator="gpu", devices=2, strategy="ddp"))  # fits
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(SweepError, match="torchrun started 4 process"):
        check_devices(SweepConfig.from_flat(accelerator="gpu", devices=2, strategy="ddp"), in_process=True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    check_devices(SweepConfig.from_flat(accelerator="gpu", devices=2, strategy="ddp"), in_process=True)
    with pytest.raises(SweepError, match="add --in-process"):
        check_devices(SweepConfig.from_flat(accelerator="gpu", devices=2, strategy="ddp"))


def test_more_cpu_processes_than_cores_only_warns(monkeypatch):
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    warnings = []
    check_devices(SweepConfig.from_flat(accelerator="cpu", devices=4, strategy="ddp"), warn=warnings.append)
    assert len(warnings) == 1 and "4 CPU processes on 2 core" in warnings[0]


def test_ddp_keeps_carry_state_per_rank():
    from lightning.pytorch.strategies import DDPStrategy

    from ssmlora.lab.trainer import make_strategy

    strategy = make_strategy(SweepConfig.from_flat(devices=2, strategy="ddp").runtime)
    assert isinstance(strategy, DDPStrategy) and strategy._ddp_kwargs["broadcast_buffers"] is False
    # unused parameters are an error, not searched for each step: the DDP test's cells rely on it
    assert strategy._ddp_kwargs.get("find_unused_parameters", False) is False
    assert make_strategy(SweepConfig.from_flat(devices=2, strategy="auto").runtime).__class__ is DDPStrategy
    assert make_strategy(SweepConfig.from_flat(devices=1).runtime) == "auto"


def test_fsdp_strategy_keeps_original_parameters_for_frozen_plus_adapter_layers():
    from lightning.pytorch.strategies import FSDPStrategy

    from ssmlora.lab.trainer import make_strategy

    strategy = make_strategy(SweepConfig.from_flat(devices=2, strategy="fsdp", accelerator="gpu").runtime)
    assert isinstance(strategy, FSDPStrategy) and strategy.kwargs["use_orig_params"] is True


def test_adapters_wrap_rather_than_replace_base_linears():
    """What FSDP needs: every adapter is a plain nn.Module holding the original nn.Linear (frozen)."""
    import torch

    from ssmlora import AdapterConfig, inject_adapters
    from ssmlora.inject import adapter_modules
    from tiny_models import tiny_model

    model = inject_adapters(tiny_model("llama"), AdapterConfig(method="ssmlora", r=2))
    wrappers = adapter_modules(model)
    assert wrappers
    for wrapper in wrappers.values():
        assert type(wrapper.base) is torch.nn.Linear  # the original layer, kept as a submodule
    frozen = [w for w in wrappers.values() if not any(p.requires_grad for p in w.base.parameters())]
    assert len(frozen) >= len(wrappers) - 1  # all but a trained classifier head keep their base frozen


@pytest.mark.slow
def test_failed_ddp_cell_is_recorded_without_hanging(env, tmp_path):
    from ssmlora.sweep.cli import main

    broken = save_tiny_backbone(tmp_path / "broken", "bert", max_positions=64)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    code = main(args({**env, "bert": broken}, tmp_path, "--methods", "lora", "--devices", "2", "--strategy", "ddp"))
    with (tmp_path / "s" / "results.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert code == 1 and len(rows) == 1 and rows[0]["status"].startswith("failed: ")
    assert list((tmp_path / "s" / "cells" / "lora-L64-s0").glob("error*.txt"))  # the first rank to fail reports
