"""Every family from a saved folder: a tiny random-initialised ModernBERT, Llama, Qwen3 and GPT-2, each saved with
a tokenizer, run through a tiny sweep of LoRA, SSMLoRA depth and scan with `--model <folder>`."""

import csv

import pytest

from data_prep import build_task
from ssmlora.lab.backbone import save_tiny_backbone
from ssmlora.params import adapter_parameters
from ssmlora.sweep.cli import main
from ssmlora.sweep.config import SweepConfig

VARIANTS = ["lora", "ssmlora:depth", "ssmlora:scan"]


@pytest.mark.parametrize("family", ["modernbert", "llama", "qwen3", "gpt2"])
@pytest.mark.slow
def test_a_tiny_sweep_runs_on_a_saved_folder_of_each_family(family, tmp_path, capsys):
    folder = save_tiny_backbone(tmp_path / family, family, max_positions=128)
    sizes = {"n_train": 24, "n_validation": 8, "n_test": 12}
    build_task("topic-mix", max_len=64, tokenizer=str(folder), cache_dir=str(tmp_path / "data"), seed=0, **sizes)
    argv = ["--preset", "full", "--model", str(folder), "--methods", ",".join(VARIANTS), "--seeds", "0",
            "--lengths", "64",
            "--n-train", "24", "--n-validation", "8", "--n-test", "12", "--max-steps", "2", "--tokens-per-step", "128",
            "--probe-examples", "16", "--cache-dir", str(tmp_path / "data"), "--in-process", "--out", str(tmp_path),
            "--name", "s"]
    assert main(argv) == 0
    rows = {r["variant"]: r for r in csv.DictReader(open(tmp_path / "s" / "results.csv"))}
    assert sorted(rows) == sorted(VARIANTS)
    cfg = SweepConfig(methods=VARIANTS)
    for variant, row in rows.items():
        assert row["status"] == "ok" and int(row["n_test"]) == 12 and int(row["train_steps"]) == 2
        # the adapters trained are the ones the meta-device count of that family predicts
        adapter = cfg.cell(variant, 64, 0).adapter
        assert int(row["adapter_params"]) == adapter_parameters(str(folder), adapter, num_labels=5)
    # a length beyond the folder's positions (all four are rotary or tiled: GPT-2 tiles) is one line, exit 2
    capsys.readouterr()
    code = main([*argv[:-2], "--name", "long", "--lengths", "256", "--dry-run"])
    err = capsys.readouterr().err.strip()
    if family == "gpt2":
        assert code == 0  # absolute positions: tiled past 128
    else:
        assert code == 2 and len(err.splitlines()) == 1 and "beyond what" in err and "max_position_embeddings=128" in err
