"""The memory figures of a cell: the counted decomposition, the phase columns, the process peak, and when the
measured phases come from a pass of their own.

Why a pass of its own: RSS follows freed tensors only with glibc's mmap threshold fixed low
(`configure_allocator_for_measurement`), and that setting makes every CPU training step pay for the figure: the
CPU flash-attention kernels' block buffers become a fresh, zeroed mmap each, and the kernel time that costs
slows every long step (docs/sweep.md, "How a cell is measured"). `mallopt` cannot be undone within a process (it turns
glibc's dynamic threshold off for good), so the cell forks before it computes anything; the child sets the
measurement allocator, repeats the cell's phases in short (`ssmlora.lab.cell.measure_memory`: build, probe,
one optimizer step and one micro-batch more, `EVAL_BATCHES` batches of validation) and sends back its figures;
the parent then runs the timed cell with glibc's own settings. Later steps hold nothing the first micro-batch
after an optimizer step does not (AdamW's state exists from the first step on), so this measures what fifteen
steps would. The eval phase reads validation batches, of the test's size and length: the test split is read once,
by the timed run.
"""

from __future__ import annotations

import copy

import torch

from ssmlora.lab.forked import can_fork
from ssmlora.lab.memory import measure_activations, memory_decomposition, process_peak, synthetic_batch

# How the memory figures are taken, part of a sweep's identity: rows of different protocols are not comparable.
# 1: within the timed run (ssmlora up to 0.1.0 at 626a879); 2: a pass of its own (on the CPU, one process per cell).
MEMORY_PROTOCOL = 2
MEMORY_STEPS = 2  # optimizer steps of the memory pass: the second is one micro-batch long (see above)
EVAL_BATCHES = 2  # validation batches of the memory pass's eval phase (one batch sets the peak; two for safety)


def memory_pass_apart(cfg) -> bool:
    """Whether the cell's measured phases run in a forked pass of their own: on the CPU, one process per cell, in
    a fresh process (a sweep's cell process; `ssmlora.lab.forked.can_fork`). CUDA's figures come from torch's own
    counters, which cost the training nothing, and a multi-process cell keeps its ranks in step, so those measure
    within the run, as does a cell run in a process that has computed before (`--in-process`, a test)."""
    return can_fork() and not cfg.runtime.uses_gpu() and cfg.runtime.distributed_strategy() is None


_AUTOCAST = {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def count_memory(cfg, model, micro: int, device: torch.device) -> dict:
    """The counted decomposition of this cell's training step (ssmlora.lab.memory), in MiB.

    Weights, gradients and AdamW state from shapes; activations from one forward of a copy of the model at
    micro-batch 1 and the cell's L (a full-length synthetic sequence, no padding) with the saved-tensor counter.
    The copy and a forked RNG leave the model, its SSM state and the training's random stream untouched.
    `activations_mb` = autocast weight copies + micro-batch x per-sequence bytes: one micro-batch's graph.
    """
    fixed = memory_decomposition(model, "adamw")
    forked = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked):
        twin = copy.deepcopy(model).to(device).train()
        acts = measure_activations(twin, synthetic_batch(twin, cfg.max_len, 1, device), _AUTOCAST[cfg.runtime.precision])
        del twin
    return {"weights_frozen_mb": fixed["weights_frozen_mb"] + fixed["buffers_mb"],
            "weights_trainable_mb": fixed["weights_trainable_mb"], "grads_mb": fixed["grads_mb"],
            "optimizer_mb": fixed["optimizer_mb"],
            "activations_mb": acts["weight_copies_mb"] + micro * acts["activations_mb_per_seq"],
            "activations_mb_per_seq": acts["activations_mb_per_seq"]}


def phase_columns(phases: dict, counted: dict, device: torch.device) -> dict:
    """The results.csv memory columns of the phases and the counted decomposition (docs/sweep.md).

    CUDA: a phase's figure is its max allocated (every live tensor, weights included); CPU: the rise of RSS
    over the phase's start (weights were resident before training, so they are not part of it). The
    unexplained remainder subtracts from the training figure what that figure contains of the count.
    """
    cuda = device.type == "cuda"
    figure = (lambda p: phases.get(f"{p}_peak_mb")) if cuda else (lambda p: phases.get(f"{p}_rise_mb"))
    train = figure("train")
    dynamic = counted["grads_mb"] + counted["optimizer_mb"] + counted["activations_mb"]
    weights = counted["weights_frozen_mb"] + counted["weights_trainable_mb"]
    explained = dynamic + (weights if cuda else 0.0)
    return {"train_peak_mb": train, "eval_peak_mb": figure("eval"), "probe_peak_mb": figure("probe"),
            "build_peak_mb": None if "build_rise_mb" not in phases else  # the cache's builder is a child process
            phases["build_rise_mb"] + phases.get("data_build_rise_mb", 0.0),
            "train_reserved_mb": phases.get("train_reserved_peak_mb"),
            "eval_reserved_mb": phases.get("eval_reserved_peak_mb"),
            "mem_basis": "cuda_max_allocated" if cuda else "cpu_rss_rise",
            **counted, "unexplained_mb": None if train is None else train - explained}


def process_memory(device: torch.device) -> dict:
    """Whole-process peak of the cell's process since it started, every phase included (ssmlora.lab.memory)."""
    peak = process_peak(device)
    if device.type == "cuda":
        return {"peak_mem_mb": peak["process_peak_cuda_allocated_mb"],
                "peak_reserved_mb": peak["process_peak_cuda_reserved_mb"],
                "mem_includes": "whole process, CUDA max allocated: data build, probe, train, eval"}
    return {"peak_mem_mb": peak["process_peak_rss_mb"], "peak_reserved_mb": None,
            "mem_includes": "whole process, peak RSS: runtime, libraries, data build, probe, train, eval"}
