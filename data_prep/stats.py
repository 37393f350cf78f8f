"""Split statistics: majority-class rate, class balance and length percentiles."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np

PERCENTILES = (10, 50, 90, 99)


def majority_rate(split_ds) -> float:
    """Share of the most frequent label in a split (recomputed from the labels, so valid after subsampling)."""
    labels = split_ds["label"]
    return max(Counter(labels).values()) / len(labels) if len(labels) else float("nan")


def class_counts(split_ds) -> dict[str, int]:
    names = split_ds.features["label"].names
    counts = Counter(split_ds["label"])
    return {n: counts.get(i, 0) for i, n in enumerate(names)}


def split_stats(split_ds) -> dict:
    """Size, class balance, majority rate and token-length percentiles of one split.

    `doc_tokens` is the full document length (kept + cut tokens, special tokens included), `kept_tokens` is what
    the model sees at this max_len; `truncated` is the share of examples with any token cut.
    """
    kept = np.asarray(split_ds["n_tokens"])
    cut = np.asarray(split_ds["n_tokens_cut"])
    pct = lambda a: {f"p{q}": int(np.percentile(a, q)) for q in PERCENTILES} | {"max": int(a.max())}
    return {
        "n": len(split_ds),
        "majority_rate": round(majority_rate(split_ds), 4),
        "class_counts": class_counts(split_ds),
        "doc_tokens": pct(kept + cut),
        "kept_tokens": pct(kept),
        "truncated": round(float((cut > 0).mean()), 4),
    }


def describe(ds) -> dict:
    """split_stats for every split of a DatasetDict."""
    return {split: split_stats(d) for split, d in ds.items()}


def metadata(split_ds) -> dict:
    """The JSON build metadata stored in `split_ds.info.description` (task, key, majority_rate at build time)."""
    return json.loads(split_ds.info.description or "{}")
