"""Where and how a cell runs: devices, precision, batch plan, threads, ranks, and a quiet console.

`RuntimeConfig` holds the settings that change how a cell runs but not what it computes (apart from numerics of
the precision); `batch_plan` turns a token budget into the micro-batch and accumulation of one optimizer step.
"""

from __future__ import annotations

import logging
import os
import platform
import warnings
from dataclasses import dataclass, field

PRECISIONS = ("32", "bf16-mixed", "16-mixed")
STRATEGIES = ("auto", "ddp", "fsdp")
ACCELERATORS = ("auto", "cpu", "gpu")
ADAPTER_FORMATS = ("ssmlora", "peft", "none")
LOGGERS = ("csv", "tensorboard")


@dataclass
class RuntimeConfig:
    """Hardware and execution settings of every cell."""

    precision: str = field(default="bf16-mixed", metadata={
        "help": "Lightning precision (bf16 autocast is fast on AMX CPUs and on GPUs)", "choices": PRECISIONS})
    accelerator: str = field(default="auto", metadata={
        "help": "auto (a CUDA GPU when there is one, else the CPU) | cpu | gpu", "choices": ACCELERATORS})
    devices: int = field(default=1, metadata={"help": "devices (GPUs or CPU processes) per node", "ge": 1,
                                              "integer": True})
    num_nodes: int = field(default=1, metadata={"help": "machines", "ge": 1, "integer": True})
    strategy: str = field(default="auto", metadata={
        "help": "Lightning strategy when devices x nodes > 1 (auto means ddp)", "choices": STRATEGIES})
    batch_size: int = field(default=0, metadata={
        "help": "sequences per forward per device (0: as many as micro_tokens allows)", "ge": 0, "integer": True})
    micro_tokens: int = field(default=4096, metadata={
        "help": "tokens of one forward per device when batch_size is 0", "ge": 1, "integer": True})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations in backward"})
    threads: int = field(default=0, metadata={
        "help": "torch threads per process (0: CPU cores // devices)", "ge": 0, "integer": True})
    verbose: bool = field(default=False, metadata={
        "help": "show library warnings, Lightning's info lines and the weight-loading bar"})
    save_adapters: str = field(default="ssmlora", metadata={
        "help": "keep each cell's tested adapters and head in cells/<cell>/adapter/: ssmlora (this library's "
                "format, any method; load_adapters reads it) | peft (a LoRA entry as PEFT's folder, which "
                "peft.PeftModel.from_pretrained loads; other methods have no PEFT tuner and keep ssmlora's) | "
                "none", "choices": ADAPTER_FORMATS})

    logger: str = field(default="csv", metadata={
        "help": "each cell's training log: csv (Lightning's CSVLogger, cells/<cell>/metrics.csv, which the "
                "figures read) | tensorboard (the same CSV plus TensorBoard's event files in "
                "cells/<cell>/tensorboard/: tensorboard --logdir <sweep folder>; needs the tensorboard extra)",
        "choices": LOGGERS})

    NOT_IDENTITY = ("threads", "verbose", "save_adapters", "logger")  # never what is computed

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes

    def distributed_strategy(self) -> str | None:
        """"ddp" or "fsdp" when a cell runs on more than one process; None for one process."""
        if self.world_size <= 1:
            return None
        return "ddp" if self.strategy == "auto" else self.strategy

    def uses_gpu(self) -> bool:
        import torch

        return self.accelerator == "gpu" or (self.accelerator == "auto" and torch.cuda.is_available())

    def device_type(self) -> str:
        """The device a cell runs on: "gpu" or "cpu" (what `auto` resolves to on this machine)."""
        return "gpu" if self.uses_gpu() else "cpu"

    def torch_threads(self) -> int:
        return self.threads or max(1, (os.cpu_count() or 1) // self.devices)


def batch_plan(tokens_per_step: int, runtime: RuntimeConfig, length: int) -> tuple[int, int, int]:
    """(sequences per optimizer step over all devices, sequences per forward per device, accumulation steps).

    The effective batch is a multiple of the world size, so accumulation is exact and the step means the same
    whatever the number of devices; the micro-batch is the largest divisor of the per-device batch within the cap.
    """
    world = runtime.world_size
    n = max(1, tokens_per_step // length)
    effective = max(world, (n // world) * world)
    per_device = effective // world
    cap = runtime.batch_size or max(1, runtime.micro_tokens // length)
    micro = max(d for d in range(1, per_device + 1) if per_device % d == 0 and d <= cap)
    return effective, micro, per_device // micro


def external_launcher() -> str | None:
    """Which launcher started this process as one rank of many: "torchrun", "slurm" or None."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        return "torchrun"
    if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and os.environ.get("SLURM_JOB_NAME") not in (
            "bash", "interactive"):
        return "slurm"
    return None


def is_rank_zero() -> bool:
    """Only global rank 0 writes shared files: torchrun sets RANK, srun SLURM_PROCID, and on a multi-node run
    launched by the sweep itself every node but the first has NODE_RANK > 0."""
    return all(int(os.environ.get(k, "0") or 0) == 0 for k in ("RANK", "SLURM_PROCID", "NODE_RANK"))


def environment() -> dict:
    import lightning
    import torch
    import transformers

    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "lightning": lightning.__version__,
        "platform": platform.platform(),
        "device_name": torch.cuda.get_device_name(0) if cuda else (platform.processor() or platform.machine()),
        "cpu_count": os.cpu_count(),
    }


def quiet_libraries(verbose: bool = False) -> None:
    """Keep a cell's console to its progress bar: Lightning's info lines (device summary, AMP, tips, "max_steps
    reached"), the weight-loading and dataset bars and three known, harmless warnings. `verbose` keeps them all."""
    if verbose:
        return
    from datasets.utils import logging as ds_logging
    from transformers.utils import logging as hf_logging

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    hf_logging.disable_progress_bar()
    ds_logging.disable_progress_bar()  # e.g. "Flattening the indices" when a scored subset is materialised
    # Lightning 2.6 on torch 2.13: its own pytree helper uses a deprecated torch name.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # scikit-learn 1.8: a future default of LogisticRegressionCV that does not change the L2 fit used here.
    warnings.filterwarnings("ignore", category=FutureWarning, message=r".*l1_ratios.*")
    # Evaluation loaders run in the main process on purpose (determinism; collation is trivial).
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
