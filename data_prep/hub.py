"""Hub tasks: read from the hub's parquet files with `datasets.load_dataset("parquet")`, converted to the suite's
records.

Every source is read from the hub's own parquet conversion (the `refs/convert/parquet` revision that the dataset
viewer writes for each public dataset), not through the dataset's loading script: `tau/scrolls` and the
hyperpartisan dataset are script datasets, which recent `datasets` releases no longer execute, and their parquet
conversion reads the same rows in the same schema. The revision and the files are named per source (`HubSource`)
and listed in docs/tasks.md.

Nothing here runs unless a hub task is asked for. Without a network the build fails in seconds: offline mode
(HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) fails at once, otherwise a 3-second TCP probe of the hub decides before
`load_dataset` can start its retry loop. `source=` (a local folder of `<split>.parquet` or `<split>.jsonl` files
in the hub schema) runs the same conversion without any network: that is how the tests exercise it. `source=`
may also be another hub id in the same schema, loaded by `load_dataset(source, config)`.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import quote, urlparse

from .corpora import SPLITS, split_rng

PROBE_TIMEOUT_S = 3.0
PARQUET_EXPORT = "refs/convert/parquet"  # the hub's parquet conversion of a public dataset, one folder per config


class HubUnavailableError(ConnectionError):
    """The dataset hub cannot be reached (offline mode or no network)."""


@dataclass(frozen=True)
class HubSource:
    """How one hub dataset maps onto train / validation / test records."""

    hub_id: str = field(metadata={"help": "dataset id on the hub"})
    config: str | None = field(default=None, metadata={"help": "dataset configuration name"})
    splits: dict = field(default_factory=dict, metadata={
        "help": "our split -> hub split; a missing 'validation' (or 'test') is carved from 'train' by seed"})
    convert: Callable = field(default=None, repr=False, metadata={"help": "fn(row) -> record or None (skip)"})
    revision: str = field(default=PARQUET_EXPORT, metadata={"help": "repository revision the parquet files are read at"})

    def parquet_files(self) -> dict[str, str]:
        """hub split -> `hf://` pattern of its parquet files at `revision` (`<config>/<split>/*.parquet`)."""
        root = f"hf://datasets/{self.hub_id}@{quote(self.revision, safe='')}/{self.config or 'default'}"
        return {theirs: f"{root}/{theirs}/*.parquet" for theirs in dict.fromkeys(self.splits.values())}


def _offline_flag() -> bool:
    return any(os.environ.get(v, "").strip().lower() in {"1", "true", "yes", "on"}
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def check_hub(task: str) -> None:
    """Raise HubUnavailableError quickly when the hub cannot be used."""
    from .registry import list_tasks

    hint = f"hub task {task!r} needs the dataset hub; offline tasks: {', '.join(list_tasks('offline'))}"
    if _offline_flag():
        raise HubUnavailableError(f"{hint} (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set)")
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=PROBE_TIMEOUT_S).close()
    except OSError as e:
        raise HubUnavailableError(f"{hint} ({host} unreachable: {e})") from None


def load_records(task: str, src: HubSource, cfg, sizes: dict[str, int], cache_dir) -> dict[str, list[dict]]:
    """Load (hub or local `cfg.source`), convert, carve missing splits and subsample to `sizes`."""
    from datasets import load_dataset

    if cfg.source and os.path.exists(cfg.source):
        raw = load_dataset(cfg.source, cache_dir=str(cache_dir))
    elif cfg.source:  # another hub id in the same schema (e.g. a parquet mirror of a script-only dataset)
        check_hub(task)
        raw = load_dataset(cfg.source, src.config, cache_dir=str(cache_dir))
    else:
        check_hub(task)
        raw = load_dataset("parquet", data_files=src.parquet_files(), cache_dir=str(cache_dir))
    recs = {}
    for ours, theirs in src.splits.items():
        if theirs in raw:
            recs[ours] = [r for r in (src.convert(row) for row in raw[theirs]) if r is not None]
    if "train" not in recs:
        raise ValueError(f"{task}: the source has no {src.splits.get('train', 'train')!r} split")
    for missing in (s for s in ("test", "validation") if s not in recs):
        # carve a missing split out of train, by seed (rows, i.e. documents, never shared)
        order = split_rng(cfg.seed, missing, f"{task}-carve").permutation(len(recs["train"]))
        take = min(sizes[missing], len(order) // 3)
        recs[missing] = [recs["train"][i] for i in sorted(order[:take])]
        drop = set(order[:take].tolist())
        recs["train"] = [r for i, r in enumerate(recs["train"]) if i not in drop]
    # the same document in two hub splits (IMDb has a few duplicate reviews) stays only in the held-out one
    held_out = {r["doc_id"] for s in ("validation", "test") for r in recs[s]}
    recs["train"] = [r for r in recs["train"] if r["doc_id"] not in held_out]
    val_ids = {r["doc_id"] for r in recs["validation"]}
    recs["test"] = [r for r in recs["test"] if r["doc_id"] not in val_ids]
    out = {}
    for split in SPLITS:
        rows = recs[split]
        if len(rows) > sizes[split]:
            keep = sorted(split_rng(cfg.seed, split, f"{task}-sub").permutation(len(rows))[: sizes[split]])
            rows = [rows[i] for i in keep]
        out[split] = [{**r, "doc_id": f"{task}/{r['doc_id']}"} for r in rows]
    return out


def _stable_id(*texts: str) -> str:
    """Content hash as a document id when the source has none (Python's hash() is salted per process)."""
    return hashlib.sha1("\x00".join(texts).encode()).hexdigest()[:16]


def _imdb(row):
    return {"doc_id": str(row.get("idx", _stable_id(row["text"]))), "text": row["text"], "label": int(row["label"])}


def _hyperpartisan(row):
    text = (row.get("title") or "") + "\n\n" + row["text"]
    return {"doc_id": str(row.get("id", row.get("url", ""))), "text": text, "label": int(bool(row["hyperpartisan"]))}


CONTRACT_NLI_LABELS = ("Entailment", "Contradiction", "Not mentioned")


def _contract_nli(row):
    # SCROLLS packs the query first, then a blank line, then the document
    hypothesis, _, document = row["input"].partition("\n\n")
    if row.get("output") not in CONTRACT_NLI_LABELS:
        return None  # unlabelled (the SCROLLS test split)
    return {"doc_id": str(row["id"]), "text": document, "text_pair": hypothesis,
            "label": CONTRACT_NLI_LABELS.index(row["output"])}


def _boolq(row):
    return {"doc_id": str(row.get("idx", _stable_id(row["question"], row["passage"]))),
            "text": row["passage"], "text_pair": row["question"], "label": int(bool(row["answer"]))}


ARXIV_LABELS = ("math.AC", "cs.CV", "cs.AI", "cs.SY", "math.GR", "cs.CE", "cs.PL", "cs.IT", "cs.DS", "cs.NE",
                "math.ST")


def _arxiv(row):
    return {"doc_id": _stable_id(row["text"]), "text": row["text"], "label": int(row["label"])}


SOURCES = {
    "imdb": HubSource("stanfordnlp/imdb", "plain_text", {"train": "train", "test": "test"}, _imdb),
    "hyperpartisan": HubSource("SemEvalWorkshop/hyperpartisan_news_detection", "byarticle",
                               {"train": "train"}, _hyperpartisan),
    "contract_nli": HubSource("tau/scrolls", "contract_nli",
                              {"train": "train", "test": "validation"}, _contract_nli),
    "boolq": HubSource("google/boolq", None, {"train": "train", "test": "validation"}, _boolq),
    "arxiv": HubSource("ccdv/arxiv-classification", None,
                       {"train": "train", "validation": "validation", "test": "test"}, _arxiv),
}


def builder(task: str):
    """The registry builder of a hub task."""
    def build(cfg, tok, cache_dir=None):
        from .config import default_cache_dir
        from .registry import get_task

        sizes = cfg.sizes(get_task(task).default_sizes)
        return load_records(task, SOURCES[task], cfg, sizes, cache_dir or default_cache_dir() / "_hub_raw")
    return build
