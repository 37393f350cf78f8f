"""The LightningModule: fine-tune a `*ForSequenceClassification` backbone through its adapters."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import lightning as L
import torch
from torchmetrics import MeanMetric, SumMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

SCHEDULES = ("cosine", "linear", "constant")


@dataclass
class OptimConfig:
    """Optimizer and schedule of one cell."""

    lr: float = field(default=1e-3, metadata={"help": "AdamW peak learning rate of the adapter matrices"})
    head_lr: float | None = field(
        default=None, metadata={"help": "peak learning rate of the new classifier head (None: same as lr)"}
    )
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    warmup_frac: float = field(default=0.1, metadata={"help": "share of optimizer steps of linear warm-up"})
    schedule: str = field(default="linear", metadata={"help": "decay after warm-up: " + " | ".join(SCHEDULES)})
    max_steps: int = field(default=30, metadata={"help": "optimizer steps (the schedule's length)"})


def warmup_decay(step: int, warmup: int, total: int, schedule: str) -> float:
    """LR multiplier: linear warm-up to 1, then cosine or linear decay to 0 at `total` (or constant)."""
    if warmup and step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress


class AdapterClassifier(L.LightningModule):
    """Trains only what requires grad (adapters + head); scores accuracy and macro-F1 with torchmetrics.

    Checkpoints hold only the trainable tensors and buffers (adapter state), not the frozen backbone, so
    `ModelCheckpoint` stays cheap for large models; loading is therefore non-strict.
    """

    def __init__(self, model: torch.nn.Module, num_labels: int, optim: OptimConfig | None = None) -> None:
        super().__init__()
        self.model, self.optim = model, optim or OptimConfig()
        if self.optim.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.optim.schedule!r}: choose one of {', '.join(SCHEDULES)}")
        self.strict_loading = False
        self.train_loss = MeanMetric()
        self.metrics = torch.nn.ModuleDict({
            f"{stage}_{name}": metric
            for stage in ("val", "test")
            for name, metric in (
                ("acc", MulticlassAccuracy(num_labels, average="micro")),
                ("f1", MulticlassF1Score(num_labels, average="macro")),
                ("n", SumMetric()),
            )
        })

    def forward(self, batch: dict) -> torch.Tensor:
        mask = batch["attention_mask"]
        # A mask with no padding is passed as None so SDPA can take its fast unmasked kernel.
        return self.model(input_ids=batch["input_ids"], attention_mask=None if bool(mask.all()) else mask).logits

    def on_fit_start(self) -> None:
        from ssmlora import reset_ssm_state

        reset_ssm_state(self.model)  # 'carry' mode: start every cell from the zero state

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(batch)
        loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"])
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch["labels"]))
        return loss

    def _score(self, batch: dict, stage: str) -> None:
        preds = self(batch).argmax(-1)
        labels = batch["labels"]
        self.metrics[f"{stage}_acc"].update(preds, labels)
        self.metrics[f"{stage}_f1"].update(preds, labels)
        self.metrics[f"{stage}_n"].update(torch.tensor(float(len(labels)), device=labels.device))

    def _log_scores(self, stage: str) -> None:
        # The metric objects are logged, so Lightning reduces them over ranks once per epoch.
        for name in ("acc", "f1", "n"):
            self.log(f"{stage}_{name}", self.metrics[f"{stage}_{name}"], prog_bar=name == "acc")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._score(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._score(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")

    def configure_optimizers(self):
        from ssmlora.inject import trainable_groups

        groups = trainable_groups(self.model)
        head_lr = self.optim.lr if self.optim.head_lr is None else self.optim.head_lr
        param_groups = [
            {"params": [p for _, p in groups["adapter"] + groups["other"]], "lr": self.optim.lr},
            {"params": [p for _, p in groups["head"]], "lr": head_lr},
        ]
        opt = torch.optim.AdamW([g for g in param_groups if g["params"]], weight_decay=self.optim.weight_decay)
        total = max(1, self.optim.max_steps)
        warmup = int(self.optim.warmup_frac * total)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_decay(s, warmup, total, self.optim.schedule))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}
        frozen = {f"model.{n}" for n, p in self.model.named_parameters() if not p.requires_grad}
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if k in trainable or k not in frozen
        }


# ---- one sweep cell: build, train, score (runs inside the cell's own process) ----

def _threads(cfg) -> int:
    import os

    return cfg.threads or max(1, (os.cpu_count() or 1) // max(1, cfg.devices))


def run_cell(cfg, cell, cell_dir) -> dict:
    """Train `cell` (method, length, seed) of sweep `cfg` with Lightning; return its results row fields."""
    import time

    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from data_prep import majority_rate
    from ssmlora import count_parameters, enable_gradient_checkpointing
    from ssmlora.datamodule import TaskDataModule
    from ssmlora.profilers import PeakMemoryCallback, ThroughputCallback

    start = time.perf_counter()
    torch.set_num_threads(_threads(cfg))
    L.seed_everything(cell.seed, workers=True, verbose=False)
    micro = cfg.micro_batch(cell.max_len)
    world = cfg.devices * cfg.num_nodes
    accumulate = cfg.effective_batch(cell.max_len) // (micro * world)
    dcfg, data, labels, pad_id, model, info = _build_cell(cfg, cell)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    counts = count_parameters(model)
    probe = fit_head_by_probe(cfg, cell, cell_dir, model, data["train"], pad_id) if cfg.head_init == "probe" else {}
    steps = cfg.max_steps
    if cfg.epochs > 0:  # the schedule needs the step count up front
        steps = cfg.epochs * max(1, len(data["train"]) // cfg.effective_batch(cell.max_len))
    lr = cfg.ssmlora_lr if cell.method == "ssmlora" else cfg.lr
    module = AdapterClassifier(model, len(labels), OptimConfig(lr=lr, head_lr=cfg.head_lr, weight_decay=0.01,
                                                               warmup_frac=cfg.warmup_frac, schedule=cfg.schedule,
                                                               max_steps=steps))
    peak, speed = PeakMemoryCallback(), ThroughputCallback(warmup_steps=1 if steps > 2 else 0)
    callbacks = [peak, speed]
    validate = cfg.val_every > 0
    if validate:
        callbacks.append(ModelCheckpoint(dirpath=str(cell_dir / "checkpoints"), monitor="val_acc", mode="max",
                                         save_top_k=1, save_weights_only=True))
    trainer = L.Trainer(
        accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes, strategy=make_strategy(cfg),
        precision=cfg.precision, max_steps=steps, max_epochs=-1, accumulate_grad_batches=accumulate,
        gradient_clip_val=1.0, logger=CSVLogger(str(cell_dir), name="", version=""), callbacks=callbacks,
        enable_checkpointing=validate, limit_val_batches=1.0 if validate else 0,
        val_check_interval=cfg.val_every * accumulate if validate else None, check_val_every_n_epoch=None,
        num_sanity_val_steps=0, log_every_n_steps=1, enable_model_summary=False, use_distributed_sampler=False,
        default_root_dir=str(cell_dir),
    )
    dm = TaskDataModule(dcfg, pad_token_id=pad_id, data=data)
    module.train()  # from_pretrained returns eval mode; adapter and hidden dropout must be live in training
    trainer.fit(module, datamodule=dm)
    best = trainer.checkpoint_callback.best_model_path if validate and trainer.checkpoint_callback else ""
    test_start = time.perf_counter()
    scores = trainer.test(module, datamodule=dm, ckpt_path=best or None, verbose=False)[0]
    test_s = time.perf_counter() - test_start
    flops_dtype = torch.float32 if cfg.precision == "32" else torch.bfloat16
    mem, rates, ranks = reduce_cell_figures(trainer, model, peak, speed, flops_dtype)
    if trainer.is_global_zero:
        from ssmlora import save_adapters

        save_adapters(model, cell_dir / "adapter")  # the tested weights: identical on every rank
    return {
        "status": "ok",
        "accuracy": scores.get("test_acc"),
        "macro_f1": scores.get("test_f1"),
        "n_test": int(scores.get("test_n", 0)),
        "majority_rate": majority_rate(data["test"]),
        **{k: counts[k] for k in ("adapter_params", "head_params", "trainable_params")},
        **mem,
        **{k: v for k, v in rates.items() if k != "timed_steps"},
        "train_steps": trainer.global_step,
        "wall_s": time.perf_counter() - start,
        **probe,
        "attn_impl": info.attn_impl,
        "test_s": test_s,
        "fit_s": test_start - start,
        "micro_batch": micro,
        "accumulate": accumulate,
        "world_size": trainer.world_size,
        "strategy": type(trainer.strategy).__name__,
        "ranks": ranks,  # per rank: peak memory, tokens/s, adapter hash (result.json only, not results.csv)
    }


def fit_head_by_probe(cfg, cell, cell_dir, model, train, pad_id) -> dict:
    """LP-FT's first stage (ssmlora/probe.py) for a sweep cell: the frozen features are cached per (length,
    seed) in `<sweep>/probe/`, so every method of that length and seed starts from the same head."""
    import os
    from pathlib import Path

    from ssmlora.probe import init_head_from_probe
    from ssmlora.sweep import is_rank_zero

    on_gpu = cfg.accelerator == "gpu" or (cfg.accelerator == "auto" and torch.cuda.is_available())
    if on_gpu:  # the Trainer would move it there anyway; the probe's forwards should run there too
        model.to(torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0") or 0)))
    cache = Path(cell_dir).parent.parent / "probe" / f"L{cell.max_len}-s{cell.seed}.safetensors"
    return init_head_from_probe(model, train, cfg.probe_examples, cell.seed, 2 * cfg.micro_batch(cell.max_len),
                                cfg.precision, pad_id, cache=cache, write_cache=is_rank_zero())


def make_strategy(cfg):
    """Lightning strategy of a cell: "auto" for one process, else DDP / FSDP set up for adapters.

    DDP: `broadcast_buffers=False`, because SSMLoRA's `carry` state lives in (non-persistent) buffers of
    `model.ssm_state` and is per rank: each rank carries the state of the batches it saw, and broadcasting
    rank 0's buffers at every forward would overwrite it (and fail on shape when batches differ).
    FSDP: `use_orig_params=True`, so frozen base weights and trainable adapter matrices can share a flat
    parameter; adapters are plain nn.Modules holding the base nn.Linear, so FSDP wraps them like any layer.
    Under torchrun (TORCHELASTIC_RUN_ID, also set by the sweep's own launcher) the cluster environment is
    given explicitly, so an enclosing SLURM allocation is not mistaken for the launcher.
    """
    from ssmlora.sweep import distributed_strategy

    name = distributed_strategy(cfg)
    if name is None:
        return cfg.strategy
    kwargs = {}
    import os

    if "TORCHELASTIC_RUN_ID" in os.environ:
        from lightning.fabric.plugins.environments import TorchElasticEnvironment

        kwargs["cluster_environment"] = TorchElasticEnvironment()
    if name == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(broadcast_buffers=False, **kwargs)
    if name == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        return FSDPStrategy(use_orig_params=True, **kwargs)
    return name


def adapter_digest(model: torch.nn.Module) -> str:
    """sha256 over the names and bytes of every trainable tensor (adapters + head): equal iff identical."""
    import hashlib

    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def reduce_cell_figures(trainer, model, peak, speed, flops_dtype) -> tuple[dict, dict, list[dict]]:
    """Peak memory = max over ranks; rates = global sum of the per-rank rates; plus the per-rank figures."""
    mem = peak.snapshot()
    local = {"rank": trainer.global_rank, "peak_mem_mb": mem["peak_mem_mb"],
             "peak_reserved_mb": mem.get("peak_reserved_mb"), **speed.local_figures(),
             "adapter_sha256": adapter_digest(model)}
    ranks = [local]
    if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        ranks = [None] * trainer.world_size
        torch.distributed.all_gather_object(ranks, local)
    mem = {**mem, "peak_mem_mb": max(r["peak_mem_mb"] for r in ranks)}
    if mem.get("peak_reserved_mb") is not None:
        mem["peak_reserved_mb"] = max(r["peak_reserved_mb"] or 0 for r in ranks)
    if len(ranks) > 1:
        mem["mem_includes"] = f"max over {len(ranks)} ranks of: {mem['mem_includes']}"
    return mem, speed.summary(flops_dtype, ranks=ranks if len(ranks) > 1 else None), ranks


def _build_cell(cfg, cell):
    """The cell's data and adapted backbone, built the same way for training and for re-scoring saved adapters."""
    from ssmlora import AdapterConfig, inject_adapters
    from ssmlora.backbone import load_backbone
    from ssmlora.datamodule import DataConfig, build_splits

    dcfg = DataConfig(task=cfg.task, max_len=cell.max_len, tokenizer=_tokenizer_path(cfg.model), seed=cell.seed,
                      micro_batch=cfg.micro_batch(cell.max_len), n_train=cfg.n_train, n_validation=cfg.n_validation,
                      n_test=cfg.n_test, test_limit=cfg.test_limit(cell.max_len),
                      val_limit=cfg.test_limit(cell.max_len), cache_dir=cfg.cache_dir)
    data = build_splits(dcfg)
    labels = list(data["train"].features["label"].names)
    pad_id = _pad_token_id(dcfg.tokenizer)
    model, info = load_backbone(cfg.model, num_labels=len(labels), max_len=cell.max_len, attn_implementation=cfg.attn,
                                id2label=dict(enumerate(labels)), pad_token_id=pad_id, pooling=cfg.pooling)
    inject_adapters(model, AdapterConfig(method=cell.method, r=cfg.r, alpha=cfg.alpha, dropout=cfg.dropout,
                                         targets=cfg.targets, ssm_mode=cfg.ssm_mode, scale=cfg.scale))
    return dcfg, data, labels, pad_id, model, info


def evaluate_adapters(cfg, cell, adapter_dir) -> dict:
    """Score saved adapters (a cell's `adapter/` folder) on the cell's test split in this one process.

    Builds the backbone and test subset exactly as `run_cell` does, so the accuracy equals the cell's own,
    whatever the number of ranks that trained and scored it. Returns {"accuracy", "macro_f1", "n_test"}.
    """
    from ssmlora import load_adapters
    from ssmlora.datamodule import TaskDataModule

    torch.set_num_threads(_threads(cfg))
    dcfg, data, labels, pad_id, model, _ = _build_cell(cfg, cell)
    load_adapters(model, adapter_dir)
    module = AdapterClassifier(model, len(labels))
    trainer = L.Trainer(accelerator=cfg.accelerator, devices=1, precision=cfg.precision, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        use_distributed_sampler=False)
    scores = trainer.test(module, datamodule=TaskDataModule(dcfg, pad_token_id=pad_id, data=data), verbose=False)[0]
    return {"accuracy": scores.get("test_acc"), "macro_f1": scores.get("test_f1"), "n_test": int(scores["test_n"])}


def run_cell_safely(cfg, cell, cell_dir) -> dict:
    """`run_cell`, with an out-of-memory or any other error turned into a status (the sweep goes on)."""
    import time
    import traceback
    from pathlib import Path

    start = time.perf_counter()
    cell_dir = Path(cell_dir)
    cell_dir.mkdir(parents=True, exist_ok=True)
    try:
        return run_cell(cfg, cell, cell_dir)
    except (torch.OutOfMemoryError, MemoryError) as err:
        status = "oom"
        detail = str(err)
    except Exception as err:  # noqa: BLE001 - any failure of one cell must not stop the sweep
        status = f"failed: {type(err).__name__}: {str(err).strip().splitlines()[0][:200] if str(err).strip() else ''}"
        detail = traceback.format_exc()
    import os

    rank = int(os.environ.get("RANK", "0") or 0)  # under DDP every rank that fails leaves its own report
    (cell_dir / ("error.txt" if rank == 0 else f"error-rank{rank}.txt")).write_text(detail)
    return {"status": status, "wall_s": time.perf_counter() - start}


def _tokenizer_path(model: str) -> str:
    from ssmlora.backbone import resolve_model_path

    return resolve_model_path(model)


def _pad_token_id(tokenizer_path: str) -> int:
    """The tokenizer's pad id; decoder tokenizers without one pad with EOS (masked out anyway)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_path)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return int(pad or 0)
