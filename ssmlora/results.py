"""The sweep's results table: one row per (method, length, seed) cell.

`results.csv` is the contract between the sweep (`experiments/run.py`) and the plots (`plots/`). Every
writer goes through :func:`write_results`, which replaces the file atomically, so an interrupted sweep
never leaves a half-written table. Rates are fractions in [0, 1].
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path

SCHEMA_VERSION = 1

# (column, meaning). The order is the file's column order.
RESULT_COLUMNS: list[tuple[str, str]] = [
    ("task", "task name from data_prep's registry"),
    ("model", "backbone id or path"),
    ("method", "lora | ssmlora | frozen (head only: the cost floor)"),
    ("ssm_mode", "depth | carry | scan for ssmlora; empty otherwise"),
    ("max_len", "context length L in tokens"),
    ("seed", "random seed of the cell"),
    ("status", "ok | oom | failed: <reason>"),
    ("accuracy", "test accuracy, fraction"),
    ("macro_f1", "test macro-F1, fraction"),
    ("majority_rate", "majority-class rate of the test split, fraction"),
    ("n_test", "number of test examples scored"),
    ("adapter_params", "trainable adapter parameters (head excluded)"),
    ("head_params", "trainable classifier-head parameters"),
    ("trainable_params", "all trainable parameters"),
    ("peak_mem_mb", "peak memory of the cell in MiB (CUDA: max allocated; CPU: peak RSS of the cell's process)"),
    ("peak_reserved_mb", "CUDA: max reserved MiB; empty on CPU"),
    ("mem_includes", "what peak_mem_mb includes"),
    ("real_tokens_per_s", "non-padding training tokens per second, after warm-up, all devices"),
    ("padded_tokens_per_s", "training tokens per second including padding, after warm-up, all devices"),
    ("samples_per_s", "training sequences per second, after warm-up, all devices"),
    ("step_time_s", "median optimizer-step time after warm-up, seconds"),
    ("flops_per_step", "FLOPs of one optimizer step (torch.utils.flop_counter)"),
    ("mfu", "model FLOPs utilisation on a GPU of known peak; empty otherwise"),
    ("train_steps", "optimizer steps taken"),
    ("effective_batch", "sequences per optimizer step over all devices"),
    ("wall_s", "wall time of the whole cell (build, train, evaluate), seconds"),
    ("attn_impl", "attention kernel that ran: flash_attention_2 | sdpa | eager"),
    ("precision", "Lightning precision: 32 | bf16-mixed | 16-mixed"),
    ("accelerator", "cpu | gpu"),
    ("devices", "devices per node x nodes"),
    ("accuracy_by_depth", "needle only: JSON {depth-bin lower edge: accuracy}"),
]
COLUMN_NAMES = [name for name, _ in RESULT_COLUMNS]
CELL_KEY = ("task", "model", "method", "ssm_mode", "max_len", "seed")


class ResultsFormatError(ValueError):
    """A results.csv that this version cannot read (other schema, missing columns)."""


def read_results(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a results.csv as dicts of strings. Raises ResultsFormatError naming what is wrong."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no results file at {path}: run `python experiments/run.py` first")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        rows = list(reader)
    missing = [c for c in COLUMN_NAMES if c not in header]
    if missing:
        raise ResultsFormatError(
            f"{path} lacks columns {missing}: it was written by another version of ssmlora "
            f"(schema {SCHEMA_VERSION} expected); move it away or rerun the sweep into a new --out"
        )
    return rows


def write_results(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write all rows atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".results.", suffix=".csv", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=COLUMN_NAMES, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _cell(row.get(k)) for k in COLUMN_NAMES})
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def cell_key(row: dict) -> tuple[str, ...]:
    return tuple(str(row.get(k, "")) for k in CELL_KEY)
