"""``python -m plots compare SWEEP_A SWEEP_B``: two sweeps overlaid (e.g. CPU vs GPU, two backbones).

Colour still says the method; the line style says the sweep (A solid with circles, B dashed with squares).
Writes one PNG+SVG per metric and ``compare.md`` with B/A ratios at the lengths both sweeps measured.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from plots.data import Sweep, failure_summary, load_sweep, series_stats, sort_series
from plots.figures import (ACCURACY, LENGTH_LABEL, PEAK_MEMORY, REAL_TOKENS, STEP_TIME, draw_majority,
                           draw_series, seed_count_label)
from plots.style import (FAILURE_BAND, draw_failures, failure_legend_handles, figure_title, keep_top_band_free,
                         new_figure, outside_legend, save_figure, series_offset, style_axes)
from results import write_atomically

SWEEP_STYLES = (("-", "o"), ("--", "s"))
COMPARED_METRICS = {"accuracy_vs_length": ACCURACY, "peak_memory_vs_length": PEAK_MEMORY,
                    "tokens_per_s_vs_length": REAL_TOKENS, "step_time_vs_length": STEP_TIME}


def compare_sweeps(sweep_a: str | Path, sweep_b: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Overlay figures and compare.md for two sweep folders; return the written paths."""
    sweeps = (load_sweep(sweep_a), load_sweep(sweep_b))
    labels = sweep_labels(*sweeps)
    out = Path(out_dir) if out_dir else sweeps[0].path.parent / f"compare_{labels[0]}_vs_{labels[1]}"
    written: list[Path] = []
    for name, spec in COMPARED_METRICS.items():
        written += save_figure(overlay_figure(sweeps, labels, spec), out / "plots", name)
    report = write_atomically(out / "compare.md", render_comparison(sweeps, labels, list(COMPARED_METRICS)))
    return written + [report]


def sweep_labels(a: Sweep, b: Sweep) -> tuple[str, str]:
    """Distinct short names: the sweeps' names, else their folder names, else 'A' and 'B'."""
    for pair in ((a.name, b.name), (a.path.name, b.path.name)):
        if pair[0] != pair[1]:
            return pair
    return "A", "B"


def overlay_figure(sweeps: tuple[Sweep, Sweep], labels: tuple[str, str], spec):
    """One metric against length for both sweeps: same colour per method, one line style per sweep."""
    fig, (ax,) = new_figure()
    order = sort_series(set(sweeps[0].series) | set(sweeps[1].series))
    slots = len(order) * 2
    kinds = []
    for k, (sweep, label, (linestyle, marker)) in enumerate(zip(sweeps, labels, SWEEP_STYLES)):
        for index, series in enumerate(order):
            stats = [s for s in series_stats(sweep, series, spec.metric) if not spec.log_y or s.mean > 0]
            counts = seed_count_label([s.n for s in stats])
            draw_series(ax, stats, series=series, label=f"{series} \u00b7 {label} ({counts})",
                        x_offset=series_offset(2 * index + k, slots), linestyle=linestyle, marker=marker)
        if spec.majority:
            draw_majority(ax, sweep, linestyle=linestyle, label=f"majority class \u00b7 {label}")
    lengths = sorted(set(sweeps[0].lengths) | set(sweeps[1].lengths))
    style_axes(ax, xlabel=LENGTH_LABEL, ylabel=spec.ylabel, lengths=lengths, log_y=spec.log_y)
    if spec.y_range:
        ax.set_ylim(*spec.y_range)
        ax.set_yticks(np.linspace(*spec.y_range, 6))
    for k, (sweep, label) in enumerate(zip(sweeps, labels)):
        failures = failure_summary(sweep)
        kinds += list(failures["status_kind"])
        draw_failures(ax, failures, order, y_axes=1 - FAILURE_BAND * (0.35 + 0.45 * k), row_label=f"{label} failures:",
                      reserve_band=False)
    if kinds:
        keep_top_band_free(ax, band=FAILURE_BAND * 2.2)
    figure_title(fig, f"{spec.title}: {labels[0]} (solid) vs {labels[1]} (dashed)",
                 f"{sweeps[0].describe()}  |  {sweeps[1].describe()}")
    outside_legend(ax, failure_legend_handles(kinds))
    return fig


def render_comparison(sweeps: tuple[Sweep, Sweep], labels: tuple[str, str], figure_names: list[str]) -> str:
    """compare.md: what was compared, a B/A ratio table at shared lengths, the overlay figures."""
    a, b = sweeps
    lines = [f"# Comparison: {labels[0]} vs {labels[1]}", "",
             f"- A = `{a.path}`: {a.describe()}", f"- B = `{b.path}`: {b.describe()}", "",
             "Ratios are B / A of means over successful seeds, at lengths where both sweeps succeeded.", "",
             "| method | L | seeds A/B | accuracy A | accuracy B | train_peak_mb B/A | step time B/A | real tokens/s B/A |",
             "|---|---|---|---|---|---|---|---|"]
    for series in sort_series(set(a.series) & set(b.series)):
        cells_a, cells_b = (_means_by_length(s, series) for s in sweeps)
        for length in sorted(set(cells_a) & set(cells_b)):
            ma, mb = cells_a[length], cells_b[length]
            lines.append(f"| {series} | {length} | {ma['n']}/{mb['n']} | {_fmt(ma['accuracy'])} | "
                         f"{_fmt(mb['accuracy'])} | {_ratio(mb, ma, 'train_peak_mb') if ma['mem_basis'] == mb['mem_basis'] else 'n/a (mem_basis differs)'} | "
                         f"{_ratio(mb, ma, 'step_time_s')} | {_ratio(mb, ma, 'real_tokens_per_s')} |")
    lines += ["", "## Figures", ""]
    lines += [f"![{name.replace('_', ' ')}](plots/{name}.png)\n" for name in figure_names]
    return "\n".join(lines) + "\n"


def _means_by_length(sweep: Sweep, series: str) -> dict[int, dict]:
    rows = sweep.ok[sweep.ok["series"] == series]
    columns = ("accuracy", "train_peak_mb", "step_time_s", "real_tokens_per_s")
    return {int(length): {"n": len(g), "mem_basis": ",".join(sorted(set(g["mem_basis"].dropna().astype(str)))),
                          **{c: g[c].mean() for c in columns}} for length, g in rows.groupby("max_len")}


def _ratio(b: dict, a: dict, column: str) -> str:
    if math.isnan(a[column]) or math.isnan(b[column]) or a[column] <= 0:
        return "\u2013"
    return f"{b[column] / a[column]:.2f}\u00d7"


def _fmt(value: float) -> str:
    return "\u2013" if math.isnan(value) else f"{value:.3f}"
