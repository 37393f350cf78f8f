"""Profilers: token counting, warm-up exclusion, FLOPs, GPU peak table."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from ssmlora.lab.data import BucketBatchSampler, PadCollator
from ssmlora.lab.profilers import (
    ThroughputCallback,
    count_tokens,
    peak_flops,
)


def test_count_tokens_real_vs_padded_on_known_batch():
    batch = PadCollator(0)([{"input_ids": [1, 2, 3, 4], "label": 0}, {"input_ids": [1, 2], "label": 1},
                            {"input_ids": [7], "label": 1}])
    assert count_tokens(batch) == (7, 12, 3)


class _Linear(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(50, 8)
        self.out = torch.nn.Linear(8, 2)

    def training_step(self, batch, batch_idx):
        h = (self.emb(batch["input_ids"]) * batch["attention_mask"][..., None]).mean(1)
        return torch.nn.functional.cross_entropy(self.out(h), batch["labels"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_throughput_counts_timed_steps_only_and_flops(tmp_path):
    lengths = [3, 5, 2, 7, 4, 6, 1, 8, 5, 5, 2, 3]
    rows = [{"input_ids": list(range(1, n + 1)), "label": i % 2} for i, n in enumerate(lengths)]
    sampler = BucketBatchSampler(lengths, 2, shuffle=True, seed=0)
    loader = DataLoader(rows, batch_sampler=sampler, collate_fn=PadCollator(0))
    batches = [PadCollator(0)([rows[i] for i in b]) for b in sampler]
    speed = ThroughputCallback(warmup_steps=1)
    trainer = L.Trainer(max_steps=3, accumulate_grad_batches=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[speed],
                        default_root_dir=tmp_path)
    trainer.fit(_Linear(), loader)
    # 3 optimizer steps of 2 micro-batches: step 1 is warm-up, steps 2-3 are micro-batches 2..5
    timed = batches[2:6]
    assert speed.tokens["real"] == sum(int(b["attention_mask"].sum()) for b in timed)
    assert speed.tokens["padded"] == sum(b["attention_mask"].numel() for b in timed)
    assert speed.tokens["samples"] == 8 and len(speed.step_times) == 2
    summary = speed.summary()
    assert summary["padded_tokens_per_s"] >= summary["real_tokens_per_s"] > 0
    assert summary["flops_per_step"] > 0 and summary["mfu"] is None  # no GPU peak on a CPU


def test_gpu_peak_table_has_hopper(monkeypatch):
    assert peak_flops(torch.device("cpu")) is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    monkeypatch.setattr("lightning.fabric.utilities.throughput.get_available_flops", lambda d, t: None)
    assert peak_flops(torch.device("cuda", 0)) == pytest.approx(989e12)
