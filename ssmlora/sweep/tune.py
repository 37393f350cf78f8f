"""`--tune lr`: select each method's adapter learning rate on the validation split, before the sweep runs.

Scope: the lengths of `--tune-len` (default the sweep's shortest, the cheapest; `512,2048` or every length of
the sweep for a per-length choice), the sweep's first seed, each method with adapters over its `--tune-grid`
values. Each trial is an ordinary cell run with `CellConfig.tuning`: it trains exactly as a sweep cell would,
then scores the validation split; its test split is sealed (ssmlora.lab.data.SealedSplit), so a test read
anywhere in a trial fails that trial.

Selection, per method and tuned length: the highest validation accuracy wins; ties go to the lower validation
loss, then to the smaller rate. A cell of the sweep uses the choice of the tuned length nearest its own (in
log2 L; ties to the shorter). `overall` is the one rate per method that a fixed default should be: the highest
validation accuracy averaged over the tuned lengths (same tie rules), which is how the registry defaults are
derived (docs/tuning-notes.md).

Trials live in `<sweep>/tune/<method>-L<len>-s<seed>-lr<value>/result.json`; a rerun reuses every trial that
finished ok (resume), and `<sweep>/tune/tuning.json` holds the trials and the choices (also in config.json).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

from results import RESULT_FILE, SweepFolder, write_atomically
from results import trial_tag as trial_folder_name
from ssmlora.lab.cell import CellConfig, run_cell_safely
from ssmlora.lab.runtime import is_rank_zero
from ssmlora.sweep.variants import MethodVariant
from ssmlora.sweep.config import SweepConfig
from ssmlora.sweep.launch import run_cell_in_process


class TuningError(RuntimeError):
    """Every trial of a method failed, so no value can be selected."""


def tuned_methods(cfg: SweepConfig) -> list[MethodVariant]:
    """The --methods entries whose learning rate `--tune lr` selects: those with adapter matrices, less the
    lr-matched controls (they take their `rate_of` entry's choice). Each entry (`ssmlora:scan`, `ssmlora:depth`)
    is selected on its own."""
    if cfg.tune.tune != "lr":
        return []
    return [v for v in cfg.variants if v.trains_adapters and not v.rate_of]


def tune_lengths(cfg: SweepConfig) -> list[int]:
    return sorted(set(cfg.tune.tune_len)) or [min(cfg.lengths)]


def trial_cells(cfg: SweepConfig) -> list[CellConfig]:
    """One tuning cell per (length, method, value), at the first seed; short lengths first, as in the sweep."""
    seed = cfg.seeds[0]
    return [replace(cfg.cell(m, length, seed), lr=float(v), tuning=True)
            for length in tune_lengths(cfg) for m in tuned_methods(cfg) for v in m.tune_grid]


def trial_tag(cell: CellConfig) -> str:
    return trial_folder_name(cell.label, cell.max_len, cell.seed, cell.lr)


def run_tuning(cfg: SweepConfig, folder: Path, in_process: bool = False, log=print) -> dict:
    """Run (or reuse) every trial and select; return the record written to tune/tuning.json:
    {"knob", "lengths", "seed", "chosen": {method: {"<L>": lr}}, "overall": {method: lr},
    "trials": {method: [trial, ...]}} (a trial: length, lr, status, val_acc, val_loss, ...)."""
    paths = SweepFolder(folder)
    cells = trial_cells(cfg)
    done = {trial_tag(c): _read(paths.trial(trial_tag(c)) / RESULT_FILE) for c in cells}  # read once, before any
    trials: dict[str, list[dict]] = {m.label: [] for m in tuned_methods(cfg)}
    for i, cell in enumerate(cells, 1):
        tag = trial_tag(cell)
        result = done[tag]
        if result is not None and result.get("status") == "ok":
            log(f"[tune {i}/{len(cells)}] {cell.label} lr={cell.lr:g} L={cell.max_len}: done before, "
                f"val_acc {result['val_acc']:.3f}")
        else:
            log(f"[tune {i}/{len(cells)}] {cell.label} lr={cell.lr:g} L={cell.max_len} ...", flush=True)
            cell_dir = paths.trial(tag)
            if in_process:
                result = run_cell_safely(cell, cell_dir, paths.probe)
                if is_rank_zero():
                    _write_json(cell_dir / RESULT_FILE, result)
            else:
                result = run_cell_in_process(cell, cell_dir, paths.probe, port_offset=i)
            score = f"val_acc {result['val_acc']:.3f}" if result.get("status") == "ok" else result.get("status")
            log(f"[tune {i}/{len(cells)}] {cell.label} lr={cell.lr:g}: {score}", flush=True)
        trials[cell.label].append({"length": cell.max_len, "lr": cell.lr, **{k: result.get(k) for k in (
            "status", "val_acc", "val_loss", "n_validation", "train_steps", "wall_s")}})
    lengths = tune_lengths(cfg)
    record = {"knob": "lr", "lengths": lengths, "seed": cfg.seeds[0],
              "chosen": {m: {str(n): select(m, [x for x in t if x["length"] == n]) for n in lengths}
                         for m, t in trials.items()},
              "overall": {m: select_overall(m, t) for m, t in trials.items()}, "trials": trials}
    if is_rank_zero():
        _write_json(paths.tune / "tuning.json", record)
    return record


def select(method: str, trials: list[dict]) -> float:
    """The winning value at one length: highest validation accuracy, then lowest validation loss, then the
    smaller value."""
    ok = [t for t in trials if t["status"] == "ok" and t["val_acc"] is not None]
    if not ok:
        raise TuningError(f"--tune lr: every trial of {method} failed ({', '.join(str(t['status']) for t in trials)}); "
                          f"see <sweep>/tune/ for their error.txt")
    best = min(ok, key=lambda t: (-t["val_acc"], _loss(t), t["lr"]))
    return best["lr"]


def select_overall(method: str, trials: list[dict]) -> float:
    """One value for every length: the highest validation accuracy averaged over the tuned lengths (then the
    lower mean loss, then the smaller value), among values whose trials finished ok at every length."""
    lengths = {t["length"] for t in trials}
    by_value: dict[float, list[dict]] = {}
    for t in trials:
        by_value.setdefault(t["lr"], []).append(t)
    complete = {v: ts for v, ts in by_value.items()
                if len(ts) == len(lengths) and all(t["status"] == "ok" and t["val_acc"] is not None for t in ts)}
    if not complete:
        raise TuningError(f"--tune lr: no value of {method} finished ok at every tuned length; see <sweep>/tune/")
    mean = lambda ts, key: sum(key(t) for t in ts) / len(ts)  # noqa: E731
    return min(complete, key=lambda v: (-mean(complete[v], lambda t: t["val_acc"]), mean(complete[v], _loss), v))


def nearest_tuned(record: dict, length: int) -> int:
    """The tuned length whose choice a cell at `length` uses: nearest in log2 L, ties to the shorter."""
    return min(record["lengths"], key=lambda n: (abs(math.log2(n / length)), n))


def apply_choice(cfg: SweepConfig, cells: list[CellConfig], record: dict | None) -> list[CellConfig]:
    """The sweep's cells with the selected rates and where they were selected (`val@L<tuned length>`); an
    lr-matched control takes the choice of the entry it follows (`<entry>@val@L<tuned length>`)."""
    if not record:
        return cells
    out = []
    for c in cells:
        follows = cfg.variant(c.label).rate_of
        key = follows if follows in record["chosen"] else c.label
        if key in record["chosen"]:
            n = nearest_tuned(record, c.max_len)
            where = f"{follows}@val@L{n}" if key == follows else f"val@L{n}"
            c = replace(c, lr=record["chosen"][key][str(n)], selected_on=where)
        out.append(c)
    return out


def _loss(trial: dict) -> float:
    return trial["val_loss"] if trial["val_loss"] is not None else float("inf")


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _write_json(path: Path, data: dict) -> None:
    write_atomically(path, json.dumps(data, indent=2))
