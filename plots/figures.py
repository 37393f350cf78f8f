"""The sweep's figures. Each function takes a :class:`plots.data.Sweep` and returns a matplotlib Figure.

Artists that carry data have a ``gid`` so tests (and curious users) can read the drawn values back:
``mean:<series>`` (Line2D of per-length means), ``seeds:<series>`` (scatter of single-seed values),
``interval:<series>`` (errorbar segments of the 95% interval: costs, t over 3+ seeds; accuracy, over seeds
and test documents at every seed count),
``oom:<series>`` / ``failed:<series>`` (failure markers), ``cells:<series>`` and ``front`` (Pareto), ``adapter`` /
``head`` (parameter bars), ``heatmap:<series>`` (needle image), ``n_test`` (test documents per length),
``mean:probe`` (the probe alone); the difference figure's artists are listed in :mod:`plots.differences`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullLocator

from plots.data import (PROBE_SERIES, CellStats, Sweep, accuracy_stats, depth_accuracy,
                        failure_summary, n_test_by_length, pareto_front, scaling_exponent, series_stats)
from plots.differences import difference_vs_length
from plots.extrapolation import accuracy_vs_eval_length, load_extrapolation
from plots.learning_curve import learning_curve_figure, load_curves
from plots.style import (MAJORITY_MARKER, MAJORITY_STYLE, draw_failures, failure_legend_handles, figure_title,
                         method_colour, new_figure, outside_legend, readable_log_ticks, series_offset, style_axes)

LENGTH_LABEL = "context length L (tokens, log\u2082 scale)"


@dataclass(frozen=True)
class MetricSpec:
    """What a metric-vs-length figure draws and how its y axis reads."""

    metric: str
    title: str
    ylabel: str
    log_y: bool = False
    exponent_name: str = ""  # non-empty: fit value ~ L^b per series and name it in the legend
    majority: bool = False
    y_range: tuple[float, float] | None = None


ACCURACY = MetricSpec("accuracy", "Accuracy vs context length (95 % intervals)", "test accuracy (fraction)",
                      majority=True, y_range=(0.0, 1.0))
PEAK_MEMORY = MetricSpec("train_peak_mb", "Training-phase peak memory vs context length",
                         "train_peak_mb (MiB, log scale)", log_y=True, exponent_name="mem")
# The parts of a training step's memory, bottom to top of a stacked bar, with the opacity of the method colour.
DECOMPOSITION = (("weights", ("weights_frozen_mb", "weights_trainable_mb"), 0.25, None),
                 ("grads + optimizer", ("grads_mb", "optimizer_mb"), 0.5, None),
                 ("activations (one micro-batch)", ("activations_mb",), 0.95, None),
                 ("unexplained", ("unexplained_mb",), 0.15, "xx"))
REAL_TOKENS = MetricSpec("real_tokens_per_s", "Training throughput vs context length",
                         "real (non-padding) tokens/s")
STEP_TIME = MetricSpec("step_time_s", "Step time vs context length", "median optimizer-step time (s, log scale)",
                       log_y=True, exponent_name="time")


def seed_count_label(counts) -> str:
    """'n=3 seeds' when every point has the same seed count, else 'n=3 seeds, fewer where marked'."""
    counts = sorted(set(counts))
    if not counts:
        return "no result"
    high = counts[-1]
    text = f"n={high} seed{'s' if high != 1 else ''}"
    return text if len(counts) == 1 else f"{text}, fewer where marked"


def draw_series(ax, stats, *, series: str, label: str, x_offset: float = 1.0, linestyle: str = "-",
                marker: str = "o") -> None:
    """One series: seed values as points, means joined by a line, 95% intervals where there are 3+ seeds.

    A point with fewer seeds than the series' most is annotated 'n=k' (the legend gives the usual count).
    """
    colour = method_colour(series)
    if not stats:  # keep the method's colour in the legend: its failures are drawn at the top
        ax.plot([], [], linestyle=linestyle, marker=marker, color=colour, label=label)
        return
    xs = np.array([s.length for s in stats], dtype=float) * x_offset
    seed_x = np.concatenate([np.full(s.n, x) for s, x in zip(stats, xs)])
    seed_y = np.concatenate([s.values for s in stats])
    ax.scatter(seed_x, seed_y, s=14, color=colour, alpha=0.45, linewidth=0, zorder=3, gid=f"seeds:{series}")
    means = np.array([s.mean for s in stats])
    ax.plot(xs, means, linestyle=linestyle, marker=marker, markersize=5, color=colour, label=label, zorder=4,
            gid=f"mean:{series}")
    with_interval = [(x, s) for x, s in zip(xs, stats) if s.has_interval]
    if with_interval:
        ix = np.array([x for x, _ in with_interval])
        im = np.array([s.mean for _, s in with_interval])
        err = np.array([[s.mean - s.low for _, s in with_interval], [s.high - s.mean for _, s in with_interval]])
        container = ax.errorbar(ix, im, yerr=err, fmt="none", ecolor=colour, elinewidth=1.2, capsize=3, zorder=3)
        container.lines[2][0].set_gid(f"interval:{series}")
    most = max(s.n for s in stats)
    for x, s in zip(xs, stats):
        if s.n < most:
            ax.annotate(f"n={s.n}", (x, s.mean), xytext=(5, -10), textcoords="offset points", fontsize=7,
                        color=colour, gid=f"count:{series}")


def plot_metric_vs_length(sweep: Sweep, spec: MetricSpec):
    """A metric against context length, one line per method, failures at the top of the axis."""
    fig, (ax,) = new_figure()
    order = sweep.series
    accuracy = spec.metric == "accuracy"
    for index, series in enumerate(order):
        stats = accuracy_stats(sweep, series) if accuracy else series_stats(sweep, series, spec.metric)
        if spec.log_y:
            stats = [s for s in stats if s.mean > 0]
        label = f"{series} ({seed_count_label([c.n for c in stats])})"
        if spec.exponent_name and len(stats) >= 2:
            b = scaling_exponent([s.length for s in stats], [s.mean for s in stats])
            label += f", {spec.exponent_name} \u221d L^{b:.2f}"
        draw_series(ax, stats, series=series, label=label, x_offset=series_offset(index, len(order)))
    if accuracy:
        draw_probe_and_counts(ax, sweep)
    if spec.majority:
        draw_majority(ax, sweep)
    style_axes(ax, xlabel=LENGTH_LABEL, ylabel=spec.ylabel, lengths=sweep.lengths, log_y=spec.log_y)
    if spec.y_range:
        ax.set_ylim(*spec.y_range)
        ax.set_yticks(np.linspace(*spec.y_range, 6))
    if sweep.ok[spec.metric].notna().sum() == 0:
        ax.text(0.5, 0.5, "no successful cell", transform=ax.transAxes, ha="center", va="center", color="grey")
    failures = failure_summary(sweep)
    draw_failures(ax, failures, order)
    figure_title(fig, spec.title, sweep.describe())
    outside_legend(ax, failure_legend_handles(failures["status_kind"]))
    return fig


def draw_probe_and_counts(ax, sweep: Sweep) -> None:
    """The linear probe alone as its own dotted line (what fine-tuning starts from), and the number of test
    documents under each length (gid 'n_test')."""
    probe = accuracy_stats(sweep, PROBE_SERIES)
    if probe:
        draw_series(ax, probe, series=PROBE_SERIES, label="linear probe, frozen model (before fine-tuning)",
                    linestyle=":", marker="s")
    for length, n in n_test_by_length(sweep).items():
        ax.annotate(f"n={n}", (length, 0), xycoords=("data", "axes fraction"), xytext=(0, 3),
                    textcoords="offset points", ha="center", va="bottom", fontsize=7, color="dimgrey", gid="n_test")


def draw_majority(ax, sweep: Sweep, *, linestyle: str = "--", label: str = "majority class") -> None:
    """The majority-class rate per length as a dashed line (gid 'majority')."""
    rates = sweep.table.dropna(subset=["majority_rate"]).groupby("max_len")["majority_rate"].mean()
    if rates.empty:
        return
    style = dict(MAJORITY_STYLE, linestyle=linestyle, **MAJORITY_MARKER)
    ax.plot(rates.index.to_numpy(dtype=float), rates.to_numpy(), label=label, gid="majority", **style)


def accuracy_vs_length(sweep: Sweep):
    return plot_metric_vs_length(sweep, ACCURACY)


def memory_vs_length(sweep: Sweep):
    """Left: counted activations per sequence against L (log-log, fitted exponent per method), with weights +
    gradients + optimizer state as a flat band. Right: the training step's parts at each L, stacked per method.

    Every value comes from one column per part (activations_mb_per_seq, weights_*_mb, grads_mb, optimizer_mb,
    activations_mb, unexplained_mb), so the panels compare like with like across methods; from the cost cells
    when the sweep ran them (`Sweep.costs`).
    """
    sweep = sweep.costs()
    fig, (left, right) = new_figure(ncols=2)
    order = sweep.series
    for index, series in enumerate(order):
        stats = [s for s in series_stats(sweep, series, "activations_mb_per_seq") if s.mean > 0]
        label = series
        if len(stats) >= 2:
            b = scaling_exponent([s.length for s in stats], [s.mean for s in stats])
            label += f", \u221d L^{b:.2f}"
        draw_series(left, stats, series=series, label=label, x_offset=series_offset(index, len(order)))
    fixed = sweep.ok[["weights_frozen_mb", "weights_trainable_mb", "grads_mb", "optimizer_mb"]].sum(axis=1, min_count=4)
    if fixed.notna().any():
        low, high = float(fixed.min()), float(fixed.max())
        left.axhspan(low / 1.04, high * 1.04, color="grey", alpha=0.25, gid="fixed_band",
                     label=f"weights + grads + optimizer ({low:.0f}\u2013{high:.0f} MiB)")
    counted = (sweep.ok["activations_mb_per_seq"] > 0).any()
    style_axes(left, xlabel=LENGTH_LABEL, ylabel="activations_mb_per_seq (MiB, log scale)", lengths=sweep.lengths,
               log_y=bool(counted), title="activations per sequence")
    draw_decomposition(right, sweep)
    if not counted:
        left.text(0.5, 0.5, "no counted memory in results.csv", transform=left.transAxes, ha="center", color="grey")
    failures = failure_summary(sweep)
    draw_failures(left, failures, order)
    figure_title(fig, "Memory of a training step vs context length", sweep.describe())
    parts = [Patch(facecolor="grey", alpha=alpha, hatch=hatch, label=name) for name, _, alpha, hatch in DECOMPOSITION]
    outside_legend(right, parts + failure_legend_handles(failures["status_kind"]), source_axes=[left])
    return fig


def draw_decomposition(ax, sweep: Sweep) -> None:
    """Stacked bars, one per (length, method), of the mean parts over ok seeds (gid ``stack:<series>:<part>``)."""
    lengths, order = sweep.lengths, sweep.series
    width = 0.8 / max(1, len(order))
    for index, series in enumerate(order):
        rows = sweep.ok[sweep.ok["series"] == series].groupby("max_len")
        for x, length in enumerate(lengths):
            if length not in rows.groups:
                continue
            cell = rows.get_group(length)
            bottom = 0.0
            for name, columns, alpha, hatch in DECOMPOSITION:
                value = float(cell[list(columns)].sum(axis=1, min_count=len(columns)).mean())
                if math.isnan(value) or value <= 0:
                    continue
                ax.bar([x + (index - (len(order) - 1) / 2) * width], [value], width * 0.95, bottom=bottom,
                       color=method_colour(series), alpha=alpha, hatch=hatch, edgecolor=method_colour(series),
                       linewidth=0.5, gid=f"stack:{series}:{name}")
                bottom += value
    ax.set_xticks(range(len(lengths)), [_short_length(L) for L in lengths])
    basis = sorted({str(v) for v in sweep.ok["mem_basis"].dropna() if str(v).strip()})
    style_axes(ax, xlabel="context length L (tokens)", ylabel="MiB",
               title="step, stacked" + (f" ({', '.join(basis)})" if basis else ""))


def tokens_per_s_vs_length(sweep: Sweep):
    return plot_metric_vs_length(sweep.costs(), REAL_TOKENS)


def step_time_vs_length(sweep: Sweep):
    return plot_metric_vs_length(sweep.costs(), STEP_TIME)


def accuracy_vs_cost(sweep: Sweep):
    """Accuracy against peak memory and against step time: one marker per (method, length), Pareto front."""
    fig, axes = new_figure(ncols=2)
    costs = (("train_peak_mb", "train_peak_mb: training-phase peak (MiB, log scale)"),
             ("step_time_s", "step time (s, log scale)"))
    for ax, (cost, xlabel) in zip(axes, costs):
        points = []  # (cost, accuracy) of every drawn cell, for the front
        for series in sweep.series:
            cells = _cost_accuracy_cells(sweep, series, cost)
            if cells:
                draw_cost_cells(ax, series, cells)
                points += [(c.cost, c.accuracy.mean) for c in cells]
        if points:
            front = [points[i] for i in pareto_front([p[0] for p in points], [p[1] for p in points])]
            ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="black", linestyle=":",
                    linewidth=1, zorder=2, label="Pareto front (lower cost, higher accuracy)", gid="front")
            draw_majority_level(ax, sweep)
            set_log_cost_axis(ax)
        else:
            ax.text(0.5, 0.5, "no successful cell", transform=ax.transAxes, ha="center", va="center",
                    color="grey")
        style_axes(ax, xlabel=xlabel, ylabel="test accuracy (fraction)" if ax is axes[0] else None)
    figure_title(fig, "Accuracy vs cost (one marker per method and length L, labelled with L)", sweep.describe())
    missing = _failure_note(sweep)
    if missing:
        fig.supxlabel(f"not plotted (no result): {missing}", fontsize=7, color="dimgrey")
    outside_legend(axes[-1], source_axes=axes)
    return fig


def draw_majority_level(ax, sweep: Sweep, label: str | None = "majority class") -> None:
    """The mean majority-class rate as a horizontal dashed line (gid 'majority')."""
    rate = sweep.table["majority_rate"].mean()
    if not math.isnan(rate):
        ax.axhline(rate, label=label, gid="majority", **MAJORITY_STYLE)


def trainable_parameters(sweep: Sweep):
    """Adapter and classifier-head parameter counts per method, side by side (head is not adapter)."""
    fig, (ax,) = new_figure()
    order = sweep.series
    adapter = [_median_count(sweep, s, "adapter_params") for s in order]
    head = [_median_count(sweep, s, "head_params") for s in order]
    x = np.arange(len(order))
    colours = [method_colour(s) for s in order]
    bars_adapter = ax.bar(x - 0.2, np.nan_to_num(adapter), width=0.38, color=colours, edgecolor="black",
                          linewidth=0.5, gid="adapter")
    bars_head = ax.bar(x + 0.2, np.nan_to_num(head), width=0.38, color=colours, edgecolor="black", alpha=0.45,
                       hatch="//", linewidth=0.5, gid="head")
    for bars, values in ((bars_adapter, adapter), (bars_head, head)):
        ax.bar_label(bars, labels=[_count_text(v) for v in values], fontsize=7, padding=2)
    ax.set_xticks(x, order)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _count_text(v)))
    style_axes(ax, xlabel="method", ylabel="trainable parameters (count)")
    ax.margins(y=0.15)
    figure_title(fig, "Trainable parameters per method", sweep.describe())
    outside_legend(ax, [Patch(facecolor="white", edgecolor="black", label="adapter"),
                             Patch(facecolor="white", edgecolor="black", hatch="//", label="classifier head")])
    return fig


def needle_depth_heatmap(sweep: Sweep):
    """Needle accuracy by depth bin x length, one panel per method; failed cells labelled in the panel."""
    order = sweep.series
    fig, axes = new_figure(ncols=len(order))
    tables = {s: depth_accuracy(sweep, s) for s in order}
    depths = sorted({d for t in tables.values() for d, _ in t})
    lengths = sweep.lengths
    failures = failure_summary(sweep)
    image = None
    for ax, series in zip(axes, order):
        grid = np.full((len(depths), len(lengths)), np.nan)
        seeds = np.zeros(grid.shape, dtype=int)
        for (depth, length), stats in tables[series].items():
            grid[depths.index(depth), lengths.index(length)] = stats.mean
            seeds[depths.index(depth), lengths.index(length)] = stats.n
        counts = seeds[seeds > 0].tolist()
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto", gid=f"heatmap:{series}")
        for (i, j), value in np.ndenumerate(grid):
            if not math.isnan(value):
                note = f"\nn={seeds[i, j]}" if seeds[i, j] < max(counts) else ""
                ax.text(j, i, f"{value:.2f}{note}", ha="center", va="center", fontsize=6,
                        color="white" if value < 0.6 else "black")
        for _, row in failures[failures["series"] == series].iterrows():
            j = lengths.index(row["max_len"])
            if np.isnan(grid[:, j]).all():  # a column with some successful seeds shows their values
                ax.text(j, (len(depths) - 1) / 2, "OOM" if row["status_kind"] == "oom" else "failed",
                        ha="center", va="center", fontsize=7, color="red", rotation=90)
        ax.set_xticks(range(len(lengths)), [str(l) for l in lengths], rotation=45)
        ax.set_yticks(range(len(depths)), [f"{d:.1f}" for d in depths])
        ax.set_title(f"{series} ({seed_count_label(counts)})", fontsize=9, color=method_colour(series))
        ax.set_xlabel("L (tokens)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("needle depth (bin lower edge, fraction)")
    if image is not None:
        fig.colorbar(image, ax=axes, label="accuracy (fraction)", shrink=0.9)
    figure_title(fig, "Needle accuracy by depth and length", sweep.describe())
    return fig


@dataclass(frozen=True)
class CostCell:
    """One (method, length) in the cost plot: mean cost over seeds and the accuracy statistics."""

    length: int
    cost: float
    accuracy: CellStats


def _cost_accuracy_cells(sweep: Sweep, series: str, cost: str) -> list[CostCell]:
    """Per length where both are measured: the mean cost and accuracy statistics over the ok seeds."""
    rows = sweep.ok[(sweep.ok["series"] == series)].dropna(subset=[cost, "accuracy"])
    rows = rows[rows[cost] > 0]
    accuracy = {s.length: s for s in accuracy_stats(sweep, series)}
    return [CostCell(int(length), float(g[cost].mean()), accuracy[int(length)])
            for length, g in rows.groupby("max_len") if int(length) in accuracy]


def draw_cost_cells(ax, series: str, cells: list[CostCell]) -> None:
    """Markers at (mean cost, mean accuracy), 95% accuracy intervals, labels 'L' (+ 'n=k')."""
    colour = method_colour(series)
    counts = [c.accuracy.n for c in cells]
    ax.scatter([c.cost for c in cells], [c.accuracy.mean for c in cells], s=36, color=colour, edgecolor="black",
               linewidth=0.4, zorder=4, label=f"{series} ({seed_count_label(counts)})", gid=f"cells:{series}")
    with_interval = [c for c in cells if c.accuracy.has_interval]
    if with_interval:
        err = [[c.accuracy.mean - c.accuracy.low for c in with_interval],
               [c.accuracy.high - c.accuracy.mean for c in with_interval]]
        container = ax.errorbar([c.cost for c in with_interval], [c.accuracy.mean for c in with_interval],
                                yerr=err, fmt="none", ecolor=colour, elinewidth=1, capsize=2, alpha=0.6, zorder=3)
        container.lines[2][0].set_gid(f"interval:{series}")
    for c in cells:
        note = "" if c.accuracy.n == max(counts) else f" n={c.accuracy.n}"
        ax.annotate(_short_length(c.length) + note, (c.cost, c.accuracy.mean), xytext=(4, -9),
                    textcoords="offset points", fontsize=6, color=colour)


def set_log_cost_axis(ax) -> None:
    """Log x axis for a cost, major ticks in plain numbers, minor ticks unlabelled."""
    ax.set_xscale("log")
    readable_log_ticks(ax.xaxis)
    ax.autoscale_view()
    low, high = ax.get_xlim()
    if high / low < 3:  # under one decade the 1-2-5 ticks degrade to crowded minor labels: a few plain ticks
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
        ax.xaxis.set_minor_locator(NullLocator())


def _failure_note(sweep: Sweep) -> str:
    failures = failure_summary(sweep)
    kinds = {"oom": "OOM", "failed": "failed"}
    return "; ".join(f"{r.series} L={r.max_len} {kinds[r.status_kind]}\u00d7{r.seeds}"
                     for r in failures.itertuples())


def _median_count(sweep: Sweep, series: str, column: str) -> float:
    values = sweep.table.loc[sweep.table["series"] == series, column].dropna()
    return float(values.median()) if len(values) else math.nan


def _count_text(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if value >= div:
            return f"{value / div:.3g}{suffix}"
    return f"{value:.0f}"


def _short_length(length: int) -> str:
    return f"{length // 1024}k" if length >= 1024 and length % 1024 == 0 else str(length)


FIGURES = {
    "accuracy_vs_length": accuracy_vs_length,
    "memory_vs_length": memory_vs_length,
    "tokens_per_s_vs_length": tokens_per_s_vs_length,
    "step_time_vs_length": step_time_vs_length,
    "accuracy_vs_cost": accuracy_vs_cost,
    "trainable_parameters": trainable_parameters,
    "difference_vs_length": difference_vs_length,
}
NEEDLE_FIGURE = ("needle_depth_heatmap", needle_depth_heatmap)


def figures_for(sweep: Sweep) -> dict:
    """Name -> figure function of every figure this sweep gets (the heatmap only for needle tasks)."""
    figures = dict(FIGURES)
    if sweep.is_needle:
        figures[NEEDLE_FIGURE[0]] = NEEDLE_FIGURE[1]
    if load_extrapolation(sweep) is not None:
        figures["accuracy_vs_eval_length"] = accuracy_vs_eval_length
    if len(load_curves(sweep.path)):
        figures["learning_curve"] = lambda s: learning_curve_figure(load_curves(s.path), s.describe())
    return figures
