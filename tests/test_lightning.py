"""Lightning pieces: bucketed batching, sharding, schedule, checkpointing and CPU determinism."""

from __future__ import annotations

import csv

import datasets
import numpy as np
import pytest
import torch

from ssmlora.lab.backbone import save_tiny_backbone
from ssmlora.lab.data import BucketBatchSampler, PadCollator
from ssmlora.lab.module import warmup_decay
from ssmlora.sweep.config import SweepConfig


def fake_task(max_len: int, sizes=(48, 12, 20), n_labels: int = 3, seed: int = 0) -> datasets.DatasetDict:
    """A learnable toy task of varied lengths: the label is written in the token ids."""
    rng = np.random.default_rng(seed)
    features = datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32")),
                                  "label": datasets.ClassLabel(names=[f"c{i}" for i in range(n_labels)])})
    splits = {}
    for split, n in zip(("train", "validation", "test"), sizes):
        labels = rng.integers(0, n_labels, n).tolist()
        ids = [[101] + (1000 + 50 * y + rng.integers(0, 50, int(rng.integers(max_len // 4, max_len - 1)))).tolist()
               + [102] for y in labels]
        splits[split] = datasets.Dataset.from_dict({"input_ids": ids, "label": labels}, features=features)
    return datasets.DatasetDict(splits)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return save_tiny_backbone(tmp_path_factory.mktemp("bert"), "bert", max_positions=64)


def test_eval_batches_cover_each_example_once_across_ranks():
    lengths = np.random.default_rng(0).integers(5, 100, 37)
    seen = []
    for rank in range(3):
        for batch in BucketBatchSampler(lengths, 4, shuffle=False, rank=rank, world_size=3):
            seen += batch
    assert sorted(seen) == list(range(37))


def test_train_batches_are_bucketed_seeded_and_rank_balanced():
    lengths = np.random.default_rng(1).integers(5, 500, 200)
    a = BucketBatchSampler(lengths, 8, shuffle=True, seed=3)
    assert list(a) == list(BucketBatchSampler(lengths, 8, shuffle=True, seed=3))
    a.set_epoch(1)
    assert list(a) != list(BucketBatchSampler(lengths, 8, shuffle=True, seed=3))
    padded = sum(len(b) * max(lengths[b]) for b in a)
    naive = sum(len(b) * max(lengths[b]) for b in np.array_split(np.random.default_rng(0).permutation(200), 25))
    assert padded < 0.7 * naive  # sorting inside pools removes most of the padding
    counts = [len(BucketBatchSampler(lengths, 8, True, 3, rank=r, world_size=3)) for r in range(3)]
    assert len(set(counts)) == 1


def test_collator_pads_right_and_masks():
    batch = PadCollator(pad_token_id=0)([{"input_ids": [5, 6, 7], "label": 1}, {"input_ids": [8], "label": 0}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [1, 0]


def test_schedule_warms_up_then_decays_to_zero():
    lrs = [warmup_decay(s, 3, 10, "linear") for s in range(10)]
    assert lrs[0] < lrs[1] < lrs[2] and max(lrs) == 1.0 and lrs[-1] < 0.2
    assert warmup_decay(10, 3, 10, "cosine") == pytest.approx(0.0)


def _run_tiny_cell(tiny_bert, tmp_path, monkeypatch, **overrides):
    from ssmlora.lab.cell import run_cell

    monkeypatch.setattr("ssmlora.lab.cell.build_splits", lambda cfg, max_len, tokenizer, into=None: fake_task(max_len))
    monkeypatch.setattr("ssmlora.lab.cell.majority_rate", lambda split: 0.4)
    cfg = SweepConfig.from_flat(model=str(tiny_bert), lengths=[64], max_steps=6, tokens_per_step=256,
                                lr={"*": 5e-3}, **overrides)
    return run_cell(cfg.cell("ssmlora", 64, 0), tmp_path)


def test_same_seed_same_accuracy_on_cpu(tiny_bert, tmp_path, monkeypatch):
    first = _run_tiny_cell(tiny_bert, tmp_path / "a", monkeypatch)
    second = _run_tiny_cell(tiny_bert, tmp_path / "b", monkeypatch)
    assert first["status"] == "ok" and first["n_test"] == 20
    # this test process has computed before, so it must not fork a memory pass: the cell measures in its run
    assert first["memory_pass_s"] is None and first["train_peak_mb"] > 0
    assert first["accuracy"] == second["accuracy"] and first["macro_f1"] == second["macro_f1"]
    def losses(folder):  # every logged training loss and rate by step (step_time_s, a wall time, differs)
        with (folder / "metrics.csv").open(newline="") as fh:
            return [(r["step"], r["train_loss"], *(v for k, v in r.items() if k.startswith("lr-")))
                    for r in csv.DictReader(fh) if r.get("train_loss") or any(r.get(k) for k in r if k.startswith("lr-"))]
    assert len(losses(tmp_path / "a")) >= 6 and losses(tmp_path / "a") == losses(tmp_path / "b")


def test_validation_picks_best_checkpoint_of_trainable_weights_only(tiny_bert, tmp_path, monkeypatch):
    result = _run_tiny_cell(tiny_bert, tmp_path, monkeypatch, val_every=3)
    assert result["status"] == "ok" and result["train_steps"] == 6
    (ckpt,) = (tmp_path / "checkpoints").glob("*.ckpt")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    frozen = ("word_embeddings.weight", "query.weight", "LayerNorm.weight", "intermediate.dense.weight")
    assert state and not any(k.endswith(f) for k in state for f in frozen), sorted(state)[:5]
    assert not any(k.endswith("word_embeddings.weight") for k in state)


@pytest.mark.parametrize("mode", ["depth", "carry"])
def test_saved_adapter_rescores_to_the_reported_accuracy(tiny_bert, tmp_path, monkeypatch, mode):
    """The saved adapter is the scored one: in carry mode that includes the state the test started from."""
    from ssmlora.lab.cell import evaluate_adapters

    result = _run_tiny_cell(tiny_bert, tmp_path, monkeypatch, ssm_mode=mode, val_every=3)
    assert result["status"] == "ok"
    cfg = SweepConfig.from_flat(model=str(tiny_bert), lengths=[64], max_steps=6, tokens_per_step=256,
                                lr={"*": 5e-3}, ssm_mode=mode, val_every=3)
    again = evaluate_adapters(cfg.cell("ssmlora", 64, 0), tmp_path / "adapter")
    assert again == {"accuracy": result["accuracy"], "macro_f1": result["macro_f1"], "n_test": result["n_test"]}
    if mode == "carry":  # the state moved on during the test: saving the live state would score differently
        from safetensors.torch import load_file
        saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
        assert any(k.startswith("ssm_state::") for k in saved)
