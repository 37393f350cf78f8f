"""Find and validate a sweep's files without heavy imports, so bad input fails fast with one line."""

from __future__ import annotations

import json
from pathlib import Path


class SweepError(ValueError):
    """A sweep folder that cannot be charted (empty results table, no rows, unreadable config)."""


def read_sweep_files(sweep_dir: str | Path) -> tuple[Path, list[dict[str, str]], dict]:
    """(sweep folder, results rows as strings, config dict) of a sweep folder or of its results.csv.

    Raises FileNotFoundError (no folder or no results.csv), results.ResultsFormatError (a header or row
    that breaks the results contract: file and line named) or SweepError (empty file, no rows, bad
    config.json), each with a one-line message.
    """
    from results import SweepFolder, read_results

    path = Path(sweep_dir)
    if path.is_file():
        path = path.parent
    if not path.is_dir():
        raise FileNotFoundError(f"no sweep folder at {path}")
    results_path = SweepFolder(path).results
    if results_path.exists() and not results_path.read_bytes().strip():  # bytes: the file may not be text
        raise SweepError(f"{results_path} is empty: the sweep recorded no cell yet")
    rows = read_results(results_path)
    if not rows:
        raise SweepError(f"{results_path} has a header but no rows: the sweep recorded no cell yet")
    return path, rows, read_config(SweepFolder(path).config)


def read_config(path: Path) -> dict:
    """config.json as a dict; {} when absent (fixture and hand-made sweeps may have none)."""
    if not path.exists():
        return {}
    try:
        config = json.loads(path.read_bytes() or b"{}")
    except UnicodeDecodeError:
        raise SweepError(f"{path} is not text (not UTF-8)") from None
    except json.JSONDecodeError as exc:
        raise SweepError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    return config if isinstance(config, dict) else {}
