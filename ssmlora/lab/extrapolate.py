"""Length extrapolation: a cell trained at L scored again at longer lengths on the same test documents.

The test documents of a cell are its scored subset at L (`build_splits`); at each longer length the task is
built again with the same data seed (for a task whose documents do not depend on L, the same documents, cut
later) and exactly those documents, by `doc_id`, are scored. The split is read once per (cell, eval length);
nothing is selected on it. Each eval length leaves `predictions-L<eval>.csv` in the cell's folder (the columns of
`predictions.csv`), so methods and seeds pair document by document at every eval length (plots.extrapolation).
The backbone's positions were extended to the longest eval length when the cell was built (`build_cell`);
extension copies the pretrained table, so the positions below L, all that training saw, are unchanged.
"""

from __future__ import annotations

from pathlib import Path

from data_prep import majority_rate
from results import predictions_file, wilson_interval
from ssmlora.lab.data import TaskDataModule, task_data
from ssmlora.lab.predictions import doc_ids, gather_predictions, write_predictions


def longest_length(cfg) -> int:
    """The longest input a cell's backbone must take: its L or its longest eval length."""
    return max([cfg.max_len, *cfg.data.eval_lengths_for(cfg.max_len)])


def score_longer(cfg, trainer, module, test, scores: dict, tokenizer: str, pad_id: int, micro: int,
                 cell_dir: Path) -> list[dict]:
    """Rows of extrapolation.csv (less method and seed) for one cell: its own test score at L, then one row per
    longer eval length (of the first `read_docs` documents, when set), each from one `trainer.test` of the module's current (tested) weights, whose
    per-document outcomes global rank 0 writes to `cell_dir / predictions-L<eval>.csv`."""
    rows = [_row(cfg.max_len, cfg.max_len, scores["test_acc"], int(scores["test_n"]), majority_rate(test))]
    if 0 < cfg.data.read_docs < len(test):  # --read-docs: the first N documents scored at L
        test = test.select(range(cfg.data.read_docs))
    majority = majority_rate(test)
    for length in cfg.data.eval_lengths_for(cfg.max_len):
        data = task_data(cfg.data, length, tokenizer)  # DATA_SEED: a doc_id names a position in a split
        longer = same_documents(data["test"], test, cfg.max_len, length)
        # the same memory per batch as the cell's own evaluation: fewer sequences as they grow longer
        batch = max(1, 2 * micro * cfg.max_len // length)
        dm = TaskDataModule({"train": data["train"], "test": longer}, micro, cfg.seed, pad_id, eval_batch=batch)
        got = trainer.test(module, datamodule=dm, verbose=False)[0]
        predictions = gather_predictions(trainer, module.predictions)  # every rank takes part in the gather
        if trainer.is_global_zero:
            write_predictions(Path(cell_dir) / predictions_file(length), predictions, doc_ids(longer))
        rows.append(_row(cfg.max_len, length, got["test_acc"], int(got["test_n"]), majority))
    return rows


def same_documents(split, test, max_len: int, length: int):
    """The rows of `split` (the test split built at `length`) holding the cell's test documents, in their order.
    Raises RuntimeError when a document is missing or its label differs: then the task built other documents."""
    index = {doc: i for i, doc in enumerate(split["doc_id"])}
    missing = [doc for doc in test["doc_id"] if doc not in index]
    if missing:
        raise RuntimeError(f"the test split at {length} tokens lacks {len(missing)} of the documents scored at "
                           f"{max_len} (e.g. {missing[0]!r}): the task builds other documents per length")
    longer = split.select([index[doc] for doc in test["doc_id"]])
    moved = [doc for doc, a, b in zip(test["doc_id"], test["label"], longer["label"]) if a != b]
    if moved:
        raise RuntimeError(f"document {moved[0]!r} has another label at {length} tokens than at {max_len}: the "
                           f"task built other documents under the same ids")
    return longer


def _row(max_len: int, eval_len: int, accuracy: float, n: int, majority: float) -> dict:
    correct = round(accuracy * n)  # the metric is a float32 mean of n 0/1 outcomes
    low, high = wilson_interval(correct, n)
    return {"max_len": max_len, "eval_len": eval_len, "accuracy": correct / n if n else accuracy, "n": n,
            "interval_low": low,
            "interval_high": high, "majority_rate": majority}

