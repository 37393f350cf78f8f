"""Writing `results.csv` (and `extrapolation.csv`): atomic replacement, merges under a lock, repair."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from results.columns import COLUMN_NAMES, EXTRAPOLATION_COLUMNS, SCHEMA_VERSION
from results.folder import csv_text, write_atomically
from results.reading import (BadLine, ResultsFormatError, bad_path, cell_key, read_results, row_problem,
                             scan_file)


def write_results(path: str | os.PathLike, rows: list[dict], sweep_hash: str | None = None) -> list[dict[str, str]]:
    """Replace the file with ``rows``, atomically. Returns the rows as written (dicts of strings).

    Each row gets ``schema_version``; rows without ``sweep_hash`` get the argument. Rows are checked as
    :func:`read_results` would check them, and a bad row raises ValueError before the file is touched.
    Not safe against another writer: several processes use :func:`update_results`.
    """
    path = Path(path)
    out, seen = [], set()
    for row in rows:
        text = _stamp(row, sweep_hash)
        if cell_key(text) in seen:
            raise ValueError(f"cannot write {path}: cell {cell_key(text)} appears twice")
        seen.add(cell_key(text))
        out.append(text)
    write_atomically(path, csv_text(COLUMN_NAMES, ([r[k] for k in COLUMN_NAMES] for r in out)))
    return out


def update_results(path: str | os.PathLike, rows: list[dict], sweep_hash: str | None = None,
                   timeout: float = 120.0) -> list[dict[str, str]]:
    """Merge ``rows`` into the file under a lock on ``<path>.lock``; return the merged table.

    Reads the current file strictly (a bad file raises ResultsFormatError and is left alone; with
    ``sweep_hash``, so do rows of another sweep), replaces rows with the same :func:`cell_key` in place,
    appends new ones and writes atomically. filelock.Timeout (a TimeoutError) after ``timeout`` seconds.
    """
    path = Path(path)
    with _lock(path, timeout):
        current = read_results(path, sweep_hash) if path.exists() else []
        merged = {cell_key(r): r for r in current}
        for row in rows:
            merged[cell_key(_stamp(row, sweep_hash))] = row
        return write_results(path, list(merged.values()), sweep_hash)


def repair_results(path: str | os.PathLike, sweep_hash: str | None = None, timeout: float = 120.0) -> list[BadLine]:
    """Move the bad lines of results.csv to ``results.bad.csv`` next to it; return them ([] if none).

    ``results.bad.csv`` is a CSV with columns moved_at (UTC), line (in results.csv then), reason, raw (the
    record's text; bytes that were not UTF-8 as \\xNN, NUL as \\x00); repairs append to it. Bad lines are
    saved there before results.csv is rewritten with the good rows, so a crash in between loses nothing.
    Holds the same lock as :func:`update_results`. A file whose header is unreadable is not repaired
    (ResultsFormatError): without a known header no row can be vouched for.
    """
    path = Path(path)
    with _lock(path, timeout):
        header_problem, rows, bad = scan_file(path, sweep_hash)
        if header_problem:
            raise ResultsFormatError(path, bad[0].line if bad else None, f"{header_problem} (not repairable)")
        if not bad:
            return []
        moved_to = bad_path(path)
        moved_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        new = not moved_to.exists()
        with moved_to.open("a", newline="", encoding="utf-8") as fh:
            fh.write(csv_text(["moved_at", "line", "reason", "raw"] if new else None,
                              ([moved_at, b.line, b.reason, b.raw] for b in bad)))
            fh.flush()
            os.fsync(fh.fileno())
        write_results(path, [row for _, row in rows], sweep_hash)
        return bad


def _stamp(row: dict, sweep_hash: str | None) -> dict[str, str]:
    text = {name: _cell(row.get(name)) for name in COLUMN_NAMES}
    text["schema_version"] = str(SCHEMA_VERSION)
    text["role"] = text["role"] or "accuracy"  # the cell every sweep runs; a cost cell says so
    if not text["sweep_hash"] and sweep_hash is not None:
        text["sweep_hash"] = sweep_hash
    elif sweep_hash is not None and text["sweep_hash"] != sweep_hash:
        raise ValueError(f"row {cell_key(text)} belongs to sweep {text['sweep_hash']}, not {sweep_hash}")
    if problem := row_problem(text):
        raise ValueError(f"cannot write row {cell_key(text)}: {problem}"
                         + (" (pass sweep_hash=...)" if problem.startswith("sweep_hash is empty") else ""))
    return text


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, float):
        # "nan" would make the file unreadable; an empty field is the table's word for "not measured"
        return f"{value:.6g}" if math.isfinite(value) else ""
    return str(value)


def _lock(path: Path, timeout: float):
    from filelock import FileLock  # not at import time: plots read results without ever locking

    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(f"{path}.lock", timeout=timeout, thread_local=False)


def write_extrapolation(path: str | os.PathLike, rows: list[dict]) -> None:
    """Replace `path` with `rows` (dicts with EXTRAPOLATION_COLUMNS), atomically."""
    write_atomically(path, csv_text(list(EXTRAPOLATION_COLUMNS),
                                    ([_cell(r.get(k)) for k in EXTRAPOLATION_COLUMNS] for r in rows)))
