"""Validation learning curves: accuracy and loss on the validation split against optimizer steps, per
`--methods` entry and length (and rate, for tuning trials).

A curve exists wherever validation ran during training, that is with `--val-every N` (every N optimizer steps):
Lightning's CSVLogger writes it to `metrics.csv` in each cell folder and in each `--tune` trial folder. The
curves read the validation split only, so `--tune lr --tune-only --val-every N` draws them with the test split
sealed: that is how a training budget is chosen without looking at the test documents (docs/tuning-notes.md).

The figure's artists carry `gid = "acc:<series>@L<length>@lr<lr>"` and `"loss:..."` (mean over seeds).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from plots.style import figure_title, method_colour, new_figure, outside_legend, style_axes
from results import SweepFolder, read_results, trial_tag

CAPTION = ("Validation accuracy (left) and loss (right) against optimizer steps, mean over seeds, from the "
           "validation split only (`--val-every`); colour: method, line style: context length.")
CURVE_COLUMNS = ["series", "length", "seed", "lr", "source", "step", "val_acc", "val_loss"]
LENGTH_STYLES = ("-", "--", ":", "-.")


def load_curves(folder: str | Path) -> pd.DataFrame:
    """Every validation point of a sweep folder's cells (source "cell") and tuning trials (source "trial"), one
    row per (run, step), columns CURVE_COLUMNS; empty when no run validated during training."""
    folder = SweepFolder(folder)
    runs = []
    if folder.results.exists():
        for r in read_results(folder.results):
            lr = float(r["lr"]) if r.get("lr") else math.nan
            runs.append((folder.cell_of(r["variant"], r["max_len"], r["seed"]), r["variant"], int(r["max_len"]),
                         int(r["seed"]), lr, "cell"))
    tuning = (json.loads(folder.config.read_text()).get("tuning") or {}) if folder.config.exists() else {}
    for label, trials in (tuning.get("trials") or {}).items():
        for t in trials:
            tag = trial_tag(label, t["length"], tuning["seed"], t["lr"])
            runs.append((folder.trial(tag), label, int(t["length"]), int(tuning["seed"]), float(t["lr"]), "trial"))
    frames = []
    for run_dir, series, length, seed, lr, source in runs:
        points = _validation_points(run_dir / "metrics.csv")
        if points is not None:
            frames.append(points.assign(series=series, length=length, seed=seed, lr=lr, source=source))
    return pd.concat(frames, ignore_index=True)[CURVE_COLUMNS] if frames else pd.DataFrame(columns=CURVE_COLUMNS)


def _validation_points(path: Path) -> pd.DataFrame | None:
    """The validation scores of one metrics.csv during training: step (optimizer steps behind the score, the
    module's `val_after_steps`), val_acc, val_loss. A validation after training (a tuning trial re-scoring its
    best checkpoint) repeats a step already drawn and is left out: the first score at a step is the in-training
    one."""
    if not path.exists():
        return None
    table = pd.read_csv(path)
    if not {"val_after_steps", "val_acc", "val_loss"} <= set(table.columns):
        return None
    points = table.dropna(subset=["val_acc", "val_after_steps"])
    points = points.drop_duplicates("val_after_steps", keep="first")
    points = pd.DataFrame({"step": points["val_after_steps"].astype(int), "val_acc": points["val_acc"],
                           "val_loss": points["val_loss"]})
    return points if len(points) else None


def learning_curve_figure(curves: pd.DataFrame, about: str):
    """Two panels, validation accuracy and loss against optimizer steps: one line per (series, length, lr),
    averaged over seeds."""
    fig, (acc_ax, loss_ax) = new_figure(ncols=2)
    lengths = sorted(curves["length"].unique())
    for (series, length, lr), run in curves.groupby(["series", "length", "lr"], dropna=False):
        mean = run.groupby("step")[["val_acc", "val_loss"]].mean()
        style = {"color": method_colour(series), "linestyle": LENGTH_STYLES[lengths.index(length) % 4],
                 "marker": "o", "markersize": 3}
        rate = "" if math.isnan(lr) else f", lr={lr:g}"
        key = f"{series}@L{length}@lr{lr:g}"
        acc_ax.plot(mean.index, mean["val_acc"], label=f"{series}, L={length}{rate}", gid=f"acc:{key}", **style)
        loss_ax.plot(mean.index, mean["val_loss"], gid=f"loss:{key}", **style)
    style_axes(acc_ax, xlabel="optimizer step", ylabel="validation accuracy (fraction)")
    style_axes(loss_ax, xlabel="optimizer step", ylabel="validation loss (cross-entropy, nats)")
    outside_legend(loss_ax, source_axes=[acc_ax])
    figure_title(fig, "Validation learning curves", about)
    return fig
