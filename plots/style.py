"""Shared look of every figure: method colours, log2 length axes, failure markers, saving.

Every figure goes through :func:`new_figure`, :func:`style_axes` and :func:`save_figure`, so size, fonts,
tick labels and file formats are the same everywhere and the per-figure modules only draw data.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import (FixedLocator, FuncFormatter, LogLocator, NullFormatter,  # noqa: E402
                               NullLocator)

from results import write_atomically  # noqa: E402

FIGURE_SIZE_IN = (8.0, 4.5)
DPI = 120
FIGURE_SIZE_PX = (int(FIGURE_SIZE_IN[0] * DPI), int(FIGURE_SIZE_IN[1] * DPI))  # (width, height)

# Fixed colour per method; other series draw from EXTRA_COLOURS by a stable hash of their name.
METHOD_COLOURS = {
    "lora": "#1f77b4",  # blue
    "ssmlora": "#ff7f0e",  # orange
    "frozen": "#7f7f7f",  # grey
    "ssmlora:depth": "#ff7f0e",
    "ssmlora:carry": "#d62728",
    "ssmlora:scan": "#9467bd",
}
EXTRA_COLOURS = ("#2ca02c", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#393b79", "#637939", "#843c39")
MAJORITY_STYLE = {"color": "black", "linestyle": "--", "linewidth": 1.0, "alpha": 0.7}
MAJORITY_MARKER = {"marker": "_", "markersize": 14}  # keeps a single-length majority rate visible
FAILURE_MARKERS = {"oom": "^", "failed": "X"}
FAILURE_LABELS = {"oom": "out of memory", "failed": "failed"}
FAILURE_BAND = 0.12  # fraction of the axis height kept free at the top for failure markers


def method_colour(series: str) -> str:
    """The colour of a method (or 'method (mode)') series: the same in every figure and every sweep."""
    if series in METHOD_COLOURS:
        return METHOD_COLOURS[series]
    return EXTRA_COLOURS[zlib.crc32(series.encode()) % len(EXTRA_COLOURS)]


def new_figure(ncols: int = 1, width_ratios=None):
    """A figure of FIGURE_SIZE_PX with constrained layout (room for an outside legend) and its axes."""
    fig, axes = plt.subplots(1, ncols, figsize=FIGURE_SIZE_IN, dpi=DPI, layout="constrained",
                             width_ratios=width_ratios, squeeze=False)
    return fig, list(axes[0])


def style_axes(ax, *, title: str | None = None, xlabel: str | None = None, ylabel: str | None = None,
               lengths=None, log_y: bool = False) -> None:
    """Labels, grid and scales; with ``lengths``, a log2 x axis ticked at exactly those lengths."""
    if lengths:
        set_length_axis(ax, lengths)
    if log_y:
        ax.set_yscale("log")
        readable_log_ticks(ax.yaxis)
    if title:
        ax.set_title(title, fontsize=10)
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.3)
    ax.tick_params(labelsize=8)


def set_length_axis(ax, lengths) -> None:
    """Log2 x axis with ticks labelled 512, 1024, ... and a half-octave margin on each side."""
    lengths = sorted(set(int(l) for l in lengths))
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(lengths))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{int(round(x))}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(lengths[0] / 2 ** 0.5, lengths[-1] * 2 ** 0.5)


def readable_log_ticks(axis) -> None:
    """Log-axis ticks at 1, 2, 5 x 10^k written as plain numbers (200, 500, 1000), minor ticks unlabelled."""
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def series_offset(index: int, count: int, spread: float = 0.08) -> float:
    """Multiplicative x offset (in octaves) that separates ``count`` series at the same length."""
    return 2 ** (spread * (index - (count - 1) / 2))


def draw_failures(ax, failures, series_order, *, y_axes: float = 1 - FAILURE_BAND / 2, row_label: str = "",
                  reserve_band: bool = True):
    """Mark failed cells at the top of the axis: ^ for out of memory, X for other failures.

    ``failures`` is :func:`plots.data.failure_summary` output; markers sit at the cell's length (offset per
    series) in data x and at ``y_axes`` in axes y, each labelled 'OOM\u00d7seeds'; with ``row_label`` (used
    when several sweeps share an axis) the row is named at the left edge instead of labelling each marker.
    Each scatter has gid ``'<kind>:<series>'`` for tests. ``reserve_band`` raises the y limit once so the
    data stays clear of the markers.
    """
    if failures is None or len(failures) == 0:
        return []
    transform = ax.get_xaxis_transform()
    artists = []
    for (series, kind), group in failures.groupby(["series", "status_kind"], sort=True):
        offset = series_offset(series_order.index(series), len(series_order)) if series in series_order else 1
        xs = group["max_len"].to_numpy(dtype=float) * offset
        artist = ax.scatter(xs, np.full(len(xs), y_axes), transform=transform, marker=FAILURE_MARKERS[kind],
                            s=60, color=method_colour(series), edgecolor="black", linewidth=0.6, zorder=5,
                            clip_on=False, gid=f"{kind}:{series}")
        artists.append(artist)
        stagger = -7 - 7 * (series_order.index(series) % 3 if series in series_order else 0)
        for x, seeds in zip(xs, group["seeds"] if not row_label else []):
            label = "OOM" if kind == "oom" else "fail"
            ax.annotate(f"{label}\u00d7{seeds}", (x, y_axes), xycoords=transform, xytext=(0, stagger),
                        textcoords="offset points", ha="center", va="top", fontsize=6,
                        color=method_colour(series))
    if row_label:
        ax.text(0.01, y_axes, row_label, transform=ax.transAxes, ha="left", va="center", fontsize=7, color="dimgrey")
    if reserve_band:
        keep_top_band_free(ax)
    return artists


def keep_top_band_free(ax, band: float = FAILURE_BAND * 1.6) -> None:
    """Raise the y limit so the data stays below the top ``band`` of the axis (where failures sit)."""
    low, high = ax.get_ylim()
    if ax.get_yscale() == "log":
        if not (np.isfinite([low, high]).all() and 0 < low < high):  # empty log axis: no data to frame
            low, high = 1.0, 10.0
        log_low, log_high = np.log10(low), np.log10(high)
        ax.set_ylim(low, 10 ** (log_low + (log_high - log_low) / (1 - band)))
    else:
        ax.set_ylim(low, low + (high - low) / (1 - band))


def failure_legend_handles(kinds) -> list[Line2D]:
    """Legend proxies explaining the failure markers present in a figure."""
    return [Line2D([], [], linestyle="none", marker=FAILURE_MARKERS[k], color="white", markeredgecolor="black",
                   markersize=7, label=f"{FAILURE_LABELS[k]} (top of axis)") for k in sorted(set(kinds))]


def outside_legend(ax, extra_handles=(), source_axes=None) -> None:
    """Legend of ``source_axes`` (default ``ax``) plus ``extra_handles``, outside ``ax`` on its right.

    Attached to the axes, so constrained layout shrinks the axes to make room: the legend never covers data.
    """
    handles, labels = [], []
    for source in source_axes or [ax]:
        for handle, label in zip(*source.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    handles += list(extra_handles)
    labels += [h.get_label() for h in extra_handles]
    if handles:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8,
                  frameon=False)


def figure_title(fig, what: str, about: str) -> None:
    """Two-line figure title: what is drawn, then task, model and seed count."""
    fig.suptitle(f"{what}\n{about}", fontsize=10)


def save_figure(fig, out_dir: Path, name: str) -> list[Path]:
    """Write ``name``.png and ``name``.svg into ``out_dir`` at the fixed size; close the figure."""
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.svg"]
    for path in paths:
        write_atomically(path, lambda tmp, kind=path.suffix[1:]: fig.savefig(tmp, dpi=DPI, format=kind))
    plt.close(fig)
    return paths
