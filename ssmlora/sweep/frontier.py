"""`python experiments/run.py --frontier --mem-budget 8GiB`: per method, with and without gradient
checkpointing, the longest context whose training step at micro-batch 1 fits the budget (ssmlora.lab.frontier).

Writes `<sweep folder>/frontier.csv` (columns: results.FRONTIER_COLUMNS); the figure and the report
section come from `plots`. The sweep's own settings choose the backbone, attention kernel, adapters, precision
and device, so the frontier belongs to the sweep folder those settings name.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from data_prep import MAX_EXTENDED_LEN
from results import FRONTIER_COLUMNS, SweepFolder, csv_text, write_atomically
from ssmlora.inject import enable_gradient_checkpointing, inject_adapters
from ssmlora.lab.backbone import check_backbone, load_backbone
from ssmlora.lab.frontier import FRONTIER_MMAP_THRESHOLD, cuda_budget, frontier_point
from ssmlora.lab.memory import MiB, configure_allocator_for_measurement, memory_decomposition
from ssmlora.sweep.variants import MethodVariant
from ssmlora.sweep.config import SweepConfig
from ssmlora.sweep.validate import SweepError, validate

MULTIPLE = 256
PROBE_LENGTHS = (4096, 8192)  # after a warm-up at 1024; the longest probes set the line's slope
_AUTOCAST = {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def backbone_reach(cfg: SweepConfig) -> int:
    """Longest input the backbone takes: absolute positions are extended up to MAX_EXTENDED_LEN, others not."""
    info = check_backbone(cfg.model.model, MULTIPLE)
    return MAX_EXTENDED_LEN if info.positions == "absolute" else info.native_reach


def builder(cfg: SweepConfig, variant: MethodVariant, checkpointing: bool):
    """`build(L)`: the cell's backbone at L tokens with `variant`'s adapters, as run_cell builds it."""
    def build(length: int):
        torch.manual_seed(0)
        model, info = load_backbone(cfg.model.model, num_labels=2, reach=length, attn_implementation=cfg.model.attn,
                                 pooling=cfg.model.pooling)
        inject_adapters(model, variant.adapter(cfg.adapter))
        if checkpointing:
            enable_gradient_checkpointing(model)
        build.attn_impl = info.attn_impl
        return model
    build.attn_impl = ""
    return build


def check_budget(cfg: SweepConfig, budget_bytes: int) -> float:
    """SweepError unless every method's weights fit the budget (before anything trains); returns the largest
    weights figure in MiB."""
    heaviest = 0.0
    for variant in cfg.variants:
        model = builder(cfg, variant, False)(MULTIPLE)
        sizes = memory_decomposition(model)
        heaviest = max(heaviest, sizes["weights_frozen_mb"] + sizes["weights_trainable_mb"])
        del model
    if budget_bytes < heaviest * MiB:
        raise SweepError(f"--mem-budget {budget_bytes / MiB:.0f} MiB is below the model's own weights "
                         f"({heaviest:.1f} MiB for {cfg.model.model}): no context length can fit; raise the budget")
    return heaviest


def run_frontier(cfg: SweepConfig, budget_bytes: int, out: str | os.PathLike = "lightning_logs",
                 name: str | None = None, probe_lengths: tuple[int, ...] = PROBE_LENGTHS, reach: int | None = None,
                 log=print) -> tuple[Path, list[dict]]:
    """Validate, then find every (method, checkpointing) frontier; write frontier.csv; return (folder, rows)."""
    folder = validate(cfg, Path(out), name, in_process=True)
    if cfg.runtime.world_size > 1:
        raise SweepError("--frontier measures one device: use --devices 1 --num-nodes 1")
    check_budget(cfg, budget_bytes)
    torch.set_num_threads(cfg.runtime.torch_threads())
    configure_allocator_for_measurement(FRONTIER_MMAP_THRESHOLD)  # freed tensors leave RSS: each step alone
    on_gpu = cfg.runtime.uses_gpu()
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    reach = reach or backbone_reach(cfg)
    rows, start = [], time.perf_counter()
    for variant in cfg.variants:
        method = variant.label
        for checkpointing in (False, True):
            log(f"frontier: {method}, gradient checkpointing {'on' if checkpointing else 'off'}", flush=True)
            build = builder(cfg, variant, checkpointing)
            with cuda_budget(budget_bytes, device) if on_gpu else _nothing():
                point = frontier_point(build, budget_bytes, device, _AUTOCAST[cfg.runtime.precision],
                                       probe_lengths, reach, MULTIPLE, log=lambda m: log(m, flush=True))
            attn = build.attn_impl
            note = f"capped by the backbone's reach ({reach} tokens), not by memory" if point["cap_hit"] else ""
            rows.append({"method": method, "gradient_checkpointing": checkpointing, **point,
                         "mem_budget_mb": budget_bytes / MiB, "model": cfg.model.model, "attn_impl": attn,
                         "precision": cfg.runtime.precision, "device": device.type, "note": note})
            log(f"  -> max L {point['fit_len']} ({point['how']}{', ' + note if note else ''})", flush=True)
            write_frontier(SweepFolder(folder).frontier, rows)  # after every row: a run cut short keeps its rows
    log(f"frontier: {len(rows)} rows in {time.perf_counter() - start:.0f} s -> {SweepFolder(folder).frontier}")
    return folder, rows


def write_frontier(path: Path, rows: list[dict]) -> None:
    names = [c for c, _ in FRONTIER_COLUMNS]
    write_atomically(path, csv_text(names, ([("" if row.get(c) is None else row[c]) for c in names] for row in rows)))


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
