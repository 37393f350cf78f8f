"""`--tune lr`: select each method's adapter learning rate on the validation split, before the sweep runs.

Scope (affordable on 2 CPU cores): one length (`--tune-len`, default the sweep's shortest), the sweep's first
seed, each method with adapters over its `--tune-grid` values. Each trial is an ordinary cell run with
`CellConfig.tuning`: it trains exactly as a sweep cell would, then scores the validation split; its test split
is sealed (ssmlora.lab.data.SealedSplit), so a test read anywhere in a trial fails that trial. The highest
validation accuracy wins; ties go to the lower validation loss, then to the smaller rate.

Trials live in `<sweep>/tune/<method>-L<len>-s<seed>-lr<value>/result.json`; a rerun reuses every trial that
finished ok (resume), and `<sweep>/tune/tuning.json` holds the trials and the choice (also in config.json).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from ssmlora.lab.cell import CellConfig, run_cell_safely
from ssmlora.lab.runtime import is_rank_zero
from ssmlora.methods import get_method
from ssmlora.sweep.config import SweepConfig, split_method
from ssmlora.sweep.launch import run_cell_in_process


class TuningError(RuntimeError):
    """Every trial of a method failed, so no value can be selected."""


def tuned_methods(cfg: SweepConfig) -> list[str]:
    """The --methods entries whose learning rate `--tune lr` selects: those with adapter matrices. Each entry
    (`ssmlora:scan`, `ssmlora:depth`) is selected on its own."""
    if cfg.optim.tune != "lr":
        return []
    return [m for m in cfg.methods if get_method(split_method(m)[0]).layer is not None]


def grid_for(cfg: SweepConfig, method: str) -> list[float] | None:
    return cfg.optim.grid_for(method)


def tune_length(cfg: SweepConfig) -> int:
    return cfg.optim.tune_len or min(cfg.lengths)


def trial_cells(cfg: SweepConfig) -> list[CellConfig]:
    """One tuning cell per (method, value), at the tuning length and the first seed."""
    length, seed = tune_length(cfg), cfg.seeds[0]
    return [replace(cfg.cell(m, length, seed), lr=float(v), tuning=True)
            for m in tuned_methods(cfg) for v in grid_for(cfg, m)]


def trial_tag(cell: CellConfig) -> str:
    return f"{cell.tag()}-lr{cell.lr:g}"


def run_tuning(cfg: SweepConfig, folder: Path, in_process: bool = False, log=print) -> dict:
    """Run (or reuse) every trial, select per method; return the record written to tune/tuning.json:
    {"knob", "length", "seed", "selected_on", "chosen": {method: lr}, "trials": {method: [trial, ...]}}."""
    root = folder / "tune"
    cells = trial_cells(cfg)
    done = {trial_tag(c): _read(root / trial_tag(c) / "result.json") for c in cells}  # read once, before any run
    trials: dict[str, list[dict]] = {m: [] for m in tuned_methods(cfg)}
    for i, cell in enumerate(cells, 1):
        tag = trial_tag(cell)
        result = done[tag]
        if result is not None and result.get("status") == "ok":
            log(f"[tune {i}/{len(cells)}] {cell.method} lr={cell.lr:g} L={cell.max_len}: done before, "
                f"val_acc {result['val_acc']:.3f}")
        else:
            log(f"[tune {i}/{len(cells)}] {cell.method} lr={cell.lr:g} L={cell.max_len} ...", flush=True)
            cell_dir = root / tag
            if in_process:
                result = run_cell_safely(cell, cell_dir, folder / "probe")
                if is_rank_zero():
                    _write_json(cell_dir / "result.json", result)
            else:
                result = run_cell_in_process(cell, cell_dir, folder / "probe", port_offset=i)
            score = f"val_acc {result['val_acc']:.3f}" if result.get("status") == "ok" else result.get("status")
            log(f"[tune {i}/{len(cells)}] {cell.method} lr={cell.lr:g}: {score}", flush=True)
        trials[cell.label].append({"lr": cell.lr, **{k: result.get(k) for k in (
            "status", "val_acc", "val_loss", "n_validation", "train_steps", "wall_s")}})
    record = {"knob": "lr", "length": tune_length(cfg), "seed": cfg.seeds[0],
              "selected_on": f"val@L{tune_length(cfg)}",
              "chosen": {m: select(m, t) for m, t in trials.items()}, "trials": trials}
    if is_rank_zero():
        _write_json(root / "tuning.json", record)
    return record


def select(method: str, trials: list[dict]) -> float:
    """The winning value: highest validation accuracy, then lowest validation loss, then the smaller value."""
    ok = [t for t in trials if t["status"] == "ok" and t["val_acc"] is not None]
    if not ok:
        raise TuningError(f"--tune lr: every trial of {method} failed ({', '.join(str(t['status']) for t in trials)}); "
                          f"see <sweep>/tune/ for their error.txt")
    best = min(ok, key=lambda t: (-t["val_acc"], t["val_loss"] if t["val_loss"] is not None else float("inf"),
                                  t["lr"]))
    return best["lr"]


def apply_choice(cells: list[CellConfig], record: dict | None) -> list[CellConfig]:
    """The sweep's cells with the selected rates (keyed by --methods entry) and where they were selected."""
    if not record:
        return cells
    return [replace(c, lr=record["chosen"][c.label], selected_on=record["selected_on"])
            if c.label in record["chosen"] else c for c in cells]


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
