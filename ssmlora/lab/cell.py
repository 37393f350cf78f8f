"""One sweep cell: build its data and adapted backbone, fit the head by probe, train, score, save.

A cell knows nothing of the sweep around it: `CellConfig` holds everything it needs, with the method's learning
rate already resolved. `run_cell` returns the cell's fields of the results row (results).
"""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from transformers import AutoTokenizer

from data_prep import majority_rate
from results import PROBE_PREDICTIONS_FILE, cell_tag, predictions_file, write_atomically
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
from ssmlora.lab.predictions import doc_ids, gather_predictions, write_predictions
from ssmlora.lab.probe import init_head_from_probe, probe_predictions
from ssmlora.lab.profilers import ThroughputCallback
from ssmlora.lab.progress import StepProgressBar
from ssmlora.lab.runtime import RuntimeConfig, batch_plan, is_rank_zero, quiet_libraries
from ssmlora.lab.trainer import cell_loggers, make_trainer, reduce_cell_figures, total_steps
from ssmlora.serialization import load_adapters, save_adapters, ssm_state_snapshot


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
    role: str = "accuracy"  # "cost": a cost cell, timed and measured, nothing scored (run_cell)

    @property
    def method(self) -> str:
        return self.adapter.method

    def __post_init__(self) -> None:
        self.label = self.label or self.adapter.method

    def tag(self) -> str:
        return cell_tag(self.label, self.max_len, self.seed, self.role)

    def batch_plan(self) -> tuple[int, int, int]:
        """(effective batch, micro-batch per device, accumulation steps)."""
        return batch_plan(self.optim.tokens_per_step, self.runtime, self.max_len)


def run_cell(cfg: CellConfig, cell_dir: str | os.PathLike, probe_dir: str | os.PathLike | None = None) -> dict:
    """Train and score one cell with Lightning; return its results-row fields. The cell's phases, in order:
    memory figures (a forked pass of their own where they can be), build, probe, train, then validation only (a
    selection cell), nothing more (a cost cell: its row holds what the training steps cost) or test, outputs and
    longer reads.

    `probe_dir`: where the probe's frozen features are cached per (length, seed), so every method of a sweep
    starts from the same head (default: beside `cell_dir`).
    """
    start = time.perf_counter()
    cell_dir, device = Path(cell_dir), cell_device(cfg)
    probe_root = Path(probe_dir or cell_dir.parent)
    start_process(cfg)
    meter = measure_cell_memory(cfg, probe_root, device)
    memory_s = time.perf_counter() - start if meter.apart else None
    built = build_phase(cfg, meter)
    probe, probe_rows = probe_phase(cfg, built, probe_root, meter, device, score_test=not cfg.tuning)
    counted = count_memory(cfg, built.model, cfg.batch_plan()[1], device) if meter.in_run else meter.counted
    fit = train_phase(cfg, built, cell_dir, meter, device)
    if cfg.tuning:
        return {"status": "ok", "lr": cfg.lr, **validation_scores(fit), "train_steps": fit.trainer.global_step,
                "wall_s": time.perf_counter() - start}
    if cfg.role == "cost":
        return {"status": "ok", **cost_fields(cfg, built, fit, meter, counted, device), "wall_s":
                time.perf_counter() - start, "fit_s": time.perf_counter() - start, "memory_pass_s": memory_s}
    test_start = time.perf_counter()
    scores, state = test_phase(fit, built.model, meter, device)
    test_s = time.perf_counter() - test_start
    costs = cost_fields(cfg, built, fit, meter, counted, device)
    save_outputs(built, fit, state, probe_rows, cell_dir, keep=cfg.runtime.save_adapters)
    longer = score_longer(cfg, fit.trainer, fit.module, built.data["test"], scores,
                          resolve_model_path(cfg.model.model), built.pad_id, cfg.batch_plan()[1],
                          cell_dir) if cfg.data.eval_lengths else []
    return {
        "status": "ok",
        "accuracy": scores.get("test_acc"),
        "macro_f1": scores.get("test_f1"),
        "n_test": int(scores.get("test_n", 0)),
        "majority_rate": majority_rate(built.data["test"]),
        **costs,
        "wall_s": time.perf_counter() - start,
        **probe,
        "test_s": test_s,
        "fit_s": test_start - start,
        "memory_pass_s": memory_s,  # the memory figures' own pass, part of fit_s and wall_s (None: measured in the run)
        "extrapolation": longer,  # rows of extrapolation.csv (less method, seed), result.json only
    }


def cost_fields(cfg: CellConfig, built: Built, fit: Fit, meter: Meter, counted: dict, device) -> dict:
    """What a cell's training cost, for its row: parameter counts, memory (per phase, counted parts), speed and
    how the steps ran. Taken after the cell's last phase, so the whole-process peak covers every phase."""
    flops_dtype = torch.float32 if cfg.runtime.precision == "32" else torch.bfloat16
    mem, rates, ranks = reduce_cell_figures(fit.trainer, built.model, process_memory(device), fit.speed, flops_dtype)
    _, micro, accumulate = cfg.batch_plan()
    return {
        **{k: built.counts[k] for k in ("adapter_params", "head_params", "trainable_params")},
        **mem,
        **phase_columns(meter.phases, counted, device),
        **{k: v for k, v in rates.items() if k != "timed_steps"},
        "train_steps": fit.trainer.global_step,
        "attn_impl": built.info.attn_impl,
        "micro_batch": micro,
        "accumulate": accumulate,
        "world_size": fit.trainer.world_size,
        "strategy": type(fit.trainer.strategy).__name__,
        "ranks": ranks,  # per rank: peak memory, tokens/s, adapter hash (result.json only, not results.csv)
        "phases": meter.phases,  # every phase's raw figures (result.json only)
    }


@dataclass
class Meter:
    """Where a cell's memory figures come from: a forked pass of their own (`apart`: the timed run keeps glibc's
    own allocator settings, ssmlora.lab.cell_memory), this run's phases (`in_run`: GPU, several ranks), or nowhere
    (a selection cell). Calling it wraps one phase in its meter when this run measures."""

    in_run: bool
    apart: bool = False
    phases: dict = field(default_factory=dict)
    counted: dict = field(default_factory=dict)

    def __call__(self, phase: str, device):
        return PhaseMeter(phase, device, self.phases) if self.in_run else contextlib.nullcontext()


@dataclass
class Built:
    """What a cell trains and scores (`build_cell`), with its parameter counts."""

    data: dict
    labels: list[str]
    pad_id: int
    model: torch.nn.Module
    info: object  # the backbone's BackboneInfo
    counts: dict


@dataclass
class Fit:
    """A trained cell: its module, trainer, data module, throughput meter and the checkpoint to score."""

    module: AdapterClassifier
    trainer: L.Trainer
    datamodule: TaskDataModule
    speed: ThroughputCallback
    best: str


def start_process(cfg: CellConfig) -> None:
    """The process's library noise, threads and seed, before anything of the cell is built."""
    quiet_libraries(cfg.runtime.verbose)
    torch.set_num_threads(cfg.runtime.torch_threads())
    L.seed_everything(cfg.seed, workers=True, verbose=False)


def measure_cell_memory(cfg: CellConfig, probe_root: Path, device: torch.device) -> Meter:
    """The memory figures: from a forked pass of their own where the cell allows it, else measured in this run
    (under the measurement allocator, set here), or none for a selection cell."""
    if cfg.tuning:
        return Meter(in_run=False)
    if memory_pass_apart(cfg):
        memory = run_forked(measure_memory, cfg, probe_root)
        return Meter(in_run=False, apart=True, phases=memory["phases"], counted=memory["counted"])
    configure_allocator_for_measurement()  # freed tensors leave RSS at once: each phase is measured on its own
    return Meter(in_run=True)


def build_phase(cfg: CellConfig, meter: Meter) -> Built:
    """Data and adapted backbone, built on the host; a selection cell seals its test split here, so a test read
    anywhere after raises SealedSplitError."""
    with meter("build", "cpu"):
        data, labels, pad_id, model, info = build_cell(cfg, meter.phases if meter.in_run else {})
    if cfg.tuning:
        data["test"] = SealedSplit("learning-rate tuning")
    if cfg.runtime.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return Built(data, labels, pad_id, model, info, count_parameters(model))


def probe_phase(cfg: CellConfig, built: Built, probe_root: Path, meter: Meter, device,
                score_test: bool) -> tuple[dict, list[dict]]:
    """LP-FT's first stage, and (`score_test`) the probe alone on the test documents: the reference fine-tuning
    must beat. Returns (probe's row fields, its per-document predictions)."""
    probe, rows = {}, []
    with meter("probe", device):
        if cfg.optim.head_init == "probe":
            probe = fit_head_by_probe(cfg, built.model, built.data["train"], built.pad_id, probe_root, device)
            if score_test:
                rows = probe_predictions(built.model, built.data["test"], 2 * cfg.batch_plan()[1],
                                         cfg.runtime.precision, built.pad_id,
                                         cache=probe_root / f"L{cfg.max_len}-test.safetensors",
                                         write_cache=is_rank_zero())
                probe["probe_accuracy"] = sum(r["label"] == r["prediction"] for r in rows) / len(rows)
    return probe, rows


def train_phase(cfg: CellConfig, built: Built, cell_dir: Path, meter: Meter, device) -> Fit:
    """Fine-tune with Lightning, logging to the cell's CSV log; with --val-every, validate from step 0 (the head
    as the probe left it) and keep the best checkpoint."""
    steps, micro = total_steps(cfg, built.data), cfg.batch_plan()[1]
    module = AdapterClassifier(built.model, len(built.labels), cfg.optim, lr=cfg.lr, max_steps=steps)
    speed = ThroughputCallback(warmup_steps=1 if steps > 2 else 0)
    # The rate monitor first: it logs at each step's start, before the throughput callback starts its clock.
    callbacks = [LearningRateMonitor(logging_interval="step"), speed, StepProgressBar()]
    validate = cfg.optim.val_every > 0
    if validate:
        callbacks.append(ModelCheckpoint(dirpath=str(cell_dir / "checkpoints"), monitor="val_acc", mode="max",
                                         save_top_k=1, save_weights_only=True))
    trainer = make_trainer(cfg, steps, callbacks, logger=cell_loggers(cfg.runtime, cell_dir), validate=validate,
                           default_root_dir=str(cell_dir))
    dm = TaskDataModule(built.data, micro, cfg.seed, built.pad_id)
    if validate:  # the learning curve's step 0, on the same validation documents
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
    return Fit(module, trainer, dm, speed, best)


def validation_scores(fit: Fit) -> dict:
    """A selection cell's score: the best (or last) weights on the whole validation split."""
    fit.trainer.limit_val_batches = 1.0  # off during fit when val_every is 0; the trial is scored on all of it
    scores = fit.trainer.validate(fit.module, datamodule=fit.datamodule, ckpt_path=fit.best or None,
                                  verbose=False)[0]
    return {"val_acc": scores.get("val_acc"), "val_loss": scores.get("val_loss"),
            "n_validation": int(scores.get("val_n", 0))}


def test_phase(fit: Fit, model: torch.nn.Module, meter: Meter, device) -> tuple[dict, dict]:
    """The test split, read once, with the tested weights; returns (scores, the SSMLoRA state the test started
    from). The checkpoint holds weights only; a carried SSMLoRA state is whatever training left, and the test
    batches move it on: kept, so the saved adapter re-scores to the reported numbers."""
    state = ssm_state_snapshot(model)
    with meter("eval", device):
        scores = fit.trainer.test(fit.module, datamodule=fit.datamodule, ckpt_path=fit.best or None, verbose=False)[0]
    return scores, state


def save_outputs(built: Built, fit: Fit, state: dict, probe_rows: list[dict], cell_dir: Path,
                 keep: str = "ssmlora") -> None:
    """The tested adapters (identical on every rank) in the format `keep` names (`--save-adapters`), the
    per-document predictions and the probe's, by rank 0."""
    predictions = gather_predictions(fit.trainer, fit.module.predictions)  # every rank takes part
    if fit.trainer.is_global_zero:
        ids = doc_ids(built.data["test"])
        if keep != "none":  # only LoRA has a PEFT tuner; other methods keep this library's format
            lora = built.model.adapter_config.method == "lora"  # every cell's model is injected, frozen included
            save_adapters(built.model, cell_dir / "adapter", ssm_state=state,
                          format="peft" if keep == "peft" and lora else "ssmlora")
        write_predictions(cell_dir / predictions_file(), predictions, ids)
        if probe_rows:
            write_predictions(cell_dir / PROBE_PREDICTIONS_FILE, probe_rows, ids)


def measure_memory(cfg: CellConfig, probe_root: Path) -> dict:
    """The cell's memory figures from a short pass of its own, under the measurement allocator: the cell's build
    and probe phases, one optimizer step and one micro-batch more, and `EVAL_BATCHES` validation batches, each a
    phase, and the counted decomposition (ssmlora.lab.cell_memory). Run in a forked child (`run_forked`), where
    the allocator setting stays. The test split is not read. Returns {"phases": ..., "counted": ...}."""
    configure_allocator_for_measurement()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    device, micro, meter = cell_device(cfg), cfg.batch_plan()[1], Meter(in_run=True)
    built = build_phase(cfg, meter)
    probe_phase(cfg, built, probe_root, meter, device, score_test=False)
    counted = count_memory(cfg, built.model, micro, device)
    module = AdapterClassifier(built.model, len(built.labels), cfg.optim, lr=cfg.lr,
                               max_steps=total_steps(cfg, built.data))
    # The peak needs AdamW's state, made by the first optimizer step, and one micro-batch's backward after it.
    measured_steps = min(total_steps(cfg, built.data), MEMORY_STEPS)
    trainer = make_trainer(cfg, measured_steps, [], enable_progress_bar=False,
                           limit_train_batches=cfg.batch_plan()[2] * (measured_steps - 1) + 1)
    dm = TaskDataModule(built.data, micro, cfg.seed, built.pad_id)
    module.train()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    with meter("train", device):
        trainer.fit(module, datamodule=dm)
    if len(built.data.get("validation") or ()) > 0:
        trainer.limit_val_batches = EVAL_BATCHES
        with meter("eval", device):
            trainer.validate(module, datamodule=dm, verbose=False)
    return {"phases": meter.phases, "counted": counted}


def cell_device(cfg: CellConfig) -> torch.device:
    """The device this process trains on (the rank's own GPU under DDP)."""
    if cfg.runtime.uses_gpu():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0") or 0))
    return torch.device("cpu")


def fit_head_by_probe(cfg: CellConfig, model, train, pad_id: int, probe_root: Path,
                      device: torch.device | None = None) -> dict:
    """LP-FT's first stage (ssmlora/lab/probe.py) with the features cached in `probe_root` per length and seed."""
    cache = probe_root / f"L{cfg.max_len}-s{cfg.seed}.safetensors"
    device = device or cell_device(cfg)
    if device.type == "cuda":  # the Trainer would move it there anyway; the probe's forwards should run there too
        model.to(device)
    micro = cfg.batch_plan()[1]
    return init_head_from_probe(model, train, cfg.optim.probe_examples, cfg.seed, 2 * micro, cfg.runtime.precision,
                                pad_id, cache=cache, write_cache=is_rank_zero())


def build_cell(cfg: CellConfig, phases: dict | None = None):
    """The cell's data and adapted backbone, built the same way for training and for re-scoring saved adapters.
    Returns (data, label names, pad id, model, BackboneInfo); a cold data cache's build figures go to `phases`."""
    tokenizer = resolve_model_path(cfg.model.model)
    data = build_splits(cfg.data, cfg.max_len, tokenizer, phases)
    labels = list(data["train"].features["label"].names)
    pad_id = pad_token_id(tokenizer)
    model, info = load_backbone(cfg.model.model, num_labels=len(labels), reach=longest_length(cfg),
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
    write_atomically(cell_dir / ("error.txt" if rank == 0 else f"error-rank{rank}.txt"), detail)
    return {"status": status, "wall_s": time.perf_counter() - start}


def pad_token_id(tokenizer_path: str) -> int:
    """The tokenizer's pad id; decoder tokenizers without one pad with EOS (masked out anyway)."""
    tok = AutoTokenizer.from_pretrained(tokenizer_path)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return int(pad or 0)
