"""Load a sweep folder and reduce its results table to per-(series, length) statistics.

A sweep folder holds ``results.csv`` (the schema of :mod:`results`) and ``config.json``. This module
reads both, converts the numeric columns, and offers the statistics every figure and the report share:
mean and 95% t-interval over seeds of a cost, accuracies with the crossed-design interval of plots.stats (seeds
and test documents both sampled), log-log scaling exponents, and the Pareto front. It imports neither
matplotlib nor torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from plots.source import SweepError, read_sweep_files  # noqa: F401 (SweepError re-exported)
from plots.stats import (Accuracy, PairedDifference, accuracy_from_seed_rates, accuracy_interval,
                         paired_difference)
from results import NUMERIC_COLUMNS, PROBE_PREDICTIONS_FILE, SweepFolder, predictions_file

MIN_SEEDS_FOR_INTERVAL = 3

# Two-sided 95% quantiles of Student's t (0.975 quantile) for 1..30 degrees of freedom.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


@dataclass
class Sweep:
    """One sweep: its folder, configuration and results table (one row per method x length x seed of its
    accuracy cells), and the rows of its cost cells apart (`cost_table`; `costs()` is the view the cost figures
    read)."""

    path: Path
    config: dict
    table: pd.DataFrame = field(repr=False)
    cost_table: pd.DataFrame | None = field(default=None, repr=False)

    def costs(self) -> Sweep:
        """The sweep as its cost figures read it: its cost cells when it ran any (every method at every length,
        one seed, measured alike), else its accuracy cells, whose rows hold the same cost columns."""
        if self.cost_table is None or self.cost_table.empty:
            return self
        return Sweep(path=self.path, config=self.config, table=self.cost_table)

    @property
    def name(self) -> str:
        return str(self.config.get("name") or self.path.name)

    @property
    def ok(self) -> pd.DataFrame:
        """The rows whose cell trained and evaluated."""
        return self.table[self.table["status_kind"] == "ok"]

    @property
    def failures(self) -> pd.DataFrame:
        """The rows whose cell ran out of memory or failed."""
        return self.table[self.table["status_kind"] != "ok"]

    @property
    def series(self) -> list[str]:
        """Series labels (the --methods entries that ran: methods, variants, controls), in a fixed order."""
        return sort_series(self.table["series"].unique())

    @property
    def matched(self) -> dict[str, str]:
        """{control: the entry whose rate or parameter count it shares}, from config.json."""
        variants = (self.config.get("resolved") or {}).get("variants") or {}
        return {label: v["matched_to"] for label, v in variants.items() if v.get("matched_to")}

    @property
    def lengths(self) -> list[int]:
        """Every context length in the table, including those where all cells failed."""
        return sorted(int(v) for v in self.table["max_len"].dropna().unique())

    @property
    def task(self) -> str:
        return _joined(self.table["task"]) or str(self.config.get("task", "?"))

    @property
    def model_short(self) -> str:
        return short_model_name(_joined(self.table["model"]) or str(self.config.get("model", "?")))

    @property
    def seed_count(self) -> int:
        """Seeds the sweep attempted per cell (from the table, falling back to the config)."""
        seeds = self.table["seed"].dropna().unique()
        return len(seeds) or len(self.config.get("seeds") or [])

    @property
    def is_needle(self) -> bool:
        """True for a needle-in-a-haystack task (it has accuracy by needle depth)."""
        has_depth = self.table["accuracy_by_depth"].fillna("").str.strip().ne("").any()
        return bool(has_depth or self.task.startswith("needle"))

    @cached_property
    def predictions(self) -> pd.DataFrame:
        """Per-document test outcomes of every ok cell (`load_predictions`), read once per Sweep."""
        return load_predictions(self)

    def describe(self) -> str:
        """'task, model, N seeds' for figure titles."""
        n = self.seed_count
        return f"{self.task}, {self.model_short}, {n} seed{'s' if n != 1 else ''}"


def load_sweep(sweep_dir: str | Path) -> Sweep:
    """Read ``results.csv`` and ``config.json`` of a sweep folder (or a results.csv path).

    Raises FileNotFoundError (no folder or no results.csv), ResultsFormatError (a header or row that breaks the
    results contract, with its line) or SweepError (empty file, no rows), each with a one-line message.
    """
    path, rows, config = read_sweep_files(sweep_dir)
    table = results_frame(rows)
    cost = table["role"] == "cost"
    if cost.all():
        raise SweepError(f"{path}: results.csv holds cost cells only: no accuracy cell has run yet")
    return Sweep(path=path, config=config, table=table[~cost].reset_index(drop=True),
                 cost_table=table[cost].reset_index(drop=True))


def results_frame(rows: list[dict[str, str]]) -> pd.DataFrame:
    """Rows of strings -> DataFrame with numeric columns, ``status_kind`` and ``series`` added."""
    table = pd.DataFrame(rows)
    for column in NUMERIC_COLUMNS:
        table[column] = pd.to_numeric(table[column].replace("", np.nan), errors="coerce")
    table["status"] = table["status"].fillna("").str.strip()
    table["status_kind"] = table["status"].map(status_kind)
    table["ssm_mode"] = table["ssm_mode"].fillna("").str.strip()
    table["series"] = table["variant"].fillna("").str.strip()
    return table


def status_kind(status: str) -> str:
    """'ok', 'oom' or 'failed' from a status string such as 'failed: CUDA error'."""
    status = (status or "").strip().lower()
    if status == "ok":
        return "ok"
    if status == "oom" or "out of memory" in status:
        return "oom"
    return "failed"


def sort_series(names) -> list[str]:
    """lora, ssmlora (and its modes), frozen first, then the rest alphabetically."""
    order = {"lora": 0, "ssmlora": 1, "frozen": 2}
    return sorted(names, key=lambda s: (order.get(s.split(":")[0], 3), s))


def short_model_name(model: str) -> str:
    """'sentence-transformers/all-MiniLM-L6-v2' -> 'all-MiniLM-L6-v2'; '/pkg/minilm/model' -> 'minilm'."""
    parts = [p for p in str(model).replace("\\", "/").split("/") if p]
    if not parts:
        return "?"
    if parts[-1] in {"model", "snapshot", "weights"} and len(parts) > 1:
        return parts[-2]
    return parts[-1]


def t_quantile_975(dof: int) -> float:
    """0.975 quantile of Student's t with ``dof`` degrees of freedom (normal beyond 30)."""
    if dof < 1:
        return math.nan
    return _T975[dof - 1] if dof <= len(_T975) else 1.96


@dataclass
class CellStats:
    """A metric at one (series, length): the seed values, their mean and (with 3+ seeds) a 95% interval."""

    length: int
    values: np.ndarray
    mean: float
    low: float
    high: float

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def has_interval(self) -> bool:
        return not math.isnan(self.low)


def cell_stats(values, length: int) -> CellStats:
    """Mean and 95% t-interval of the seed values (interval only with MIN_SEEDS_FOR_INTERVAL or more)."""
    values = np.asarray([v for v in values if not pd.isna(v)], dtype=float)
    mean = float(values.mean()) if len(values) else math.nan
    low = high = math.nan
    if len(values) >= MIN_SEEDS_FOR_INTERVAL:
        half = t_quantile_975(len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
        low, high = mean - half, mean + half
    return CellStats(length=length, values=values, mean=mean, low=low, high=high)


def series_stats(sweep: Sweep, series: str, metric: str) -> list[CellStats]:
    """Per-length statistics of ``metric`` over the ok seeds of one series, by increasing length."""
    rows = sweep.ok[(sweep.ok["series"] == series) & sweep.ok[metric].notna()]
    return [cell_stats(group[metric], int(length)) for length, group in rows.groupby("max_len")]


def scaling_exponent(lengths, values) -> float:
    """Slope b of the least-squares fit log(value) = a + b log(L); NaN with fewer than 2 lengths."""
    pairs = [(l, v) for l, v in zip(lengths, values) if l > 0 and v > 0 and not math.isnan(v)]
    if len({l for l, _ in pairs}) < 2:
        return math.nan
    x = np.log([l for l, _ in pairs])
    y = np.log([v for _, v in pairs])
    return float(np.polyfit(x, y, 1)[0])


def pareto_front(costs, accuracies) -> list[int]:
    """Indices of the non-dominated points (lower cost, higher accuracy), ordered by cost."""
    order = sorted(range(len(costs)), key=lambda i: (costs[i], -accuracies[i]))
    front, best = [], -math.inf
    for i in order:
        if accuracies[i] > best:
            front.append(i)
            best = accuracies[i]
    return front


def failure_summary(sweep: Sweep) -> pd.DataFrame:
    """One row per (series, length, status_kind) of failed cells with the seed count and first reason."""
    failed = sweep.failures
    if failed.empty:
        return pd.DataFrame(columns=["series", "max_len", "status_kind", "seeds", "reason"])
    grouped = failed.groupby(["series", "max_len", "status_kind"], sort=True)
    summary = grouped.agg(seeds=("seed", "count"), reason=("status", "first")).reset_index()
    summary["max_len"] = summary["max_len"].astype(int)
    return summary


def depth_accuracy(sweep: Sweep, series: str) -> dict[tuple[float, int], CellStats]:
    """{(depth-bin lower edge, length): stats over seeds} of a needle series' accuracy_by_depth."""
    values: dict[tuple[float, int], list[float]] = {}
    rows = sweep.ok[sweep.ok["series"] == series]
    for raw, length in zip(rows["accuracy_by_depth"].fillna(""), rows["max_len"]):
        if not raw.strip():
            continue
        try:
            by_depth = json.loads(raw)
        except json.JSONDecodeError:
            continue  # an unreadable cell is left out of the heatmap rather than stopping the report
        for depth, accuracy in by_depth.items():
            if accuracy is not None:
                values.setdefault((float(depth), int(length)), []).append(float(accuracy))
    return {key: cell_stats(v, key[1]) for key, v in values.items()}


def _joined(column: pd.Series) -> str:
    values = sorted({str(v) for v in column.dropna() if str(v).strip()})
    return ", ".join(values)


PROBE_SERIES = "probe"  # the linear-probe head alone (LP-FT's first stage), scored on the same test documents


def accuracy_stats(sweep: Sweep, series: str) -> list[CellStats]:
    """Accuracy per length with its 95 % interval over seeds and test documents (plots.stats.accuracy_interval:
    Wilson at the crossed design's effective documents), from the cells' per-document predictions; where a length
    has none, from the seeds' accuracies and n_test (plots.stats.accuracy_from_seed_rates)."""
    column = "probe_accuracy" if series == PROBE_SERIES else "accuracy"
    rows = sweep.ok[sweep.ok[column].notna()]
    if series != PROBE_SERIES:
        rows = rows[rows["series"] == series]
    outcomes = sweep.predictions[sweep.predictions["series"] == series]
    out = []
    for length, group in rows.groupby("max_len"):
        if series == PROBE_SERIES:  # one probe per (length, seed), repeated in every method's row
            group = group.drop_duplicates("seed")
        grids = aligned_grids(outcomes[outcomes["max_len"] == length])
        if grids:
            accuracy = accuracy_interval(grids[0])
        else:
            n_test = int(group["n_test"].min()) if group["n_test"].notna().any() else 0
            accuracy = accuracy_from_seed_rates(group[column].to_numpy(float), n_test)
        out.append(accuracy_cell_stats(accuracy, int(length)))
    return out


def accuracy_cell_stats(accuracy: Accuracy, length: int) -> CellStats:
    """An accuracy with its interval as the CellStats the figures draw (values: each seed's accuracy)."""
    return CellStats(length=length, values=np.asarray(accuracy.seed_values), mean=accuracy.mean, low=accuracy.low,
                     high=accuracy.high)


def n_test_by_length(sweep: Sweep) -> dict[int, int]:
    """Test documents scored per length (the fewest over the ok cells there)."""
    ok = sweep.ok.dropna(subset=["n_test"])
    return {int(length): int(n) for length, n in ok.groupby("max_len")["n_test"].min().items()}


def cell_folder(sweep: Sweep, variant: str, length: int, seed: int) -> Path:
    """The folder of one cell, as the sweep names it (results.SweepFolder)."""
    return SweepFolder(sweep.path).cell_of(variant, length, seed)


def read_outcomes(path: Path) -> pd.DataFrame:
    """A predictions file as doc_id (str) and correct (0/1) per document."""
    table = pd.read_csv(path, dtype={"doc_id": str})
    return pd.DataFrame({"doc_id": table["doc_id"], "correct": (table["label"] == table["prediction"]).astype(int)})


def load_predictions(sweep: Sweep) -> pd.DataFrame:
    """Per-document test results of every ok cell: series, max_len, seed, doc_id, correct (0/1); the probe's
    as series PROBE_SERIES (once per length and seed). Cells without predictions.csv are left out."""
    frames, probes_seen = [], set()
    for row in sweep.ok.itertuples():
        cell = cell_folder(sweep, row.variant, row.max_len, row.seed)
        for name, series in ((predictions_file(), row.series), (PROBE_PREDICTIONS_FILE, PROBE_SERIES)):
            key = (int(row.max_len), int(row.seed))
            if series == PROBE_SERIES and key in probes_seen:
                continue
            if not (cell / name).exists():
                continue
            probes_seen |= {key} if series == PROBE_SERIES else set()
            frames.append(read_outcomes(cell / name).assign(series=series, max_len=key[0], seed=key[1]))
    if not frames:
        return pd.DataFrame(columns=["series", "max_len", "seed", "doc_id", "correct"])
    return pd.concat(frames, ignore_index=True)[["series", "max_len", "seed", "doc_id", "correct"]]


def paired_at(predictions: pd.DataFrame, a: str, b: str, length: int) -> PairedDifference | None:
    """Paired difference a - b at one length, over the seeds and documents both have; None when none."""
    at = predictions[predictions["max_len"] == length]
    return paired_outcomes(at[at["series"] == a], at[at["series"] == b])


def aligned_grids(*row_sets: pd.DataFrame) -> list[np.ndarray] | None:
    """Sets of outcomes (seed, doc_id, correct) as (seeds, documents) 0/1 arrays over the seeds and documents
    every set has, in one order (a document missing from any set at any of those seeds is left out); None when
    they share none."""
    if any(rows.empty for rows in row_sets):
        return None
    grids = [rows.pivot_table(index="seed", columns="doc_id", values="correct", aggfunc="first")
             for rows in row_sets]
    seeds, docs = grids[0].index, grids[0].columns
    for grid in grids[1:]:
        seeds, docs = seeds.intersection(grid.index), docs.intersection(grid.columns)
    grids = [grid.loc[seeds, docs] for grid in grids]
    keep = ~np.logical_or.reduce([grid.isna().any().to_numpy() for grid in grids])
    if not len(seeds) or not keep.any():
        return None
    return [grid.loc[:, keep].to_numpy(float) for grid in grids]


def paired_outcomes(rows_a: pd.DataFrame, rows_b: pd.DataFrame) -> PairedDifference | None:
    """Paired difference of two sets of outcomes (seed, doc_id, correct), over the seeds and documents both
    have; None when they share none."""
    grids = aligned_grids(rows_a, rows_b)
    return paired_difference(*grids) if grids else None


def comparison_pairs(series: list[str], with_probe: bool, matched: dict[str, str] | None = None,
                     methods: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """The differences a reader needs: each SSMLoRA entry (any mode) - lora; each control against its counterpart
    (`matched`: {control: the entry whose rate or parameter count it shares}), the LoRA side second (`methods`:
    {series: method}); each entry - the probe."""
    matched = {c: m for c, m in (matched or {}).items() if c in series and m in series}
    methods = methods or {}
    pairs = [(s, "lora") for s in series if s.startswith("ssmlora") and s not in matched and "lora" in series]
    for control, counterpart in matched.items():
        on_lora = methods.get(control) == "lora"
        pairs.append((counterpart, control) if on_lora else (control, counterpart))
    if with_probe:
        pairs += [(s, PROBE_SERIES) for s in series]
    return pairs
