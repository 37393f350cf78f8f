"""One sweep cell: build its data and adapted backbone, fit the head by probe, train, score, save.

A cell knows nothing of the sweep around it: `CellConfig` holds everything it needs, with the method's learning
rate already resolved. `run_cell` returns the cell's fields of the results row (results).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from transformers import AutoTokenizer

from data_prep import majority_rate
from ssmlora.config import AdapterConfig
from ssmlora.inject import count_parameters, enable_gradient_checkpointing, inject_adapters
from ssmlora.lab.backbone import ModelConfig, load_backbone, resolve_model_path
from ssmlora.lab.data import DataConfig, SealedSplit, TaskDataModule, build_splits
from ssmlora.lab.extrapolate import longest_length, score_longer
from ssmlora.lab.cell_memory import (EVAL_BATCHES, MEMORY_STEPS, count_memory, memory_pass_apart, phase_columns,
                                     process_memory)
from ssmlora.lab.forked import run_forked
from ssmlora.lab.memory import PhaseMeter, configure_allocator_for_measurement
from ssmlora.lab.module import AdapterClassifier, OptimConfig
from ssmlora.lab.predictions import doc_ids, gather_predictions, predictions_file, write_predictions
from ssmlora.lab.probe import init_head_from_probe, probe_predictions
from ssmlora.lab.profilers import ThroughputCallback
from ssmlora.lab.progress import StepProgressBar
from ssmlora.lab.runtime import RuntimeConfig, batch_plan, is_rank_zero, quiet_libraries
from ssmlora.serialization import load_adapters, save_adapters, ssm_state_snapshot
from results import PROBE_PREDICTIONS_FILE, cell_tag


@dataclass
class CellConfig:
    """Everything one cell needs: what to adapt and how, at which length and seed."""

    adapter: AdapterConfig  # `method` is this cell's method
    max_len: int
    seed: int
    lr: float | None = None  # the adapter matrices' peak rate (None: a method without adapters)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    label: str = ""  # the sweep's name for this cell's method, e.g. "ssmlora:scan" (empty: the method's name)
    tuning: bool = False  # a selection cell: scored on validation, the test split sealed (any read raises)
    selected_on: str = "default"  # where `lr` came from: "default" (registry/--lr) or e.g. "val@L512"

    @property
    def method(self) -> str:
        return self.adapter.method

    def __post_init__(self) -> None:
        self.label = self.label or self.adapter.method

    def tag(self) -> str:
        return cell_tag(self.label, self.max_len, self.seed)

    def batch_plan(self) -> tuple[int, int, int]:
        """(effective batch, micro-batch per device, accumulation steps)."""
        return batch_plan(self.optim.tokens_per_step, self.runtime, self.max_len)


def run_cell(cfg: CellConfig, cell_dir: str | os.PathLike, probe_dir: str | os.PathLike | None = None) -> dict:
    """Train and score one cell with Lightning; return its results-row fields.

    `probe_dir`: where the probe's frozen features are cached per (length, seed), so every method of a sweep
    starts from the same head (default: beside `cell_dir`).
    """
    start = time.perf_counter()
    cell_dir = Path(cell_dir)
    probe_root = Path(probe_dir or cell_dir.parent)
    quiet_libraries(cfg.runtime.verbose)
    torch.set_num_threads(cfg.runtime.torch_threads())
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    _, micro, accumulate = cfg.batch_plan()
    device = cell_device(cfg)
    # Where the memory figures come from: a forked pass of their own, so that the timed run below keeps glibc's
    # own allocator settings (ssmlora.lab.cell_memory); or this run (GPU, several ranks); a selection cell has none.
    memory, memory_s = None, None
    if not cfg.tuning and memory_pass_apart(cfg):
        memory = run_forked(measure_memory, cfg, probe_root)
        memory_s = time.perf_counter() - start
    in_run = not cfg.tuning and memory is None
    if in_run:
        configure_allocator_for_measurement()  # freed tensors leave RSS at once: each phase is measured on its own
    phases: dict = memory["phases"] if memory else {}
    meter = (lambda phase, on: PhaseMeter(phase, on, phases)) if in_run else (lambda *_: contextlib.nullcontext())
    with meter("build", "cpu"):  # data and backbone are built on the host
        data, labels, pad_id, model, info = build_cell(cfg, phases if in_run else {})
    if cfg.tuning:  # selection reads validation only: a test read anywhere below raises SealedSplitError
        data["test"] = SealedSplit("learning-rate tuning")
    if cfg.runtime.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    counts = count_parameters(model)
    probe, probe_rows = {}, []
    with meter("probe", device):
        if cfg.optim.head_init == "probe":
            probe = fit_head_by_probe(cfg, model, data["train"], pad_id, probe_root)
            if not cfg.tuning:  # the probe alone on the test documents: the reference fine-tuning must beat
                probe_rows = probe_predictions(model, data["test"], 2 * cfg.batch_plan()[1], cfg.runtime.precision,
                                               pad_id, cache=probe_root / f"L{cfg.max_len}-test.safetensors",
                                               write_cache=is_rank_zero())
                probe["probe_accuracy"] = sum(r["label"] == r["prediction"] for r in probe_rows) / len(probe_rows)
    counted = {}  # a selection cell reports no memory
    if memory:
        counted = memory["counted"]
    elif in_run:
        counted = count_memory(cfg, model, micro, device)
    steps = total_steps(cfg, data)
    module = AdapterClassifier(model, len(labels), cfg.optim, lr=cfg.lr, max_steps=steps)
    speed = ThroughputCallback(warmup_steps=1 if steps > 2 else 0)
    callbacks = [speed, StepProgressBar()]
    validate = cfg.optim.val_every > 0
    if validate:
        callbacks.append(ModelCheckpoint(dirpath=str(cell_dir / "checkpoints"), monitor="val_acc", mode="max",
                                         save_top_k=1, save_weights_only=True))
    trainer = make_trainer(cfg, steps, callbacks, logger=CSVLogger(str(cell_dir), name="", version=""),
                           validate=validate, default_root_dir=str(cell_dir))
    dm = TaskDataModule(data, micro, cfg.seed, pad_id)
    if validate:  # the learning curve's step 0: the head as the probe left it, on the same validation documents
        trainer.validate(module, datamodule=dm, verbose=False)  # a checkpoint is only ever saved during fit
        for metric in module.metrics.values():  # states made in inference mode would refuse fit's in-place updates
            metric.reset()
    module.train()  # from_pretrained returns eval mode; adapter and hidden dropout must be live in training
    # Training's randomness (dropout) starts from the seed alone, whatever ran before: a cold or warm cache, the
    # probe, the memory count, the longest eval length.
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    with meter("train", device):  # validation during fit included
        trainer.fit(module, datamodule=dm)
    best = trainer.checkpoint_callback.best_model_path if validate and trainer.checkpoint_callback else ""
    if cfg.tuning:
        trainer.limit_val_batches = 1.0  # off during fit when val_every is 0; the trial is scored on all of it
        scores = trainer.validate(module, datamodule=dm, ckpt_path=best or None, verbose=False)[0]
        return {"status": "ok", "lr": cfg.lr, "val_acc": scores.get("val_acc"), "val_loss": scores.get("val_loss"),
                "n_validation": int(scores.get("val_n", 0)), "train_steps": trainer.global_step,
                "wall_s": time.perf_counter() - start}
    test_start = time.perf_counter()
    # The checkpoint holds weights only; a carried SSMLoRA state is whatever training left, and the test batches
    # move it on. Keep the state the test starts from, so the saved adapter re-scores to the reported numbers.
    state = ssm_state_snapshot(model)
    with meter("eval", device):
        scores = trainer.test(module, datamodule=dm, ckpt_path=best or None, verbose=False)[0]
    test_s = time.perf_counter() - test_start
    flops_dtype = torch.float32 if cfg.runtime.precision == "32" else torch.bfloat16
    mem, rates, ranks = reduce_cell_figures(trainer, model, process_memory(device), speed, flops_dtype)
    predictions = gather_predictions(trainer, module.predictions)
    if trainer.is_global_zero:
        save_adapters(model, cell_dir / "adapter", ssm_state=state)  # the tested weights: identical on every rank
        write_predictions(cell_dir / predictions_file(), predictions, doc_ids(data["test"]))
        if probe_rows:
            write_predictions(cell_dir / PROBE_PREDICTIONS_FILE, probe_rows, doc_ids(data["test"]))
    longer = score_longer(cfg, trainer, module, data["test"], scores, resolve_model_path(cfg.model.model), pad_id,
                          micro, cell_dir) if cfg.data.eval_lengths else []
    return {
        "status": "ok",
        "accuracy": scores.get("test_acc"),
        "macro_f1": scores.get("test_f1"),
        "n_test": int(scores.get("test_n", 0)),
        "majority_rate": majority_rate(data["test"]),
        **{k: counts[k] for k in ("adapter_params", "head_params", "trainable_params")},
        **mem,
        **phase_columns(phases, counted, device),
        **{k: v for k, v in rates.items() if k != "timed_steps"},
        "train_steps": trainer.global_step,
        "wall_s": time.perf_counter() - start,
        **probe,
        "attn_impl": info.attn_impl,
        "test_s": test_s,
        "fit_s": test_start - start,
        "memory_pass_s": memory_s,  # the memory figures' own pass, part of fit_s and wall_s (None: measured in the run)
        "micro_batch": micro,
        "accumulate": accumulate,
        "world_size": trainer.world_size,
        "strategy": type(trainer.strategy).__name__,
        "ranks": ranks,  # per rank: peak memory, tokens/s, adapter hash (result.json only, not results.csv)
        "extrapolation": longer,  # rows of extrapolation.csv (less method, seed), result.json only
        "phases": phases,  # every phase's raw figures (result.json only)
    }


def total_steps(cfg: CellConfig, data) -> int:
    """Optimizer steps of the cell's training (`epochs` needs the step count up front for the schedule)."""
    if cfg.optim.epochs > 0:
        return cfg.optim.epochs * max(1, len(data["train"]) // cfg.batch_plan()[0])
    return cfg.optim.max_steps


def make_trainer(cfg: CellConfig, steps: int, callbacks: list, logger=False, validate: bool = False,
                 **kwargs) -> L.Trainer:
    """The cell's Lightning Trainer: its devices, strategy, precision, accumulation and clipping."""
    rt, accumulate = cfg.runtime, cfg.batch_plan()[2]
    return L.Trainer(
        accelerator=rt.accelerator, devices=rt.devices, num_nodes=rt.num_nodes, strategy=make_strategy(rt),
        precision=rt.precision, max_steps=steps, max_epochs=-1, accumulate_grad_batches=accumulate,
        gradient_clip_val=cfg.optim.grad_clip, logger=logger, callbacks=callbacks, enable_checkpointing=validate,
        limit_val_batches=1.0 if validate else 0,
        val_check_interval=cfg.optim.val_every * accumulate if validate else None, check_val_every_n_epoch=None,
        num_sanity_val_steps=0, log_every_n_steps=1, enable_model_summary=False, use_distributed_sampler=False,
        **kwargs,
    )


def measure_memory(cfg: CellConfig, probe_root: Path) -> dict:
    """The cell's memory figures from a short pass of its own, under the measurement allocator: the build, the
    probe's head fit, one optimizer step and one micro-batch more, and `EVAL_BATCHES` validation batches, each a
    phase, and the counted decomposition (ssmlora.lab.cell_memory). Run in a forked child (`run_forked`), where
    the allocator setting stays. The test split is not read. Returns {"phases": ..., "counted": ...}."""
    configure_allocator_for_measurement()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    device, micro = cell_device(cfg), cfg.batch_plan()[1]
    phases: dict = {}
    with PhaseMeter("build", "cpu", phases):
        data, labels, pad_id, model, _ = build_cell(cfg, phases)
    if cfg.runtime.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    with PhaseMeter("probe", device, phases):
        if cfg.optim.head_init == "probe":
            fit_head_by_probe(cfg, model, data["train"], pad_id, probe_root)
    counted = count_memory(cfg, model, micro, device)
    module = AdapterClassifier(model, len(labels), cfg.optim, lr=cfg.lr, max_steps=total_steps(cfg, data))
    # The peak needs AdamW's state, made by the first optimizer step, and one micro-batch's backward after it.
    measured_steps = min(total_steps(cfg, data), MEMORY_STEPS)
    trainer = make_trainer(cfg, measured_steps, [], enable_progress_bar=False,
                           limit_train_batches=cfg.batch_plan()[2] * (measured_steps - 1) + 1)
    dm = TaskDataModule(data, micro, cfg.seed, pad_id)
    module.train()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    with PhaseMeter("train", device, phases):
        trainer.fit(module, datamodule=dm)
    if len(data.get("validation") or ()) > 0:
        trainer.limit_val_batches = EVAL_BATCHES
        with PhaseMeter("eval", device, phases):
            trainer.validate(module, datamodule=dm, verbose=False)
    return {"phases": phases, "counted": counted}


def cell_device(cfg: CellConfig) -> torch.device:
    """The device this process trains on (the rank's own GPU under DDP)."""
    if cfg.runtime.uses_gpu():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0") or 0))
    return torch.device("cpu")


def fit_head_by_probe(cfg: CellConfig, model, train, pad_id: int, probe_root: Path) -> dict:
    """LP-FT's first stage (ssmlora/lab/probe.py) with the features cached in `probe_root` per length and seed."""
    cache = probe_root / f"L{cfg.max_len}-s{cfg.seed}.safetensors"
    if cfg.runtime.uses_gpu():  # the Trainer would move it there anyway; the probe's forwards should run there too
        model.to(torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0") or 0)))
    micro = cfg.batch_plan()[1]
    return init_head_from_probe(model, train, cfg.optim.probe_examples, cfg.seed, 2 * micro, cfg.runtime.precision,
                                pad_id, cache=cache, write_cache=is_rank_zero())


def make_strategy(runtime: RuntimeConfig):
    """Lightning strategy of a cell: "auto" for one process, else DDP / FSDP set up for adapters.

    DDP: `broadcast_buffers=False`, because SSMLoRA's `carry` state lives in (non-persistent) buffers of
    `model.ssm_state` and is per rank: each rank carries the state of the batches it saw, and broadcasting
    rank 0's buffers at every forward would overwrite it (and fail on shape when batches differ).
    FSDP: `use_orig_params=True`, so frozen base weights and trainable adapter matrices can share a flat
    parameter; adapters are plain nn.Modules holding the base nn.Linear, so FSDP wraps them like any layer.
    Under torchrun (TORCHELASTIC_RUN_ID, also set by the sweep's own launcher) the cluster environment is
    given explicitly, so an enclosing SLURM allocation is not mistaken for the launcher.
    """
    from lightning.fabric.plugins.environments import TorchElasticEnvironment
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    name = runtime.distributed_strategy()
    if name is None:
        return runtime.strategy
    kwargs = {"cluster_environment": TorchElasticEnvironment()} if "TORCHELASTIC_RUN_ID" in os.environ else {}
    if name == "ddp":
        return DDPStrategy(broadcast_buffers=False, **kwargs)
    return FSDPStrategy(use_orig_params=True, **kwargs)


def adapter_digest(model: torch.nn.Module) -> str:
    """sha256 over the names and bytes of every trainable tensor (adapters + head): equal iff identical."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def reduce_cell_figures(trainer, model, mem: dict, speed, flops_dtype) -> tuple[dict, dict, list[dict]]:
    """Peak memory = max over ranks; rates = global sum of the per-rank rates; plus the per-rank figures.
    `mem`: this rank's `process_memory`."""
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


def build_cell(cfg: CellConfig, phases: dict | None = None):
    """The cell's data and adapted backbone, built the same way for training and for re-scoring saved adapters.
    Returns (data, label names, pad id, model, BackboneInfo); a cold data cache's build figures go to `phases`."""
    tokenizer = resolve_model_path(cfg.model.model)
    data = build_splits(cfg.data, cfg.max_len, tokenizer, phases)
    labels = list(data["train"].features["label"].names)
    pad_id = pad_token_id(tokenizer)
    model, info = load_backbone(cfg.model.model, num_labels=len(labels), max_len=longest_length(cfg),
                                attn_implementation=cfg.model.attn, id2label=dict(enumerate(labels)),
                                pad_token_id=pad_id, pooling=cfg.model.pooling)
    torch.manual_seed(cfg.seed)  # adapter init depends on the seed only, not on what loading drew before it
    inject_adapters(model, cfg.adapter)
    return data, labels, pad_id, model, info


def evaluate_adapters(cfg: CellConfig, adapter_dir: str | os.PathLike) -> dict:
    """Score saved adapters (a cell's `adapter/` folder) on the cell's test split in this one process.

    Builds the backbone and test subset exactly as `run_cell` does, so the accuracy equals the cell's own,
    whatever the number of ranks that trained and scored it. Returns {"accuracy", "macro_f1", "n_test"}.
    """
    quiet_libraries(cfg.runtime.verbose)
    torch.set_num_threads(cfg.runtime.torch_threads())
    data, labels, pad_id, model, _ = build_cell(cfg)
    load_adapters(model, adapter_dir)
    module = AdapterClassifier(model, len(labels))
    trainer = L.Trainer(accelerator=cfg.runtime.accelerator, devices=1, precision=cfg.runtime.precision,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False)
    dm = TaskDataModule(data, cfg.batch_plan()[1], cfg.seed, pad_id)
    scores = trainer.test(module, datamodule=dm, verbose=False)[0]
    return {"accuracy": scores.get("test_acc"), "macro_f1": scores.get("test_f1"), "n_test": int(scores["test_n"])}


def run_cell_safely(cfg: CellConfig, cell_dir: str | os.PathLike, probe_dir: str | os.PathLike | None = None) -> dict:
    """`run_cell`, with an out-of-memory or any other error turned into a status (the sweep goes on)."""
    start = time.perf_counter()
    cell_dir = Path(cell_dir)
    cell_dir.mkdir(parents=True, exist_ok=True)
    try:
        return run_cell(cfg, cell_dir, probe_dir)
    except (torch.OutOfMemoryError, MemoryError) as err:
        status = "oom"
        detail = str(err)
    except Exception as err:  # noqa: BLE001 - any failure of one cell must not stop the sweep
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        status = f"failed: {type(err).__name__}: {first}"
        detail = traceback.format_exc()
    rank = int(os.environ.get("RANK", "0") or 0)  # under DDP every rank that fails leaves its own report
    (cell_dir / ("error.txt" if rank == 0 else f"error-rank{rank}.txt")).write_text(detail)
    return {"status": status, "wall_s": time.perf_counter() - start}


def pad_token_id(tokenizer_path: str) -> int:
    """The tokenizer's pad id; decoder tokenizers without one pad with EOS (masked out anyway)."""
    tok = AutoTokenizer.from_pretrained(tokenizer_path)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return int(pad or 0)
