"""Length extrapolation (``extrapolation.csv``, written by ``--eval-lengths``): accuracy against the length the
test documents are read to, one line per (method, train length), each starting at its own train length; and the
paired differences at every (train length, eval length), from the cells' per-document predictions.

A point's bar is its 95 % interval over seeds and test documents (plots.stats.accuracy_interval, from the
per-document predictions; from the file's seed accuracies where those are missing), as in the other figures.
Gids: ``extrapolation:<series>@<max_len>`` (line),
``majority`` (majority-class rate of the same documents).

Paired differences (``extrapolation_differences.csv``, long format, one row per comparison): at each (max_len,
eval_len), every pair of methods on the same documents and seeds (A later than B in the figures' method order,
e.g. ssmlora:scan - lora), and, at an eval length beyond the train length, each method read to eval_len against
itself at its train length (same cells, same documents: what reading further changed). plots.stats gives the
difference, its 95 % crossed-bootstrap interval over seeds and documents and the document-level sign-flip p.
"""

from __future__ import annotations

import pandas as pd

from plots.data import Sweep, aligned_grids, cell_folder, paired_outcomes, read_outcomes, sort_series
from plots.stats import accuracy_from_seed_rates, accuracy_interval, difference_in_differences
from plots.style import (MAJORITY_STYLE, figure_title, method_colour, new_figure, outside_legend, series_offset,
                         style_axes)
from results import EXTRAPOLATION_COLUMNS, EXTRAPOLATION_FILE, predictions_file

LINESTYLES = ("-", "--", ":", "-.")
DIFFERENCES_FILE = "extrapolation_differences.csv"
# b_eval_len: the length B's documents were read to (eval_len for a pair of methods, max_len for a method
# against itself); detected: the 95 % interval excludes 0, the only case in which the report states a difference
DIFFERENCE_COLUMNS = ("max_len", "eval_len", "a", "b", "b_eval_len", "diff", "ci_low", "ci_high", "p_value",
                      "n_docs", "n_seeds", "detected")
CAPTION = ("Length extrapolation: each cell trained at L is scored on its own test documents read further (x "
           "axis); one line per (method, train length), starting at L. Bars: 95% interval over seeds and test "
           "documents; majority-class rate dashed.")


def load_extrapolation(sweep: Sweep) -> pd.DataFrame | None:
    """The sweep's extrapolation.csv with a ``series`` column named as in the other figures; None if absent."""
    path = sweep.path / EXTRAPOLATION_FILE
    if not path.exists():
        return None
    table = pd.read_csv(path, dtype={"method": str, "ssm_mode": str, "variant": str}, keep_default_na=False)
    table = table.rename(columns={"train_len": "max_len"})  # a file from before the cell's length had one name
    if list(table.columns) != list(EXTRAPOLATION_COLUMNS) or table.empty:
        return None
    for column in EXTRAPOLATION_COLUMNS[3:]:
        table[column] = pd.to_numeric(table[column], errors="coerce")
    table["series"] = table["variant"]
    return table


def points(sweep: Sweep, table: pd.DataFrame) -> pd.DataFrame:
    """One row per (series, max_len, eval_len): accuracy over seeds and documents and its 95 % interval."""
    outcomes = load_outcomes(sweep, table)
    out = []
    for (series, train, length), group in table.groupby(["series", "max_len", "eval_len"]):
        grids = aligned_grids(outcomes[(outcomes["series"] == series) & (outcomes["max_len"] == train)
                                       & (outcomes["eval_len"] == length)])
        accuracy = (accuracy_interval(grids[0]) if grids
                    else accuracy_from_seed_rates(group["accuracy"].to_numpy(float), int(group["n"].min())))
        out.append({"series": series, "max_len": int(train), "eval_len": int(length), "accuracy": accuracy.mean,
                    "low": accuracy.low, "high": accuracy.high, "seeds": len(group), "n": int(group["n"].iloc[0]),
                    "majority_rate": float(group["majority_rate"].iloc[0])})
    return pd.DataFrame(out)


def accuracy_vs_eval_length(sweep: Sweep):
    fig, (ax,) = new_figure()
    table = points(sweep, load_extrapolation(sweep))
    trains = sorted(table["max_len"].unique())
    order = sort_series(table["series"].unique())
    for index, series in enumerate(order):
        for train in trains:
            rows = table[(table["series"] == series) & (table["max_len"] == train)].sort_values("eval_len")
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


def load_outcomes(sweep: Sweep, table: pd.DataFrame) -> pd.DataFrame:
    """Per-document outcomes behind every extrapolation row: series, max_len, eval_len, seed, doc_id, correct
    (predictions.csv at the train length, predictions-L<eval>.csv beyond it; rows without a file left out)."""
    frames = []
    for r in table.itertuples():
        train, length = int(r.max_len), int(r.eval_len)
        path = cell_folder(sweep, r.variant, train, r.seed) / predictions_file(None if length == train else length)
        if path.exists():
            frames.append(read_outcomes(path).assign(series=r.series, max_len=train, eval_len=length,
                                                     seed=int(r.seed)))
    columns = ["series", "max_len", "eval_len", "seed", "doc_id", "correct"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def differences(sweep: Sweep) -> list[tuple[dict, object]]:
    """[(row of extrapolation_differences.csv less the statistics, PairedDifference)], by max_len, eval_len."""
    table = load_extrapolation(sweep)
    if table is None:
        return []
    outcomes = load_outcomes(sweep, table)
    out = []
    for (train, length), at in outcomes.groupby(["max_len", "eval_len"]):
        present = sort_series(at["series"].unique())
        of = {s: at[at["series"] == s] for s in present}
        pairs = [(a, b, length, of[b]) for i, a in enumerate(present) for b in present[:i]]
        if length > train:
            own = outcomes[(outcomes["max_len"] == train) & (outcomes["eval_len"] == train)]
            pairs += [(a, a, train, own[own["series"] == a]) for a in present]
        for a, b, b_len, rows_b in pairs:
            found = paired_outcomes(of[a], rows_b)
            if found is not None:
                out.append(({"max_len": int(train), "eval_len": int(length), "a": a, "b": b,
                             "b_eval_len": int(b_len)}, found))
    return out


def effects(sweep: Sweep) -> list[tuple[dict, object]]:
    """The extrapolation effect of every pair of methods (A later than B in the figures' order) at every (max_len,
    eval_len > max_len): [({max_len, eval_len, a, b}, PairedDifference)] of (A - B read to eval_len) - (A - B
    at max_len), on the seeds and documents all four share (plots.stats.difference_in_differences). A lead A
    already had at its training length is not counted as gained by reading further."""
    table = load_extrapolation(sweep)
    if table is None:
        return []
    outcomes = load_outcomes(sweep, table)
    out = []
    for (train, length), _ in outcomes[outcomes["eval_len"] > outcomes["max_len"]].groupby(["max_len",
                                                                                              "eval_len"]):
        at = {(s, n): outcomes[(outcomes["series"] == s) & (outcomes["max_len"] == train)
                               & (outcomes["eval_len"] == n)] for s in outcomes["series"].unique()
              for n in (train, length)}
        present = sort_series(outcomes["series"].unique())
        for i, a in enumerate(present):
            for b in present[:i]:
                grids = aligned_grids(at[a, length], at[b, length], at[a, train], at[b, train])
                if grids:
                    out.append(({"max_len": int(train), "eval_len": int(length), "a": a, "b": b},
                                difference_in_differences(*grids)))
    return out


def write_differences(sweep: Sweep) -> list:
    """Write ``<sweep>/extrapolation_differences.csv`` (nothing without extrapolation.csv); return its path."""
    if load_extrapolation(sweep) is None:
        return []
    found = differences(sweep)
    rows = [{**key, "diff": d.diff, "ci_low": d.low, "ci_high": d.high, "p_value": d.p_value,
             "n_docs": d.n_docs, "n_seeds": d.n_seeds, "detected": d.detected} for key, d in found]
    path = sweep.path / DIFFERENCES_FILE
    pd.DataFrame(rows, columns=list(DIFFERENCE_COLUMNS)).to_csv(path, index=False, float_format="%.6g")
    return [path]


def difference_lines(sweep: Sweep) -> list[str]:
    """One sentence per comparison, worded by PairedDifference.describe as the train-length differences are."""
    lines = []
    for key, d in differences(sweep):
        a, b = key["a"], key["b"]
        if a == b:  # a method read further against itself at its train length
            a, b = f"{a} read to {key['eval_len']}", f"{b} at its train length {key['b_eval_len']}"
        lines.append(f"trained at {key['max_len']}, read to {key['eval_len']}: {d.describe(a, b)}")
    return lines


def effect_sentence(key: dict, d) -> str:
    """'ssmlora - lora read to 2048 vs the same at 512: ...' worded by PairedDifference.describe."""
    gap = f"{key['a']} \u2212 {key['b']}"
    return d.describe(f"{gap} read to {key['eval_len']}", f"{gap} at its train length {key['max_len']}")


def report_lines(sweep: Sweep) -> list[str]:
    """A markdown table of the extrapolation points and the paired differences (empty without
    extrapolation.csv)."""
    table = load_extrapolation(sweep)
    if table is None:
        return []
    lines = ["## Length extrapolation", "",
             "Each cell's test documents read to longer lengths (`extrapolation.csv`); 95 % interval over seeds and "
             "test documents (Wilson at the crossed design's effective documents). The documents are the same at "
             "every eval length.", "",
             "| method | train L | eval L | accuracy | interval | seeds | n | majority |", "|---|---|---|---|---|---|---|---|"]
    for r in points(sweep, table).sort_values(["series", "max_len", "eval_len"]).itertuples():
        lines.append(f"| {r.series} | {r.max_len} | {r.eval_len} | {r.accuracy:.3f} | [{r.low:.3f}, {r.high:.3f}] "
                     f"| {r.seeds} | {r.n} | {r.majority_rate:.3f} |")
    found = difference_lines(sweep)
    lines += ["", "### Paired differences at each eval length", "",
              f"Same documents and seeds (`{DIFFERENCES_FILE}`): every pair of methods, and each method read "
              "further against itself at its train length. Difference of accuracies, 95 % crossed-bootstrap "
              "interval (seeds, and one document draw shared by them), the sign-flip p over documents; a difference is stated only when its interval "
              "excludes 0.", ""]
    lines += [f"- {line}" for line in found] or ["- No per-document predictions (predictions-L<eval>.csv) to "
                                                 "pair: no difference is stated."]
    effect = [f"- {effect_sentence(key, d)}" for key, d in effects(sweep)]
    lines += ["", "### Extrapolation effects", "",
              "(A − B read to the eval length) − (A − B at the train length), on the same documents "
              "and seeds: what reading further adds to A's lead, so a lead A already had where it trained is not "
              "counted. Same interval and test as above.", "", *(effect or ["- none: no pair of methods read "
                                                                             "further on shared documents."])]
    return lines + [""]
