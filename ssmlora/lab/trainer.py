"""The Lightning side of one cell: its Trainer and strategy, and the figures reduced over its ranks."""

from __future__ import annotations

import hashlib
import os

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from ssmlora.lab.runtime import RuntimeConfig


def cell_loggers(runtime: RuntimeConfig, cell_dir) -> list:
    """Lightning's CSVLogger (metrics.csv, which the figures read), and TensorBoard's beside it with --logger
    tensorboard (cell_dir/tensorboard/): the training loss, learning rate, validation scores and step time."""
    loggers = [CSVLogger(str(cell_dir), name="", version="")]
    if runtime.logger == "tensorboard":
        loggers.append(TensorBoardLogger(str(cell_dir), name="", version="tensorboard", default_hp_metric=False))
    return loggers


def total_steps(cfg, data) -> int:
    """Optimizer steps of the cell's training (`epochs` needs the step count up front for the schedule)."""
    if cfg.optim.epochs > 0:
        return cfg.optim.epochs * max(1, len(data["train"]) // cfg.batch_plan()[0])
    return cfg.optim.max_steps


def make_trainer(cfg, steps: int, callbacks: list, logger=False, validate: bool = False,
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
