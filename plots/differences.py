"""Figure "difference vs L": paired accuracy differences with their 95 % bootstrap intervals and the zero line.

Pairs: SSMLoRA - LoRA, and each method - the linear probe (what fine-tuning added to the probe's head). A pair
is drawn at a length only where both sides scored the same test documents (plots.data.paired_at). Artists:
``diff:<a>-<b>`` (Line2D of the differences), ``diffci:<a>-<b>`` (the interval segments), ``zero``.
"""

from __future__ import annotations

import numpy as np

from plots.data import PROBE_SERIES, Sweep, comparison_pairs, paired_at
from plots.style import figure_title, method_colour, new_figure, outside_legend, series_offset, style_axes


def differences(sweep: Sweep) -> dict[tuple[str, str], dict[int, object]]:
    """{(a, b): {length: PairedDifference}} for every pair the sweep supports (empty dicts left out)."""
    predictions = sweep.predictions
    present = set(predictions["series"])
    pairs = comparison_pairs([s for s in sweep.series if s in present], PROBE_SERIES in present, sweep.matched,
                             dict(zip(sweep.table["series"], sweep.table["method"])))
    out = {}
    for a, b in pairs:
        found = {length: paired_at(predictions, a, b, length) for length in sweep.lengths}
        found = {length: d for length, d in found.items() if d is not None}
        if found:
            out[(a, b)] = found
    return out


def difference_vs_length(sweep: Sweep):
    """Accuracy difference (A - B, same documents) against length, 95 % bootstrap interval, zero line."""
    fig, (ax,) = new_figure()
    found = differences(sweep)
    ax.axhline(0.0, color="black", linewidth=1.0, gid="zero", label="no difference")
    for index, ((a, b), by_length) in enumerate(found.items()):
        lengths = sorted(by_length)
        xs = np.array(lengths, dtype=float) * series_offset(index, len(found))
        diffs = [by_length[length] for length in lengths]
        y = np.array([d.diff for d in diffs])
        err = np.array([[d.diff - d.low for d in diffs], [d.high - d.diff for d in diffs]])
        colour = method_colour(a)
        # against the probe: dotted with square markers (the probe's own marker), so it never reads as a - lora
        style, marker = (":", "s") if b == PROBE_SERIES else ("-", "o")
        ax.plot(xs, y, linestyle=style, marker=marker, color=colour, label=f"{a} \u2212 {b}", gid=f"diff:{a}-{b}")
        bars = ax.errorbar(xs, y, yerr=err, fmt="none", ecolor=colour, elinewidth=1.2, capsize=3)
        bars.lines[2][0].set_gid(f"diffci:{a}-{b}")
    if not found:
        ax.text(0.5, 0.5, "no paired predictions (cells without predictions.csv)", transform=ax.transAxes,
                ha="center", va="center", color="grey")
    style_axes(ax, xlabel="context length L (tokens, log\u2082 scale)",
               ylabel="accuracy difference (fraction, same test documents)", lengths=sweep.lengths)
    figure_title(fig, "Paired accuracy difference vs context length (95 % bootstrap intervals)", sweep.describe())
    outside_legend(ax)
    return fig
