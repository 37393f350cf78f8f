"""Scaling figures and the sweep report, drawn from a sweep's ``results.csv`` and ``config.json`` only.

``make_report(sweep_dir)`` writes ``<sweep>/plots/*.png|svg`` and ``<sweep>/report.md`` and returns their
paths; ``python -m plots SWEEP`` does the same from the shell and ``python -m plots compare A B`` overlays
two sweeps. Importing this package is light: matplotlib and pandas load on first use, torch never.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["make_report", "compare_sweeps"]


def make_report(sweep_dir: str | Path) -> list[Path]:
    """Draw every figure of a sweep and write its report.md; return the written paths.

    Raises FileNotFoundError, results.ResultsFormatError or plots.data.SweepError (one-line
    messages) for a missing, malformed or empty results table. A sweep in which no cell succeeded still gets
    its figures (showing the failures) and a report saying so.
    """
    from plots.report import make_report as _make_report

    return _make_report(sweep_dir)


def compare_sweeps(sweep_a: str | Path, sweep_b: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Overlay two sweeps (e.g. CPU vs GPU, two backbones); return the written figure and report paths."""
    from plots.compare import compare_sweeps as _compare

    return _compare(sweep_a, sweep_b, out_dir)
