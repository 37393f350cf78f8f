"""A task at one context length, served in length-bucketed batches (little padding).

Sharding across DDP ranks is done here, by the batch samplers, not by Lightning's DistributedSampler
(the Trainer runs with `use_distributed_sampler=False`): training batches are dealt round-robin and cut to
a common count so every rank steps together; evaluation batches are dealt without any padding or
duplication, so each example is scored exactly once over all ranks (torchmetrics then reduces).
"""

from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from data_prep import build_task
from ssmlora.lab.memory import PhaseMeter


@dataclass
class DataConfig:
    """Which task a sweep trains on and how many of its examples are built and scored."""

    task: str = field(default="topic-mix", metadata={"help": "task from data_prep's registry "
                                                             "(python -m data_prep list)"})
    n_train: int | None = field(default=None, metadata={"help": "train examples to build (default: the task's)",
                                                       "ge": 1, "integer": True})
    n_validation: int | None = field(default=None, metadata={"help": "validation examples to build (default: "
                                                                    "the task's)", "ge": 1, "integer": True})
    n_test: int | None = field(default=None, metadata={"help": "test examples to build (default: the task's)",
                                                      "ge": 1, "integer": True})
    eval_tokens: int = field(default=102400, metadata={
        "help": "tokens scored per evaluation: eval_tokens // L examples (at least min_eval)", "ge": 1,
        "integer": True})
    min_eval: int = field(default=50, metadata={"help": "fewest examples scored per evaluation (at most the "
                                                        "split)", "ge": 1, "integer": True})
    cache_dir: str | None = field(default=None, metadata={"help": "data_prep cache folder (default: "
                                                                 "$SSMLORA_CACHE or ~/.cache/ssmlora/data)"})
    eval_lengths: list[str] = field(default_factory=list, metadata={
        "help": "length extrapolation: also score each cell trained at L at these longer lengths, on the same "
        "test documents read further: multiples of L (2x,4x) or token counts (8192,16384), none below any "
        "trained L; writes extrapolation.csv and its figure (docs/sweep.md). Default: none"})
    read_docs: int = field(default=0, metadata={
        "help": "test documents read at each longer eval length: the first N of those scored at L, so reading "
                "further costs what it must (0: all of them)", "ge": 0, "integer": True})

    NOT_IDENTITY = ("cache_dir",)  # where the data is kept, not what it is

    def eval_lengths_for(self, max_len: int) -> list[int]:
        """--eval-lengths resolved for a cell trained at `max_len`, ascending, without `max_len` itself.
        Raises ValueError for an entry that is neither NUMx nor a token count, or one below `max_len`."""
        out = set()
        for entry in self.eval_lengths:
            text = str(entry).strip().lower()
            try:
                length = round(float(text[:-1]) * max_len) if text.endswith("x") else int(text)
            except ValueError:
                raise ValueError(f"{entry!r} is neither a multiple of L (2x) nor a length in tokens (8192)") from None
            if length < max_len:
                what = f"{entry} ({length} tokens)" if text.endswith("x") else f"{length} tokens"
                raise ValueError(f"{what} is below the train length {max_len}: an extrapolation reads further "
                                 f"than training did")
            if length > max_len:
                out.add(length)
        return sorted(out)

    def eval_limit(self, length: int) -> int:
        return max(self.min_eval, self.eval_tokens // length)

    def sizes(self) -> dict[str, int]:
        return {k: v for k, v in (("n_train", self.n_train), ("n_validation", self.n_validation),
                                  ("n_test", self.n_test)) if v}


# The documents of every split are built with this one seed, whatever the cell's seed: a cell's seed varies what
# training does (adapter init, data order, dropout, the probe's rows and folds), never which documents exist, so
# every method and seed at one length scores the same test documents and their predictions pair up.
DATA_SEED = 0


def task_data(cfg: DataConfig, length: int, tokenizer: str, into: dict | None = None):
    """data_prep's DatasetDict of `cfg.task` at `length` (built with DATA_SEED), from its cache, read into memory.

    In memory, not memory-mapped: a mapped split's pages join the RSS of whichever phase first reads them, so a
    cell's training figure would depend on whether its probe had just read the train split. Read here, the splits
    belong to the build phase in every cell.

    A cache miss is built in a forked child process first, so this process never tokenizes: tokenizing here
    leaves the heap fragmented and a cold cell's training figure above a warm one's (docs/sweep.md, "How a cell
    is measured").
    Fork, not spawn: the child sees tasks registered in this process. `into` gets the child's figures
    (`data_build_*` of `PhaseMeter`). Where fork is missing (Windows) the build runs here.
    """
    kwargs = _build_arguments(cfg, length, tokenizer)
    data = build_task(**kwargs, only_cached=True, in_memory=True)
    if data is not None:
        return data
    if "fork" not in mp.get_all_start_methods():
        build_task(**kwargs)
    else:
        with ProcessPoolExecutor(1, mp_context=mp.get_context("fork")) as pool:
            try:
                figures = pool.submit(_build_measured, kwargs).result()
            except BrokenProcessPool as e:
                raise RuntimeError(f"building {cfg.task} at {length} tokens: the build process died ({e}); if it "
                                   f"ran out of memory, build the cache first: python -m data_prep build {cfg.task} "
                                   f"--max-len {length}") from None
        if into is not None:
            into.update(figures)
    return build_task(**kwargs, only_cached=True, in_memory=True)  # the child's datasets stay in the child


def is_cached(cfg: DataConfig, length: int, tokenizer: str) -> bool:
    """Is `cfg.task` at `length` in the data cache already (so building it needs no network)?"""
    return build_task(**_build_arguments(cfg, length, tokenizer), only_cached=True) is not None


def _build_arguments(cfg: DataConfig, length: int, tokenizer: str) -> dict:
    return dict(task=cfg.task, max_len=length, tokenizer=tokenizer, truncation="head", cache_dir=cfg.cache_dir,
                seed=DATA_SEED, **cfg.sizes())


def _build_measured(kwargs: dict) -> dict:
    with PhaseMeter("data_build", "cpu") as meter:
        build_task(**kwargs)
    return meter.result


def build_splits(cfg: DataConfig, max_len: int, tokenizer: str, into: dict | None = None):
    """`task_data` at `max_len`, the test split without repeated inputs (`distinct_inputs`: the unit of inference
    is the test document), test and validation cut to `cfg.eval_limit` (a fixed subset, the same for every seed
    and method). `into`: see `task_data`."""
    data = task_data(cfg, max_len, tokenizer, into)
    limit = cfg.eval_limit(max_len)
    if "test" in data:
        data["test"] = distinct_inputs(data["test"])
    for split in ("test", "validation"):
        if split not in data:
            continue
        if len(data[split]) > limit:
            keep = np.random.default_rng(DATA_SEED).permutation(len(data[split]))[:limit]
            data[split] = data[split].select(sorted(keep.tolist()))
    return data


def distinct_inputs(split):
    """`split` without the documents whose input at this length repeats an earlier document's. Composed tasks
    reuse their split's articles, so two documents can be the same tokens once cut to L (topic-mix: 110 of 600
    test documents at 512); every model scores such twins alike, so counting both would count one unit of
    inference twice and narrow every interval."""
    seen, keep = set(), []
    for i, ids in enumerate(split["input_ids"]):
        key = tuple(ids)
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return split if len(keep) == len(split) else split.select(keep)


class SealedSplitError(RuntimeError):
    """The test split was read while settings are being selected (tuning): selection may use validation only."""


class SealedSplit:
    """Stands in for the test split during tuning: any read raises SealedSplitError."""

    def __init__(self, why: str) -> None:
        self._why = why

    def _refuse(self, *args, **kwargs):
        raise SealedSplitError(f"the test split was read during {self._why}; selection may use validation only")

    __getitem__ = __len__ = __iter__ = _refuse

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        self._refuse()


class BucketBatchSampler(torch.utils.data.Sampler):
    """Batches of similar length.

    Training (shuffle=True): a seeded permutation per epoch, cut into pools of `pool_batches` batches, each
    pool sorted by length and batched, then the batch order shuffled; so batches are random yet have little
    padding. Evaluation (shuffle=False): sorted by length once. Batches are dealt round-robin over ranks.
    """

    def __init__(self, lengths, batch_size: int, shuffle: bool, seed: int = 0, rank: int = 0,
                 world_size: int = 1, pool_batches: int = 32) -> None:
        self.lengths = np.asarray(lengths)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size, self.pool_batches = rank, world_size, pool_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this on every epoch
        self.epoch = epoch

    def _all_batches(self) -> list[list[int]]:
        n = len(self.lengths)
        if not self.shuffle:
            order = np.argsort(-self.lengths, kind="stable")
            return [order[i:i + self.batch_size].tolist() for i in range(0, n, self.batch_size)]
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(n)
        pool = self.batch_size * self.pool_batches
        batches = []
        for start in range(0, n, pool):
            chunk = order[start:start + pool]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches += [chunk[i:i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def _my_batches(self) -> list[list[int]]:
        batches = self._all_batches()
        if self.shuffle:  # every rank must take the same number of optimizer steps
            batches = batches[: len(batches) - len(batches) % self.world_size]
        return batches[self.rank::self.world_size]

    def __iter__(self):
        return iter(self._my_batches())

    def __len__(self) -> int:
        return len(self._my_batches())


class PadCollator:
    """Right-pads `input_ids` to the longest sequence of the batch; the mask tells real from padded tokens."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.as_tensor(r["input_ids"], dtype=torch.long)
            mask[i, :n] = 1
        batch = {"input_ids": ids, "attention_mask": mask,
                 "labels": torch.tensor([int(r["label"]) for r in rows], dtype=torch.long)}
        if "row" in rows[0]:
            batch["rows"] = torch.tensor([int(r["row"]) for r in rows], dtype=torch.long)
        return batch


class TaskDataModule(L.LightningDataModule):
    """One task at one length, from a built DatasetDict (`build_splits`)."""

    def __init__(self, data, micro_batch: int, seed: int = 0, pad_token_id: int = 0, eval_batch: int = 0) -> None:
        super().__init__()
        self.data, self.micro_batch, self.seed, self.pad_token_id = data, micro_batch, seed, pad_token_id
        self.eval_batch = eval_batch or 2 * micro_batch  # no activations kept for backward: twice as many fit

    @property
    def label_names(self) -> list[str]:
        return list(self.data["train"].features["label"].names)

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        ds = self.data[split].select_columns(["input_ids", "label"])
        if not shuffle:  # evaluation batches carry each row's index, so predictions map back to documents
            ds = ds.add_column("row", list(range(len(ds))))
        lengths = [len(x) for x in ds["input_ids"]]
        rank, world = self._rank_world()
        size = self.micro_batch if shuffle else self.eval_batch
        sampler = BucketBatchSampler(lengths, size, shuffle, self.seed, rank, world)
        # num_workers=0: collation is trivial next to a forward pass, and it keeps runs deterministic.
        return DataLoader(ds, batch_sampler=sampler, collate_fn=PadCollator(self.pad_token_id), num_workers=0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
