"""Reading `results.csv` strictly: every row is checked against its columns, or the line is named as bad."""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from results.columns import CELL_KEY, COLUMN_NAMES, COLUMNS, ROLES, SCHEMA_1_NAMES, SCHEMA_VERSION


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


def read_results(path: str | os.PathLike, sweep_hash: str | None = None) -> list[dict[str, str]]:
    """Rows of a results.csv as dicts of strings, every row checked against :data:`COLUMNS`.

    With ``sweep_hash``, a row of any other sweep is an error too. Raises FileNotFoundError, or
    ResultsFormatError naming the file, the line and what is wrong (the first problem found).
    """
    path = Path(path)
    header_problem, rows, bad = scan_file(path, sweep_hash)
    if header_problem:
        raise ResultsFormatError(path, bad[0].line if bad else None, header_problem)
    if bad:
        raise ResultsFormatError(path, bad[0].line, f"{bad[0].reason} (`python -m results repair "
                                                    f"{path}` moves bad rows to {bad_path(path).name})")
    return [row for _, row in rows]


def split_results(path: str | os.PathLike, sweep_hash: str | None = None) -> tuple[list[dict[str, str]], list[BadLine]]:
    """(good rows, bad lines) of a results.csv. Never raises on content, only when there is no file.

    With an unreadable header every record is bad: which column a field belongs to is unknown.
    """
    _, rows, bad = scan_file(Path(path), sweep_hash)
    return [row for _, row in rows], bad


def typed(row: dict[str, str]) -> dict:
    """A checked row with its values converted by column kind; empty fields become None."""
    convert = {"int": int, "float": float, "str": str, "json": json.loads}
    return {c.name: convert[c.kind](row[c.name]) if row.get(c.name, "") != "" else None for c in COLUMNS}


def cell_key(row: dict) -> tuple[str, ...]:
    """The identity of a row within one sweep; ints and their text give the same key."""
    return tuple(str(row.get(k, "")) for k in CELL_KEY)


def scan_file(path: Path, sweep_hash: str | None) -> tuple[str | None, list[tuple[int, dict[str, str]]], list[BadLine]]:
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
        problem = problem or row_problem(row)
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
    if frozenset(header) == SCHEMA_1_NAMES:
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


def row_problem(row: dict[str, str]) -> str | None:
    """Why ``row`` (all columns, as text) is not a valid row; None when it is."""
    ok = row["status"].strip().lower() == "ok"
    scored = ok and row["role"] != "cost"
    for column in COLUMNS:
        text = row[column.name]
        if text == "":
            if column.need == "always" or (column.need == "ok" and ok) or (column.need == "scored" and scored):
                where = {"ok": " in a row with status ok", "scored": " in an accuracy row with status ok"}
                return f"{column.name} is empty" + where.get(column.need, "")
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
        if name == "role" and text not in ROLES:
            return f"role is {_show(text)}, not one of {', '.join(ROLES)}"
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


def bad_path(path: Path) -> Path:
    """Where repair moves the bad lines of `path`: results.bad.csv beside results.csv."""
    return path.with_name(f"{path.stem}.bad{path.suffix}")
