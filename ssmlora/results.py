"""The sweep's results table: one row per (method, length, seed) cell.

`results.csv` is the contract between the sweep (`experiments/run.py`) and the plots (`plots/`). Each column's
kind (int, float, str, json) and when it must be filled is declared once, in :data:`COLUMNS`. Rates are
fractions in [0, 1]. Every row carries the schema version that wrote it and the hash of the sweep it belongs to,
so a row copied into the wrong folder or written by another version is caught, not plotted.

Reading is strict: :func:`read_results` raises :class:`ResultsFormatError` with one line naming the file and
line for anything it cannot vouch for (a row cut off mid-write, a bad number, a NUL byte, bytes that are not
UTF-8, an unknown header, another schema version, a duplicated cell, an ok row without its accuracy).
:func:`split_results` sorts the same file into good rows and bad lines without raising, and
:func:`repair_results` moves the bad lines to ``results.bad.csv`` (``python -m ssmlora.results repair PATH``).

Writing: :func:`write_results` replaces the file atomically (temp file, fsync, rename; the user's umask
decides the mode of a new file). Several processes add rows with :func:`update_results`, a read-merge-write
under a lock on ``<path>.lock`` (left in place: deleting a lock file lets two writers lock different inodes;
on a shared filesystem it needs working flock, see :mod:`ssmlora.claims`). No torch here: the plots import
this module.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
import secrets
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 3
KINDS = ("int", "float", "str", "json")


@dataclass(frozen=True)
class Column:
    """One column of results.csv. ``need``: "always" (every row), "ok" (rows with status ok), "" (may be empty)."""

    name: str
    kind: str
    meaning: str
    need: str = ""
    fraction: bool = False


# The order is the file's column order.
COLUMNS: tuple[Column, ...] = (
    Column("schema_version", "int", f"version of this table's format ({SCHEMA_VERSION})", "always"),
    Column("sweep_hash", "str", "hex hash of the sweep's identity (its configuration, less grid and plumbing)",
           "always"),
    Column("task", "str", "task name from data_prep's registry", "always"),
    Column("model", "str", "backbone id or path", "always"),
    Column("method", "str", "lora | ssmlora | frozen (head only: the cost floor)", "always"),
    Column("ssm_mode", "str", "depth | carry | scan for ssmlora; empty otherwise"),
    Column("max_len", "int", "context length L in tokens", "always"),
    Column("seed", "int", "random seed of the cell", "always"),
    Column("status", "str", "ok | oom | failed: <reason>", "always"),
    Column("accuracy", "float", "test accuracy, fraction", "ok", fraction=True),
    Column("macro_f1", "float", "test macro-F1, fraction", "ok", fraction=True),
    Column("majority_rate", "float", "majority-class rate of the test split, fraction", "ok", fraction=True),
    Column("n_test", "int", "number of test examples scored", "ok"),
    Column("adapter_params", "int", "trainable adapter parameters (head excluded)", "ok"),
    Column("head_params", "int", "trainable classifier-head parameters", "ok"),
    Column("trainable_params", "int", "all trainable parameters", "ok"),
    Column("peak_mem_mb", "float",
           "whole-process peak of the cell's process in MiB, every phase (CUDA: max allocated; CPU: peak RSS); "
           "compare training with train_peak_mb"),
    Column("peak_reserved_mb", "float", "CUDA: whole-process max reserved MiB; empty on CPU"),
    Column("mem_includes", "str", "what peak_mem_mb includes"),
    Column("real_tokens_per_s", "float", "non-padding training tokens per second, after warm-up, all devices"),
    Column("padded_tokens_per_s", "float", "training tokens per second including padding, after warm-up, all devices"),
    Column("samples_per_s", "float", "training sequences per second, after warm-up, all devices"),
    Column("step_time_s", "float", "median optimizer-step time after warm-up, seconds"),
    Column("flops_per_step", "float", "FLOPs of one optimizer step (torch.utils.flop_counter)"),
    Column("mfu", "float", "model FLOPs utilisation on a GPU of known peak; empty otherwise"),
    Column("train_steps", "int", "optimizer steps taken", "ok"),
    Column("effective_batch", "int", "sequences per optimizer step over all devices"),
    Column("wall_s", "float", "wall time of the whole cell (build, train, evaluate), seconds", "ok"),
    Column("attn_impl", "str", "attention kernel that ran: flash_attention_2 | sdpa | eager"),
    Column("precision", "str", "Lightning precision: 32 | bf16-mixed | 16-mixed"),
    Column("accelerator", "str", "cpu | gpu"),
    Column("devices", "str", "devices per node x nodes"),
    Column("accuracy_by_depth", "json", "needle only: JSON {depth-bin lower edge: accuracy}"),
    Column("lr", "float", "the adapter matrices' peak learning rate of the cell (empty: no adapters)"),
    Column("selected_on", "str", "where lr came from: default (registry or --lr) or val@L<length> (--tune lr)"),
    Column("probe_accuracy", "float", "the linear-probe head alone on the frozen model, same test documents "
                                      "(--head-init probe), fraction", fraction=True),
    Column("train_peak_mb", "float", "training phase alone, MiB (mem_basis: CUDA max allocated, weights included; "
                                     "CPU rise of RSS over the phase's start)"),
    Column("eval_peak_mb", "float", "test phase alone, MiB (same basis)"),
    Column("probe_peak_mb", "float", "linear-probe phase alone, MiB (same basis; ~0 when its features were cached)"),
    Column("build_peak_mb", "float", "data build and backbone load, rise of host RSS, MiB"),
    Column("train_reserved_mb", "float", "CUDA: max reserved during training, MiB; empty on CPU"),
    Column("eval_reserved_mb", "float", "CUDA: max reserved during the test, MiB; empty on CPU"),
    Column("mem_basis", "str", "cuda_max_allocated | cpu_rss_rise: what the phase columns measure"),
    Column("weights_frozen_mb", "float", "frozen parameters and buffers, MiB (counted from shapes)"),
    Column("weights_trainable_mb", "float", "trainable parameters (adapters + head), MiB"),
    Column("grads_mb", "float", "gradients of the trainable parameters, MiB"),
    Column("optimizer_mb", "float", "AdamW state (two moments + step), MiB"),
    Column("activations_mb", "float", "bytes saved for backward by one micro-batch, MiB (counted)"),
    Column("activations_mb_per_seq", "float", "saved for backward per sequence of length L, MiB (counted)"),
    Column("unexplained_mb", "float", "train_peak_mb minus the counted parts it contains"),
)
assert all(c.kind in KINDS and c.need in ("always", "ok", "") for c in COLUMNS)
RESULT_COLUMNS: list[tuple[str, str]] = [(c.name, c.meaning) for c in COLUMNS]
COLUMN_NAMES = [c.name for c in COLUMNS]
COLUMN_KINDS = {c.name: c.kind for c in COLUMNS}
NUMERIC_COLUMNS = tuple(c.name for c in COLUMNS if c.kind in ("int", "float"))
CELL_KEY = ("task", "model", "method", "ssm_mode", "max_len", "seed")
# Schema 1 had no version or hash column; recognising its header lets the error say what happened.
_V1_NAMES = frozenset(COLUMN_NAMES) - {"schema_version", "sweep_hash"}

_INT = re.compile(r"-?[0-9]+")
_FLOAT = re.compile(r"[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?")  # no nan/inf: empty means "none"
_HEX = re.compile(r"[0-9a-f]{6,128}")
_UNREADABLE = re.compile("[\x00\udc80-\udcff]")  # NUL, or a byte that was not UTF-8 (surrogateescape)
_PHYSICAL_LINE = re.compile(r"[^\n]*\n|[^\n]+\Z")


class ResultsFormatError(ValueError):
    """A results.csv this version cannot vouch for. ``path``, ``line`` (1-based, or None) and ``reason``."""

    def __init__(self, path, line: int | None, reason: str):
        self.path, self.line, self.reason = Path(path), line, reason
        where = f"{path}, line {line}" if line else str(path)
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class BadLine:
    """A record of results.csv that is not a valid row: where it starts, why, and its text (bad bytes as \\xNN)."""

    line: int
    reason: str
    raw: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


# ---------------------------------------------------------------- reading

def read_results(path: str | os.PathLike, sweep_hash: str | None = None) -> list[dict[str, str]]:
    """Rows of a results.csv as dicts of strings, every row checked against :data:`COLUMNS`.

    With ``sweep_hash``, a row of any other sweep is an error too. Raises FileNotFoundError, or
    ResultsFormatError naming the file, the line and what is wrong (the first problem found).
    """
    path = Path(path)
    header_problem, rows, bad = _scan(path, sweep_hash)
    if header_problem:
        raise ResultsFormatError(path, bad[0].line if bad else None, header_problem)
    if bad:
        raise ResultsFormatError(path, bad[0].line, f"{bad[0].reason} (`python -m ssmlora.results repair "
                                                    f"{path}` moves bad rows to {_bad_path(path).name})")
    return [row for _, row in rows]


def split_results(path: str | os.PathLike, sweep_hash: str | None = None) -> tuple[list[dict[str, str]], list[BadLine]]:
    """(good rows, bad lines) of a results.csv. Never raises on content, only when there is no file.

    With an unreadable header every record is bad: which column a field belongs to is unknown.
    """
    _, rows, bad = _scan(Path(path), sweep_hash)
    return [row for _, row in rows], bad


def typed(row: dict[str, str]) -> dict:
    """A checked row with its values converted by column kind; empty fields become None."""
    convert = {"int": int, "float": float, "str": str, "json": json.loads}
    return {c.name: convert[c.kind](row[c.name]) if row.get(c.name, "") != "" else None for c in COLUMNS}


def cell_key(row: dict) -> tuple[str, ...]:
    """The identity of a row within one sweep; ints and their text give the same key."""
    return tuple(str(row.get(k, "")) for k in CELL_KEY)


def _scan(path: Path, sweep_hash: str | None) -> tuple[str | None, list[tuple[int, dict[str, str]]], list[BadLine]]:
    """(header problem, [(line, row)], bad lines): the one pass behind every reader."""
    if not path.exists():
        raise FileNotFoundError(f"no results file at {path}: run `python experiments/run.py` first")
    data = path.read_bytes()
    # surrogateescape keeps undecodable bytes as lone surrogates, so each record can be judged on its own
    text = data.decode("utf-8", "surrogateescape").removeprefix("\ufeff")
    records = _records(text)
    if not records:
        return "empty file: no header", [], []
    first, header_raw, header, problem = records[0]
    problem = problem or _header_problem(header, records[1:])
    if problem:
        return problem, [], [BadLine(first, problem, header_raw)] + [
            BadLine(line, p or f"not read: the header is not results schema {SCHEMA_VERSION}", raw)
            for line, raw, _, p in records[1:]]
    rows, bad, seen = [], [], {}
    for line, raw, fields, problem in records[1:]:
        if problem is None and len(fields) != len(header):
            problem = (f"{len(fields)} fields, the header has {len(header)}"
                       + (" (row cut off mid-write?)" if len(fields) < len(header) else ""))
        row = dict(zip(header, fields)) if problem is None else {}
        problem = problem or _row_problem(row)
        if problem is None and sweep_hash is not None and row["sweep_hash"] != sweep_hash:
            problem = f"row of sweep {row['sweep_hash']}, not of this sweep ({sweep_hash})"
        if problem is None and cell_key(row) in seen:
            problem = f"duplicate of the cell at line {seen[cell_key(row)]}"
        if problem:
            bad.append(BadLine(line, problem, raw))
        else:
            seen[cell_key(row)] = line
            rows.append((line, {name: row[name] for name in COLUMN_NAMES}))
    return None, rows, bad


def _records(text: str) -> list[tuple[int, str, list[str] | None, str | None]]:
    """(first line, raw text, fields or None, problem or None) per non-blank CSV record.

    A quoted field may span lines (a failure reason can), so physical lines are joined until the quotes
    balance; a quote that never closes marks its own line bad and reading resumes on the next line.
    """
    lines = _PHYSICAL_LINE.findall(text)
    odd = [line.count('"') % 2 for line in lines]
    out, i = [], 0
    while i < len(lines):
        start, open_quote = i, odd[i]
        while open_quote and i + 1 < len(lines):
            i += 1
            open_quote ^= odd[i]
        if open_quote:
            i = start + 1
            out.append((start + 1, _printable(lines[start]), None, "unterminated quote (row cut off mid-write?)"))
            continue
        chunk, i = "".join(lines[start:i + 1]), i + 1
        if not chunk.strip("\r\n"):
            continue
        out.append((start + 1, _printable(chunk), *_parse_record(chunk)))
    return out


def _parse_record(chunk: str) -> tuple[list[str] | None, str | None]:
    if bad := _UNREADABLE.search(chunk):
        return None, "NUL byte" if bad.group() == "\x00" else "bytes that are not UTF-8 (binary garbage?)"
    if not chunk.endswith("\n"):
        return None, "no line end: the row was cut off mid-write"
    try:
        parsed = list(csv.reader([chunk], strict=True))
    except csv.Error as err:
        return None, f"not CSV ({err})"
    if len(parsed) != 1:
        return None, "not one CSV row (stray carriage return?)"
    return parsed[0], None


def _header_problem(header: list[str], records) -> str | None:
    if header == COLUMN_NAMES or (sorted(header) == sorted(COLUMN_NAMES)):
        return None
    fix = "move it away or rerun the sweep into a new --out"
    if frozenset(header) == _V1_NAMES:
        return (f"written by results schema 1 (no schema_version column); this ssmlora reads schema "
                f"{SCHEMA_VERSION}: {fix}")
    if "schema_version" in header:
        at = header.index("schema_version")
        versions = {f[at] for _, _, f, p in records if p is None and f and len(f) > at}
        if versions and versions != {str(SCHEMA_VERSION)}:
            return (f"written by results schema {', '.join(sorted(versions))}; this ssmlora reads schema "
                    f"{SCHEMA_VERSION}: read it with the ssmlora that wrote it, or {fix}")
    missing = [c for c in COLUMN_NAMES if c not in header]
    unknown = [c for c in header if c not in COLUMN_NAMES]
    parts = ([f"lacks columns {_few(missing)}"] if missing else []) + (
        [f"has unknown columns {_few(unknown)}"] if unknown else []) + (
        ["repeats a column"] if not missing and not unknown else [])
    return f"{' and '.join(parts)}: not a results table of schema {SCHEMA_VERSION}; {fix}"


def _row_problem(row: dict[str, str]) -> str | None:
    """Why ``row`` (all columns, as text) is not a valid row; None when it is."""
    ok = row["status"].strip().lower() == "ok"
    for column in COLUMNS:
        text = row[column.name]
        if text == "":
            if column.need == "always" or (column.need == "ok" and ok):
                return f"{column.name} is empty" + (" in a row with status ok" if column.need == "ok" else "")
            continue
        name, kind = column.name, column.kind
        if kind == "int" and not _INT.fullmatch(text):
            return f"{name} is not an integer: {_show(text)}"
        if kind == "float" and not _FLOAT.fullmatch(text):
            return f"{name} is not a number: {_show(text)}"
        if column.fraction and not 0.0 <= float(text) <= 1.0:
            return f"{name} {text} is not a fraction in [0, 1]"
        if kind == "json":
            try:
                json.loads(text)
            except ValueError:
                return f"{name} is not JSON: {_show(text)}"
        if name == "schema_version" and text != str(SCHEMA_VERSION):
            return (f"schema_version {text}: this ssmlora reads schema {SCHEMA_VERSION}; read it with the "
                    f"ssmlora that wrote it, or move the row away")
        if name == "sweep_hash" and not _HEX.fullmatch(text):
            return f"sweep_hash is not a lowercase hex string: {_show(text)}"
    return None


def _show(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "...")


def _few(names: list[str]) -> str:
    return ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")


def _printable(raw: str) -> str:
    """A record's text for a message or results.bad.csv: line end dropped, NUL and bad bytes as \\xNN."""
    raw = raw.rstrip("\r\n").encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return raw.replace("\x00", "\\x00")


# ---------------------------------------------------------------- writing

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
    path.parent.mkdir(parents=True, exist_ok=True)
    _replace_atomically(path, lambda fh: _write_csv(fh, COLUMN_NAMES, ([r[k] for k in COLUMN_NAMES] for r in out)))
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
        header_problem, rows, bad = _scan(path, sweep_hash)
        if header_problem:
            raise ResultsFormatError(path, bad[0].line if bad else None, f"{header_problem} (not repairable)")
        if not bad:
            return []
        bad_path = _bad_path(path)
        moved_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        new = not bad_path.exists()
        with bad_path.open("a", newline="", encoding="utf-8") as fh:
            _write_csv(fh, ["moved_at", "line", "reason", "raw"] if new else None,
                       ([moved_at, b.line, b.reason, b.raw] for b in bad))
            os.fsync(fh.fileno())
        write_results(path, [row for _, row in rows], sweep_hash)
        return bad


def _stamp(row: dict, sweep_hash: str | None) -> dict[str, str]:
    text = {name: _cell(row.get(name)) for name in COLUMN_NAMES}
    text["schema_version"] = str(SCHEMA_VERSION)
    if not text["sweep_hash"] and sweep_hash is not None:
        text["sweep_hash"] = sweep_hash
    elif sweep_hash is not None and text["sweep_hash"] != sweep_hash:
        raise ValueError(f"row {cell_key(text)} belongs to sweep {text['sweep_hash']}, not {sweep_hash}")
    if problem := _row_problem(text):
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


def _write_csv(fh, header: list[str] | None, rows) -> None:
    writer = csv.writer(fh)
    if header:
        writer.writerow(header)
    writer.writerows(rows)
    fh.flush()


def _replace_atomically(path: Path, fill) -> None:
    """Write through ``fill(file)`` into a temp file beside ``path``, fsync, rename over it, fsync the folder.

    The temp file is opened with mode 0o666 so the umask decides (mkstemp's 0600 hid results from
    colleagues); a file being replaced keeps its own mode, in case someone widened it on purpose.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        if path.exists():
            os.fchmod(fd, stat.S_IMODE(path.stat().st_mode))
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            fill(fh)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot sync a folder; the rename is atomic anyway
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _lock(path: Path, timeout: float):
    from filelock import FileLock  # not at import time: plots read results without ever locking

    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(f"{path}.lock", timeout=timeout, thread_local=False)


def _bad_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.bad{path.suffix}")


# ---------------------------------------------------------------- extrapolation.csv

EXTRAPOLATION_FILE = "extrapolation.csv"
# Long format, one row per (cell, eval length): the cell's test documents read up to eval_len tokens.
# eval_len == train_len is the cell's own test score. interval_*: Wilson 95 % interval of the accuracy.
EXTRAPOLATION_COLUMNS = ("method", "ssm_mode", "seed", "train_len", "eval_len", "accuracy", "n", "interval_low",
                         "interval_high", "majority_rate")


def wilson_interval(correct: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion `correct` / `n` (95 % by default; `correct` may be a mean
    count over seeds); (nan, nan) for n = 0."""
    if n <= 0:
        return math.nan, math.nan
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def write_extrapolation(path: str | os.PathLike, rows: list[dict]) -> None:
    """Replace `path` with `rows` (dicts with EXTRAPOLATION_COLUMNS), atomically."""
    _replace_atomically(Path(path), lambda fh: _write_csv(fh, list(EXTRAPOLATION_COLUMNS),
                                                          ([_cell(r.get(k)) for k in EXTRAPOLATION_COLUMNS]
                                                           for r in rows)))


def main(argv: list[str] | None = None) -> int:
    """``python -m ssmlora.results check|repair PATH``: list the bad lines; repair also moves them away."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2 or argv[0] not in ("check", "repair"):
        print("usage: python -m ssmlora.results check|repair PATH/results.csv", file=sys.stderr)
        return 2
    path = Path(argv[1])
    try:
        bad = repair_results(path) if argv[0] == "repair" else split_results(path)[1]
    except (FileNotFoundError, ResultsFormatError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for entry in bad:
        print(f"{path}, {entry}")
    verb = "moved to " + str(_bad_path(path)) if argv[0] == "repair" else "found"
    print(f"{len(bad)} bad line(s) {verb}" if bad else f"{path}: every row is valid")
    return 1 if bad and argv[0] == "check" else 0


if __name__ == "__main__":
    sys.exit(main())


# frontier.csv (`experiments/run.py --frontier`): one row per (method, gradient checkpointing). Column order.
FRONTIER_COLUMNS: tuple[tuple[str, str], ...] = (
    ("method", "adapter method"),
    ("gradient_checkpointing", "True | False"),
    ("max_len", "longest L (multiple of 256) whose training step at micro-batch 1 fits the budget; 0: none"),
    ("mem_budget_mb", "the budget, MiB"),
    ("how", "measured (real attempts, bisection; CUDA) | predicted (from the counted activations and the probe "
            "steps, confirmed by a real step at max_len; CPU)"),
    ("reach", "longest input the backbone takes; max_len never exceeds it"),
    ("cap_hit", "True when max_len is the reach: memory was not the limit"),
    ("step_peak_mb", "peak MiB of the real step at max_len (CUDA: max allocated; CPU: weights + RSS rise)"),
    ("predicted_len", "the fitted prediction before any confirming step (0: none)"),
    ("exponent", "log-log slope of the counted saved-for-backward bytes over the warm-up and probe lengths"),
    ("fixed_mb", "weights, gradients and optimizer state, MiB (counted)"),
    ("attempts", "JSON {L: peak MiB or 'oom'} of every real step but the warm-up"),
    ("seconds", "wall time of this row's search"),
    ("model", "backbone"),
    ("attn_impl", "attention kernel"),
    ("precision", "Lightning precision of the steps"),
    ("device", "cpu | cuda"),
    ("note", "why max_len stopped where it did, when not memory"),
)
