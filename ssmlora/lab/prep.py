"""The work every cell at one length shares, done once before them: a sweep's preparation step per length.

It builds the task's splits at the length (and at the extrapolation's longer lengths, with --eval-lengths) into
the data cache and extracts the linear probe's frozen features into the probe cache: the training rows of every
seed and the test documents (ssmlora.lab.probe). Why a step of its own: a cell that found these caches cold
built them inside its own wall time and memory pass, so the first method at each length paid for every method
and `wall_s` compared a cold cell with warm ones. After this step every cell starts warm, and the shared cost has
its own time and memory.

The features are those a cell would extract itself: the backbone is built as the length's first cell builds it,
and at initialisation every adapter leaves the frozen model's output unchanged, so one extraction serves every
method and seed at the length.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch

from ssmlora.lab.backbone import resolve_model_path
from ssmlora.lab.cell import CellConfig, build_cell, fit_head_by_probe
from ssmlora.lab.data import task_data
from ssmlora.lab.memory import PhaseMeter, process_peak
from ssmlora.lab.probe import probe_predictions
from ssmlora.lab.runtime import quiet_libraries


def prepare_length(cell: CellConfig, seeds: list[int], probe_root: str | Path, test: bool = True) -> dict:
    """Fill the data and probe caches for the cells at `cell.max_len` (its method and seed: the length's first
    cell) and return the step's figures: `prep_s` and its parts (`build_s`, `features_s`), the rise of RSS of the
    build and of the feature extraction (MiB; the build of a cold data cache runs in a child and reports its own
    `data_build_*`), and the process's peak RSS. The step runs under glibc's own allocator settings, so a rise may
    reuse memory an earlier phase freed; the peak RSS is exact either way. `test=False` leaves the test documents
    unread."""
    start = time.perf_counter()
    quiet_libraries(cell.runtime.verbose)
    torch.set_num_threads(cell.runtime.torch_threads())
    probe_root = Path(probe_root)
    phases: dict = {}
    with PhaseMeter("build", "cpu", phases):
        data, _, pad_id, model, _ = build_cell(cell, phases)
        for length in cell.data.eval_lengths_for(cell.max_len):  # the extrapolation's longer reads of the test
            task_data(cell.data, length, resolve_model_path(cell.model.model))
    build_s = time.perf_counter() - start
    with PhaseMeter("features", "cpu", phases):
        if cell.optim.head_init == "probe":
            for seed in seeds:
                fit_head_by_probe(replace(cell, seed=seed), model, data["train"], pad_id, probe_root)
            if test:
                probe_predictions(model, data["test"], 2 * cell.batch_plan()[1], cell.runtime.precision, pad_id,
                                  cache=probe_root / f"L{cell.max_len}-test.safetensors")
    figures = {k: round(v, 1) for k, v in phases.items() if k.endswith("_rise_mb")}
    return {"prep_s": round(time.perf_counter() - start, 1), "build_s": round(build_s, 1),
            "features_s": round(time.perf_counter() - start - build_s, 1), **figures,
            "peak_rss_mb": round(process_peak("cpu")["process_peak_rss_mb"], 1)}
