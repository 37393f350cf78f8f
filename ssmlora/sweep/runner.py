"""Running a sweep: validate, write `config.json`, then every cell that has no row yet, one row per cell.

Layout of a sweep folder `<out>/<name>/`:
  config.json           the configuration tree, the resolved per-cell values and the environment
  config.yaml           every setting by its flag's name: `--config` runs the sweep again
  results.csv           one row per finished cell (results), merged in under a lock after every cell
  claims/               which process runs which cell (results.claims)
  cells/<cell>/         Lightning's CSVLogger output, the cell's result.json and its saved adapter
  probe/                the linear probe's cached frozen features, per (length, seed), and test features per length,
                        filled by the preparation step of each length before its cells (ssmlora.lab.prep)
  tune/                 --tune: the validation-only trials and tuning.json (ssmlora.sweep.tune)

Each cell runs in its own process(es) (`launch`); under an external launcher (`--in-process` with torchrun or
srun) every rank runs the whole sweep in process instead, and only global rank 0 writes the sweep's files.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

from results import (CELL_KEY, RESULT_FILE, SCHEMA_VERSION, SweepFolder, cell_key, read_results, update_results,
                     write_atomically, write_extrapolation)
from results.claims import claim_cell, describe_holder
from ssmlora.lab.cell import CellConfig, run_cell_safely
from ssmlora.lab.runtime import batch_plan, environment, is_rank_zero
from ssmlora.sweep.variants import MethodVariant
from ssmlora.sweep.config import GRID, SweepConfig
from ssmlora.sweep.config_file import config_yaml
from ssmlora.sweep.launch import prepare_in_process, run_cell_in_process
from ssmlora.sweep.tune import apply_choice, run_tuning, trial_cells, trial_tag
from ssmlora.sweep.validate import validate


def config_json(cfg: SweepConfig, name: str, old: dict | None = None, tuning: dict | None = None,
                prep: dict | None = None, plan: dict | None = None) -> dict:
    """config.json: what plots read first (name, task, model, grid), then the tree once, the values resolved on
    this machine, the tuning and preparation steps, the identity that a resume must match, and the
    environment."""
    grid = {k: list(getattr(cfg, k)) for k in GRID}
    for key in GRID:  # the folder's grid is every cell it holds, across resumed runs with other grids
        extra = [v for v in (old or {}).get(key, []) if v not in grid[key]]
        grid[key] = grid[key] + extra if key == "methods" else sorted(grid[key] + extra)
    tree = {k: v for k, v in asdict(cfg).items() if k not in GRID}
    tree["adapter"].pop("method")
    return {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "task": cfg.data.task,
        "model": cfg.model.model,
        **grid,
        "config": tree,
        "resolved": {
            "device": cfg.runtime.device_type(),
            "lr": {m: cfg.variant(m).lr for m in grid["methods"]} | (tuning or {}).get("chosen", {}),
            "variants": {m: variant_record(cfg.variant(m)) for m in grid["methods"]},
            "batch_plan": {str(L): dict(zip(("effective_batch", "micro_batch", "accumulate"),
                                            batch_plan(cfg.optim.tokens_per_step, cfg.runtime, L)))
                           for L in grid["lengths"]},
        },
        "tuning": tuning,  # --tune: the validation trials and the values they selected
        "plan": plan or (old or {}).get("plan"),  # the preset and the estimate made before the cells
        "prep": prep or {},  # per length: the shared preparation step's time and memory (ssmlora.lab.prep)
        "identity": cfg.identity(),
        "identity_hash": cfg.identity_hash(),
        "environment": environment(),
    }


def variant_record(variant: MethodVariant) -> dict:
    """What config.json keeps of a --methods entry: its method, settings, rate and, for a control, its
    counterpart and what it holds fixed."""
    return {"method": variant.method, "settings": dict(variant.settings), "lr": variant.lr,
            "lr_source": variant.lr_source, "matched_to": variant.matched_to, "control": variant.control}


def row_key(cfg: SweepConfig, cell: CellConfig) -> tuple[str, ...]:
    return cell_key(base_row(cfg, cell))


def base_row(cfg: SweepConfig, cell: CellConfig) -> dict:
    return {
        "task": cfg.data.task, "model": cfg.model.model, "method": cell.method, **cfg.row_identity(cell.label),
        "variant": cell.label, "max_len": cell.max_len, "seed": cell.seed, "role": cell.role,
        "precision": cfg.runtime.precision,
        "accelerator": cfg.runtime.device_type(), "devices": f"{cfg.runtime.devices}x{cfg.runtime.num_nodes}",
        "effective_batch": cell.batch_plan()[0], "lr": cell.lr, "selected_on": cell.selected_on,
    }


class Progress:
    """The sweep's console: one start line and one result line per cell, the latter with the elapsed time and an
    ETA from the mean wall time of the cells run so far (a cell's bar prints between the two)."""

    def __init__(self, total: int, log=print) -> None:
        self.total, self.log, self.start, self.walls = total, log, time.perf_counter(), []

    def begin(self, i: int, cell: CellConfig) -> None:
        self.log(f"[{i}/{self.total}] {self.describe(cell)} ...", flush=True)

    def prepared(self, length: int, figures: dict, features: bool = True) -> None:
        if figures.get("status") != "ok":
            self.log(f"[prep] L={length}: {figures.get('status')}; each cell builds what it needs", flush=True)
            return
        ready = "data and probe features ready" if features else "data ready (cost cells: no probe)"
        self.log(f"[prep] L={length}: {ready}, {figures['prep_s']:.0f} s (build "
                 f"{figures['build_s']:.0f} s, features {figures['features_s']:.0f} s), peak RSS "
                 f"{figures['peak_rss_mb']:.0f} MiB", flush=True)

    def skipped(self, i: int, cell: CellConfig, why: str) -> None:
        self.log(f"[{i}/{self.total}] {self.describe(cell)}: skipped, {why}")

    def finished(self, i: int, cell: CellConfig, row: dict) -> None:
        wall = float(row.get("wall_s") or 0)
        self.walls.append(wall)
        left = sum(self.walls) / len(self.walls) * (self.total - i)  # skipped cells count too: an upper bound
        score = (f", accuracy {float(row['accuracy']):.3f} (majority {float(row['majority_rate']):.3f})"
                 if row.get("accuracy") not in (None, "") else "")
        self.log(f"[{i}/{self.total}] {self.describe(cell)}: {row['status']}{score}, {wall:.0f} s | sweep "
                 f"{_clock(time.perf_counter() - self.start)} elapsed, ETA {_clock(left) if i < self.total else '0s'}",
                 flush=True)

    @staticmethod
    def describe(cell: CellConfig) -> str:
        return f"{cell.label} L={cell.max_len} seed {cell.seed}" + (" (cost)" if cell.role == "cost" else "")


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def run_sweep(cfg: SweepConfig, out: str | os.PathLike = "lightning_logs", name: str | None = None,
              retry_failed: bool = False, in_process: bool = False, repair: bool = False,
              log=print, plan: dict | None = None) -> tuple[Path, list[dict]]:
    """Validate, then run every cell that has no row yet; return (folder, every row of the folder).

    `plan`: the preset and the estimate the command line made before it (config.json's "plan").
    Several processes may run one sweep into one folder (N workers of one grid, or an accident): each cell is
    claimed by one process (results.claims) and the others move on to the next; each finished row is merged into
    results.csv under a lock (results.update_results), so no process drops another's rows.
    """
    folder = validate(cfg, Path(out), name, in_process, repair=repair, warn=lambda m: print(m, file=sys.stderr))
    if not is_rank_zero():  # under torchrun / srun every rank runs this loop; one of them talks
        log = lambda *args, **kwargs: None  # noqa: E731
    sweep_hash = cfg.identity_hash()
    paths = SweepFolder(folder)
    res_path = paths.results
    old_cfg = json.loads(paths.config.read_text()) if paths.config.exists() else {}
    prep = dict(old_cfg.get("prep") or {})
    _write_config(cfg, folder, old_cfg, prep=prep, plan=plan)

    stop_on_sigterm(in_process)
    # Ranks started by torchrun / srun must all take the same cells, so only a sweep of one process claims.
    claims = not (in_process and cfg.runtime.world_size > 1)
    tuning = None
    if cfg.tune.tune:  # selection first, on validation only; the sweep's cells then run with the chosen values
        tuning = run_tuning(cfg, folder, in_process, log)
        _write_config(cfg, folder, old_cfg, tuning, prep, plan)
        if cfg.tune.tune_only:  # selection alone: the test split is never opened
            return folder, []
    cells = apply_choice(cfg, cfg.cells(), tuning)
    progress = Progress(len(cells), log)
    prepared: set[int] = set()  # lengths whose shared caches this run has filled
    for i, cell in enumerate(cells, 1):
        key = row_key(cfg, cell)
        done = _finished(res_path, sweep_hash, retry_failed)
        if key in done:
            progress.skipped(i, cell, f"done before ({done[key].get('status')})")
            continue
        claim = claim_cell(folder, cell.tag()) if claims else None
        if claims and claim is None:
            progress.skipped(i, cell, f"{describe_holder(folder, cell.tag())} (another sweep process)")
            continue
        with claim or contextlib.nullcontext():
            if claim is not None and claim.note:
                log(claim.note)
            done = _finished(res_path, sweep_hash, retry_failed)  # another process may have finished it meanwhile
            if key in done:
                progress.skipped(i, cell, f"done by another sweep process ({done[key].get('status')})")
                continue
            if not in_process and cell.max_len not in prepared:
                prepared.add(cell.max_len)
                prep[str(cell.max_len)] = prepare_in_process(cell, cfg.seeds, paths.probe)
                _write_config(cfg, folder, old_cfg, tuning, prep, plan)
                progress.prepared(cell.max_len, prep[str(cell.max_len)], cell.optim.head_init == "probe")
            progress.begin(i, cell)
            cell_dir = paths.cell(cell.tag())
            if in_process:
                result = run_cell_safely(cell, cell_dir, paths.probe)
            else:
                result = run_cell_in_process(cell, cell_dir, paths.probe, port_offset=i)
            row = {**base_row(cfg, cell), **result}
            if is_rank_zero():
                row = _record(res_path, row, sweep_hash)
                _keep_extrapolation(cfg, cell, cell_dir, result)
            progress.finished(i, cell, row)
    if is_rank_zero() and cfg.data.eval_lengths:
        write_extrapolation(paths.extrapolation, extrapolation_rows(cfg, folder))
    rows = read_results(res_path, sweep_hash=sweep_hash) if res_path.exists() else []
    return folder, rows


def pending_cells(cfg: SweepConfig, folder: Path, retry_failed: bool = False) -> list[CellConfig]:
    """The cells a run of `cfg` into `folder` would run now: tuning trials without a result, then every grid
    cell without a row (what the estimate before the sweep counts)."""
    paths = SweepFolder(folder)
    trials = [c for c in trial_cells(cfg) if not (paths.trial(trial_tag(c)) / RESULT_FILE).exists()
              ] if cfg.tune.tune else []
    if cfg.tune.tune_only:
        return trials
    done = _finished(paths.results, cfg.identity_hash(), retry_failed)
    return trials + [c for c in cfg.cells() if row_key(cfg, c) not in done]


def _keep_extrapolation(cfg: SweepConfig, cell: CellConfig, cell_dir: Path, result: dict) -> None:
    """The cell's extrapolation rows, complete with method and seed, beside its other files (a resumed sweep
    rebuilds extrapolation.csv from them); an old file goes when the cell reruns without rows."""
    path = cell_dir / "extrapolation.json"
    if result.get("status") != "ok" or not result.get("extrapolation"):
        path.unlink(missing_ok=True)
        return
    ident = {"method": cell.method, **cfg.row_identity(cell.label), "variant": cell.label,
             "seed": cell.seed}
    write_atomically(path, json.dumps([{**ident, **r} for r in result["extrapolation"]]))


def extrapolation_rows(cfg: SweepConfig, folder: Path) -> list[dict]:
    """Every extrapolation row of the grid's cells, in the grid's order."""
    rows = []
    for cell in cfg.cells():
        path = SweepFolder(folder).cell(cell.tag()) / "extrapolation.json"
        if path.exists():
            rows += json.loads(path.read_text())
    return rows


def _write_config(cfg: SweepConfig, folder: Path, old_cfg: dict, tuning: dict | None = None,
                  prep: dict | None = None, plan: dict | None = None) -> None:
    if is_rank_zero():
        record = config_json(cfg, folder.name, old_cfg, tuning, prep, plan)
        write_atomically(SweepFolder(folder).config, json.dumps(record, indent=2, default=str))
        grid = {name: record[name] for name in ("methods", "lengths", "seeds")}  # every value the folder holds
        write_atomically(SweepFolder(folder).settings, config_yaml(cfg, grid))


def _finished(res_path: Path, sweep_hash: str, retry_failed: bool) -> dict[tuple, dict]:
    """The cells results.csv holds, read fresh (other processes may be writing it); failed ones left out
    when they are to be retried."""
    rows = read_results(res_path, sweep_hash=sweep_hash) if res_path.exists() else []
    return {cell_key(r): r for r in rows if not retry_failed or r.get("status") == "ok"}


def _record(res_path: Path, row: dict, sweep_hash: str) -> dict:
    """Merge one cell's row into results.csv; a row that breaks the contract is recorded as a failed cell."""
    try:
        update_results(res_path, [row], sweep_hash=sweep_hash)
    except ValueError as err:
        row = {**{k: row.get(k) for k in CELL_KEY}, "precision": row.get("precision"),
               "status": f"failed: invalid result row: {str(err).splitlines()[0][:160]}", "wall_s": row.get("wall_s")}
        update_results(res_path, [row], sweep_hash=sweep_hash)
    return row


def stop_on_sigterm(in_process: bool) -> None:
    """`kill <pid>` (SIGTERM) stops the sweep the way Ctrl-C does: the running cell's (or calibration's or
    preparation's) process is ended with it and every finished row is already on disk. Not under an external
    launcher (`--in-process`), which owns the signals."""
    if not in_process and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def results_table(rows: list[dict]) -> str:
    """A plain-text table of the main columns, for the terminal."""
    cols = ["variant", "max_len", "seed", "role", "status", "accuracy", "majority_rate", "macro_f1", "train_peak_mb",
            "real_tokens_per_s", "step_time_s", "wall_s"]

    def fmt(v):
        if isinstance(v, int) or (isinstance(v, str) and v.isdigit()):
            return str(v)
        try:
            f = float(v)
            return f"{f:.3f}" if abs(f) < 10 else f"{f:.0f}"
        except (TypeError, ValueError):
            return str(v)[:28]

    table = [cols] + [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in table)


def any_failed(rows: list[dict]) -> bool:
    return any(r.get("status") != "ok" for r in rows)
