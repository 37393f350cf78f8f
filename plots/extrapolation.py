"""Length extrapolation (``extrapolation.csv``, written by ``--eval-lengths``): accuracy against the length the
test documents are read to, one line per (method, train length), each starting at its own train length.

With one seed a point's bar is its Wilson 95 % interval (from the file); with 3+ seeds, the 95 % t-interval of
the seed means, as in the other figures. Gids: ``extrapolation:<series>@<train_len>`` (line),
``majority`` (majority-class rate of the same documents).
"""

from __future__ import annotations

import pandas as pd

from plots.data import Sweep, cell_stats, series_label, sort_series
from plots.style import (MAJORITY_STYLE, figure_title, method_colour, new_figure, outside_legend, series_offset,
                         style_axes)
from ssmlora.results import EXTRAPOLATION_COLUMNS, EXTRAPOLATION_FILE

LINESTYLES = ("-", "--", ":", "-.")
CAPTION = ("Length extrapolation: each cell trained at L is scored on its own test documents read further (x "
           "axis); one line per (method, train length), starting at L. Bars: Wilson 95% interval (one seed) or "
           "95% t-interval (3+ seeds); majority-class rate dashed.")


def load_extrapolation(sweep: Sweep) -> pd.DataFrame | None:
    """The sweep's extrapolation.csv with a ``series`` column named as in the other figures; None if absent."""
    path = sweep.path / EXTRAPOLATION_FILE
    if not path.exists():
        return None
    table = pd.read_csv(path, dtype={"method": str, "ssm_mode": str}, keep_default_na=False)
    if list(table.columns) != list(EXTRAPOLATION_COLUMNS) or table.empty:
        return None
    for column in EXTRAPOLATION_COLUMNS[2:]:
        table[column] = pd.to_numeric(table[column], errors="coerce")
    modes = sweep.table.groupby("method")["ssm_mode"].nunique()
    split = set(modes[modes > 1].index)
    table["series"] = [series_label(m, mode, split) for m, mode in zip(table["method"], table["ssm_mode"])]
    return table


def points(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (series, train_len, eval_len): mean accuracy over seeds and its interval."""
    out = []
    for (series, train, length), group in table.groupby(["series", "train_len", "eval_len"]):
        stats = cell_stats(group["accuracy"], int(length))
        if stats.n == 1:
            low, high = float(group["interval_low"].iloc[0]), float(group["interval_high"].iloc[0])
        else:
            low, high = stats.low, stats.high
        out.append({"series": series, "train_len": int(train), "eval_len": int(length), "accuracy": stats.mean,
                    "low": low, "high": high, "seeds": stats.n, "n": int(group["n"].iloc[0]),
                    "majority_rate": float(group["majority_rate"].iloc[0])})
    return pd.DataFrame(out)


def accuracy_vs_eval_length(sweep: Sweep):
    fig, (ax,) = new_figure()
    table = points(load_extrapolation(sweep))
    trains = sorted(table["train_len"].unique())
    order = sort_series(table["series"].unique())
    for index, series in enumerate(order):
        for train in trains:
            rows = table[(table["series"] == series) & (table["train_len"] == train)].sort_values("eval_len")
            if rows.empty:
                continue
            # nudged apart on the log axis so equal accuracies do not hide each other's intervals
            x = rows["eval_len"].to_numpy(float) * series_offset(index, len(order))
            y = rows["accuracy"].to_numpy()
            err = [y - rows["low"].to_numpy(), rows["high"].to_numpy() - y]
            style = LINESTYLES[trains.index(train) % len(LINESTYLES)]
            ax.errorbar(x, y, yerr=err, color=method_colour(series), linestyle=style, marker="o", capsize=3,
                        label=f"{series}, trained at {train}", gid=f"extrapolation:{series}@{train}")
    majority = table.groupby("eval_len")["majority_rate"].mean()
    ax.plot(majority.index.to_numpy(float), majority.to_numpy(), label="majority class", gid="majority",
            **MAJORITY_STYLE)
    style_axes(ax, xlabel="eval length (tokens, log\u2082 scale)", ylabel="test accuracy (fraction)",
               lengths=sorted(table["eval_len"].unique()))
    ax.set_ylim(0.0, 1.0)
    figure_title(fig, "Accuracy vs eval length (trained at L, read further)", sweep.describe())
    outside_legend(ax)
    return fig


def report_lines(sweep: Sweep) -> list[str]:
    """A markdown table of the extrapolation points (empty without extrapolation.csv)."""
    table = load_extrapolation(sweep)
    if table is None:
        return []
    lines = ["## Length extrapolation", "",
             "Each cell's test documents read to longer lengths (`extrapolation.csv`); interval: Wilson 95% "
             "(one seed) or t 95% (3+ seeds). The documents are the same at every eval length.", "",
             "| method | train L | eval L | accuracy | interval | seeds | n | majority |", "|---|---|---|---|---|---|---|---|"]
    for r in points(table).sort_values(["series", "train_len", "eval_len"]).itertuples():
        lines.append(f"| {r.series} | {r.train_len} | {r.eval_len} | {r.accuracy:.3f} | [{r.low:.3f}, {r.high:.3f}] "
                     f"| {r.seeds} | {r.n} | {r.majority_rate:.3f} |")
    return lines + [""]
