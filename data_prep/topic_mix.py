"""`topic-mix`: documents of ~17 BBC articles of mixed topics, labelled with their plurality topic.

Design (why): the sweep needs a task whose accuracy rises with context. Each document is a shuffled run of
articles in which the label topic has the strictly largest count (ties are excluded by resampling) but only
~35-45 % of the articles, and one runner-up topic is nearly as frequent. The first article (≈ what 512 tokens
show) is the label topic only ~40 % of the time, so short prefixes often mislead; the whole document decides.

Documents depend on the seed only (not on max_len or the tokenizer): they are composed in words, ~6,500 words
(~8.5k WordPiece tokens) each, and every length cuts the same documents.

Without-replacement rule: the BBC articles are partitioned per topic into train / validation / test pools
(corpora.partition_articles), so no article is in two splits. Inside a split, each topic's pool is consumed as a
shuffled cycle: every article is used once before any article is used a second time (a new shuffle starts the
next cycle), and no article appears twice in one document. With 800 train documents an article recurs in ~9
documents of its own split, never in another split.
"""

from __future__ import annotations

from collections import Counter, deque

import numpy as np

from .bbc_tokens import article_ids
from .corpora import SPLITS, partition_articles, split_rng

TARGET_WORDS = 6500          # fills 8k+ tokens, enough for the longest default length (4096) and beyond
LABEL_SHARE = (0.35, 0.45)   # label topic's share of the articles (≈ P(first article is the label topic))
RUNNER_UP_GAP = (0.04, 0.12)  # how much smaller the runner-up topic's share is
MIN_VISIBLE = 32             # an article counts as seen in a prefix if at least this many of its tokens are in it


class _TopicStreams:
    """Per-topic shuffled cycles over a split's articles; `give_back` undoes draws of a rejected document."""

    def __init__(self, pool, rng: np.random.Generator):
        self.rng = rng
        self.pool = {t: [a for a in pool if a.topic == t] for t in sorted({a.topic for a in pool})}
        self.queue = {t: deque() for t in self.pool}

    def take(self, topic: str, exclude: set[str]):
        q = self.queue[topic]
        for _ in range(2):
            for i, a in enumerate(q):
                if a.id not in exclude:
                    del q[i]
                    return a
            # cycle exhausted (or only excluded articles left): append the next shuffled cycle
            q.extend(self.pool[topic][i] for i in self.rng.permutation(len(self.pool[topic])))
        raise RuntimeError(f"topic {topic!r} has too few articles for one document")

    def give_back(self, arts) -> None:
        for a in reversed(arts):
            self.queue[a.topic].appendleft(a)


def _topic_sequence(label: str, topics: list[str], rng: np.random.Generator, slots: int = 40) -> list[str]:
    """A shuffled multiset of topics with the intended shares (longer than any document needs)."""
    share = rng.uniform(*LABEL_SHARE)
    others = [t for t in topics if t != label]
    runner = others[rng.integers(len(others))]
    n_label = round(slots * share)
    n_runner = round(slots * (share - rng.uniform(*RUNNER_UP_GAP)))
    rest = [t for t in others if t != runner]
    seq = [label] * n_label + [runner] * n_runner
    seq += [rest[i] for i in rng.integers(len(rest), size=slots - len(seq))]
    return [seq[i] for i in rng.permutation(len(seq))]


def plurality(topics: list[str]) -> str | None:
    """The topic with the strictly largest count, or None on a tie."""
    counts = Counter(topics).most_common()
    if not counts or (len(counts) > 1 and counts[0][1] == counts[1][1]):
        return None
    return counts[0][0]


def compose_split(pool, n_docs: int, topics: list[str], rng: np.random.Generator) -> list[dict]:
    """`n_docs` documents with balanced labels; each a list of articles whose strict plurality is the label."""
    streams = _TopicStreams(pool, rng)
    labels = [topics[i % len(topics)] for i in rng.permutation(n_docs)]
    docs = []
    for label in labels:
        for _ in range(1000):
            arts, words = [], 0
            for t in _topic_sequence(label, topics, rng):
                a = streams.take(t, {x.id for x in arts})
                arts.append(a)
                words += len(a.text.split())
                if words >= TARGET_WORDS:
                    break
            if plurality([a.topic for a in arts]) == label:
                break
            streams.give_back(arts)
        else:  # pragma: no cover - the shares make a valid document likely within a few tries
            raise RuntimeError("could not compose a topic-mix document")
        docs.append({"articles": arts, "label": topics.index(label)})
    return docs


def build(cfg, tok) -> dict[str, list[dict]]:
    """Raw records per split: text, label, doc_id, article_ids, article_n_tokens and precomputed `_ids`."""
    from .registry import get_task

    spec = get_task("topic-mix")
    sizes = cfg.sizes(spec.default_sizes)
    pools = partition_articles(cfg.seed)
    ids = article_ids(tok)
    out = {}
    for split in SPLITS:
        docs = compose_split(pools[split], sizes[split], list(spec.labels), split_rng(cfg.seed, split, "topic-mix"))
        out[split] = [
            {
                "doc_id": f"topic-mix/{split}/{i:05d}",
                "text": "\n\n".join(a.text for a in d["articles"]),
                "label": d["label"],
                "article_ids": [a.id for a in d["articles"]],
                "article_n_tokens": [len(ids[a.id]) for a in d["articles"]],
                "_ids": [t for a in d["articles"] for t in ids[a.id]],
            }
            for i, d in enumerate(docs)
        ]
    return out


def visible_label(article_ids_: list[str], article_n_tokens: list[int], n_content: int) -> str | None:
    """Plurality topic among the articles visible in the first `n_content` content tokens (None on a tie)."""
    seen, pos = [], 0
    for aid, n in zip(article_ids_, article_n_tokens):
        if min(n, n_content - pos) >= min(MIN_VISIBLE, n):
            seen.append(aid.split("/")[0])
        pos += n
        if pos >= n_content:
            break
    return plurality(seen)


def decidability(split_ds, lengths=(512, 1024, 2048, 4096), n_special: int = 2) -> dict[int, float]:
    """Fraction of examples whose label is the strict plurality of the articles seen in the first L tokens
    (head truncation, `n_special` special tokens), per L. Needs the `article_*` columns of this task."""
    names = split_ds.features["label"].names
    rows = list(zip(split_ds["article_ids"], split_ds["article_n_tokens"], split_ds["label"]))
    return {
        L: float(np.mean([visible_label(a, n, L - n_special) == names[y] for a, n, y in rows])) for L in lengths
    }


def first_article_accuracy(split_ds) -> float:
    """Accuracy of the rule 'predict the first article's topic' (what ~512 tokens mostly show)."""
    names = split_ds.features["label"].names
    return float(np.mean([a[0].split("/")[0] == names[y] for a, y in zip(split_ds["article_ids"], split_ds["label"])]))
