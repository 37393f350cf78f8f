"""Per-document test outcomes: `predictions.csv` (the cell's own test at L) and `predictions-L<eval>.csv` (the
same documents read to a longer length, ssmlora.lab.extrapolate), one line per document.

The paired accuracy differences of the plots (plots.stats) are computed from these files: two files pair by
`doc_id`, which names the same document for every method and seed of one task.
"""

from __future__ import annotations

from pathlib import Path

import torch

from results import csv_text, write_atomically

PREDICTION_COLUMNS = ("doc_id", "label", "prediction", "p_pred", "p_true")


def write_predictions(path: Path, rows: list[dict], doc_ids: list[str]) -> None:
    """predictions.csv: one line per test document, in the test split's order (the same for every cell at one
    length, so two cells' files pair line by line and by doc_id)."""
    write_atomically(path, csv_text(PREDICTION_COLUMNS, (
        [doc_ids[r["row"]], r["label"], r["prediction"], f"{r['p_pred']:.6g}", f"{r['p_true']:.6g}"] for r in rows)))


def gather_predictions(trainer, local: list[dict]) -> list[dict]:
    """Every rank's test predictions (each document is scored on exactly one rank), sorted by row."""
    everyone = [local]
    if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        everyone = [None] * trainer.world_size
        torch.distributed.all_gather_object(everyone, local)
    return sorted((r for part in everyone for r in part), key=lambda r: r["row"])


def doc_ids(split) -> list[str]:
    """The split's document ids (data_prep's `doc_id`), or the row numbers for a dataset without them."""
    return split["doc_id"] if "doc_id" in split.column_names else [str(i) for i in range(len(split))]
