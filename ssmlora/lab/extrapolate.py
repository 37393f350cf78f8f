"""Length extrapolation: a cell trained at L scored again at longer lengths on the same test documents.

The test documents of a cell are its scored subset at L (`build_splits`); at each longer length the task is
built again (for a task whose documents do not depend on L, the same documents, cut later) and exactly those
documents, by `doc_id`, are scored. The split is read once per (cell, eval length); nothing is selected on it.
The backbone's positions were extended to the longest eval length when the cell was built (`build_cell`);
extension copies the pretrained table, so the positions below L, all that training saw, are unchanged.
"""

from __future__ import annotations

from data_prep import build_task, majority_rate
from ssmlora.lab.data import TaskDataModule
from ssmlora.results import wilson_interval


def longest_length(cfg) -> int:
    """The longest input a cell's backbone must take: its L or its longest eval length."""
    return max([cfg.max_len, *cfg.data.eval_lengths_for(cfg.max_len)])


def score_longer(cfg, trainer, module, test, scores: dict, tokenizer: str, pad_id: int, micro: int) -> list[dict]:
    """Rows of extrapolation.csv (less method and seed) for one cell: its own test score at L, then one row per
    longer eval length, each from one `trainer.test` of the module's current (tested) weights."""
    majority = majority_rate(test)
    rows = [_row(cfg.max_len, cfg.max_len, scores["test_acc"], int(scores["test_n"]), majority)]
    wanted = list(test["doc_id"])
    for length in cfg.data.eval_lengths_for(cfg.max_len):
        data = build_task(cfg.data.task, max_len=length, tokenizer=tokenizer, truncation="head",
                          cache_dir=cfg.data.cache_dir, seed=cfg.seed, **cfg.data.sizes())
        index = {doc: i for i, doc in enumerate(data["test"]["doc_id"])}
        missing = [doc for doc in wanted if doc not in index]
        if missing:
            raise RuntimeError(f"the test split at {length} tokens lacks {len(missing)} of the documents scored at "
                               f"{cfg.max_len} (e.g. {missing[0]!r}): the task builds other documents per length")
        longer = data["test"].select([index[doc] for doc in wanted])
        # the same memory per batch as the cell's own evaluation: fewer sequences as they grow longer
        batch = max(1, 2 * micro * cfg.max_len // length)
        dm = TaskDataModule({"train": data["train"], "test": longer}, micro, cfg.seed, pad_id, eval_batch=batch)
        got = trainer.test(module, datamodule=dm, verbose=False)[0]
        rows.append(_row(cfg.max_len, length, got["test_acc"], int(got["test_n"]), majority))
    return rows


def _row(train_len: int, eval_len: int, accuracy: float, n: int, majority: float) -> dict:
    correct = round(accuracy * n)  # the metric is a float32 mean of n 0/1 outcomes
    low, high = wilson_interval(correct, n)
    return {"train_len": train_len, "eval_len": eval_len, "accuracy": correct / n if n else accuracy, "n": n,
            "interval_low": low,
            "interval_high": high, "majority_rate": majority}

