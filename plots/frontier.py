"""The max-context frontier (``<sweep>/frontier.csv``, written by ``experiments/run.py --frontier``): its figure
and its report section. Reads the csv only (columns: results.FRONTIER_COLUMNS).

Figure ``frontier``: one pair of bars per method, gradient checkpointing off (solid) and on (hatched), height the
longest L that fits the budget (log2 axis); a bar stopped by the backbone's reach rather than by memory is marked
"reach", and the reach is drawn as a dashed line. Bars carry ``gid`` ``frontier:<method>:<on|off>``.
"""

from __future__ import annotations

import csv
from pathlib import Path

from results import FRONTIER_COLUMNS, SweepFolder
CAPTION = ("Longest context L whose training step at micro-batch 1 fits the memory budget, per method, without "
           "(solid) and with (hatched) gradient checkpointing; `how` in frontier.csv says whether it was measured "
           "by real attempts or predicted and confirmed by one real step.")


def read_frontier(folder: str | Path) -> list[dict]:
    """Rows of ``<folder>/frontier.csv`` ([] when absent), numbers parsed."""
    path = SweepFolder(folder).frontier
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    names = [c for c, _ in FRONTIER_COLUMNS]
    if rows and list(rows[0]) != names:
        raise ValueError(f"{path}: header is not {', '.join(names)}; rerun --frontier")
    for r in rows:
        for key in ("fit_len", "reach", "predicted_len"):
            r[key] = int(float(r[key] or 0))
        for key in ("mem_budget_mb", "step_peak_mb", "exponent", "fixed_mb", "seconds"):
            r[key] = float(r[key]) if r[key] not in ("", "nan") else float("nan")
        for key in ("gradient_checkpointing", "cap_hit"):
            r[key] = r[key] == "True"
    return rows


def frontier_figure(rows: list[dict]):
    import numpy as np

    from plots.style import figure_title, method_colour, new_figure, outside_legend

    fig, (ax,) = new_figure()
    methods = list(dict.fromkeys(r["method"] for r in rows))
    width = 0.38
    for i, method in enumerate(methods):
        for j, on in enumerate((False, True)):
            row = next((r for r in rows if r["method"] == method and r["gradient_checkpointing"] == on), None)
            if row is None:
                continue
            x = i + (j - 0.5) * width
            height = max(row["fit_len"], 1)
            ax.bar([x], [height], width * 0.95, color=method_colour(method), hatch="//" if on else None,
                   edgecolor="black", linewidth=0.6, alpha=0.9 if on else 1.0, gid=f"frontier:{method}:{'on' if on else 'off'}",
                   label=f"{method}, checkpointing {'on' if on else 'off'}")
            text = f"{row['fit_len']:,}" + (" (reach)" if row["cap_hit"] else "") + f"\n{row['how']}"
            ax.annotate(text, (x, height), xytext=(0, 3), textcoords="offset points", ha="center", va="bottom",
                        fontsize=7)
    reach = max((r["reach"] for r in rows), default=0)
    if reach:
        ax.axhline(reach, color="grey", linestyle="--", linewidth=1, label=f"backbone reach ({reach:,} tokens)",
                   gid="reach")
    ax.set_yscale("log", base=2)
    ax.set_xticks(np.arange(len(methods)), methods)
    top = max([reach] + [r["fit_len"] for r in rows])
    ax.set_ylim(min([256] + [max(r["fit_len"], 1) for r in rows]) / 2, top * 3)
    ax.set_ylabel("longest L that fits (tokens, log\u2082 scale)")
    ax.grid(axis="y", alpha=0.3)
    budget = rows[0]["mem_budget_mb"] if rows else float("nan")
    about = (f"{Path(rows[0]['model']).name}, {rows[0]['attn_impl']}, precision {rows[0]['precision']}, {rows[0]['device']}, "
             f"budget {budget / 1024:.3g} GiB" if rows else "no rows")
    figure_title(fig, "Max-context frontier (micro-batch 1)", about)
    outside_legend(ax)
    return fig


def frontier_section(rows: list[dict]) -> list[str]:
    """Markdown lines of the report's frontier section (empty without rows)."""
    if not rows:
        return []
    budget = rows[0]["mem_budget_mb"]
    lines = ["## Max-context frontier", "",
             f"Budget {budget:.0f} MiB ({budget / 1024:.3g} GiB) on {rows[0]['device']}, {rows[0]['attn_impl']}, "
             f"{rows[0]['precision']}; column `fit_len` of frontier.csv. The step's memory is `step_peak_mb` "
             "(CUDA: max allocated; CPU: weights + RSS rise over the step, runtime excluded).", "",
             "| method | gradient checkpointing | max L | how | step peak (MiB) | reach | note |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        peak = "\u2013" if r["step_peak_mb"] != r["step_peak_mb"] else f"{r['step_peak_mb']:.0f}"
        lines.append(f"| {r['method']} | {'on' if r['gradient_checkpointing'] else 'off'} | {r['fit_len']} | "
                     f"{r['how']} | {peak} | {r['reach']} | {r['note']} |")
    for method in dict.fromkeys(r["method"] for r in rows):
        pair = {r["gradient_checkpointing"]: r["fit_len"] for r in rows if r["method"] == method}
        if pair.get(False) and pair.get(True):
            lines.append(f"\n{method}: gradient checkpointing moves the frontier from {pair[False]} to {pair[True]} "
                         f"tokens ({pair[True] / pair[False]:.2f}\u00d7).")
    return lines + ["", "![frontier](plots/frontier.png)", "", CAPTION, ""]
