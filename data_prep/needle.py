"""`needle`: passkey retrieval as 10-way classification.

A haystack of BBC articles from the split's own article pool (corpora.partition_articles) is cut to fill the
example exactly (100 % of max_len including special tokens), and one sentence "The secret code word is <w>."
is inserted at a sentence boundary at a uniform random depth; the label is <w>. Built per max_len (the
haystack fills each length), so `depth` (needle start / haystack length, in [0, 1]) is recorded for
breakdowns. Haystack articles that contain any code word are excluded, so the needle is the only place a
code word occurs and the label can only be read from it. The `truncation` option has no effect here.
"""

from __future__ import annotations

import re


from .bbc_tokens import article_ids
from .corpora import SPLITS, partition_articles, split_rng
from .tokenization import encode_specials

CODE_WORDS = ("apple", "river", "tiger", "guitar", "violet", "castle", "pepper", "rocket", "silver", "dolphin")
TEMPLATE = "The secret code word is {}."
_READ = re.compile(r"secret code word is (\w+)", re.IGNORECASE)


def read_label(text: str) -> int:
    """The label an oracle reads from the needle in `text` (raises if there is not exactly one needle)."""
    found = _READ.findall(text)
    if len(found) != 1:
        raise ValueError(f"expected exactly one needle, found {len(found)}")
    return CODE_WORDS.index(found[0].lower())


def _clean(pool):
    pat = re.compile(r"\b(" + "|".join(CODE_WORDS) + r")\b", re.IGNORECASE)
    return [a for a in pool if not pat.search(a.text)]


def build(cfg, tok) -> dict[str, list[dict]]:
    """Raw records per split with exact-length `_ids`, `depth` and the haystack article ids."""
    from .registry import get_task

    sizes = cfg.sizes(get_task("needle").default_sizes)
    sp = encode_specials(tok)
    budget = cfg.max_len - len(sp["prefix"]) - len(sp["suffix"])
    needles = [tok(TEMPLATE.format(w), add_special_tokens=False)["input_ids"] for w in CODE_WORDS]
    stops = {i for t, i in tok.get_vocab().items() if t in {".", "Ġ.", "▁."}}
    ids = article_ids(tok)
    pools = partition_articles(cfg.seed)
    out = {}
    for split in SPLITS:
        rng = split_rng(cfg.seed, split, "needle")
        pool = _clean(pools[split])
        labels = [i % len(CODE_WORDS) for i in rng.permutation(sizes[split])]
        records = []
        for n, y in enumerate(labels):
            need = budget - len(needles[y])
            hay, used = [], []
            for j in rng.permutation(len(pool)):
                hay.extend(ids[pool[j].id])
                used.append(pool[j].id)
                if len(hay) >= need:
                    break
            hay = hay[:need]
            # insert at the first sentence end at or after the sampled depth (or at the very end)
            target = int(rng.uniform(0, 1) * len(hay))
            pos = next((k + 1 for k in range(target, len(hay)) if hay[k] in stops), len(hay))
            full = hay[:pos] + needles[y] + hay[pos:]
            records.append({
                "doc_id": f"needle/{split}/{n:05d}", "label": y, "depth": pos / max(1, len(hay)),
                "article_ids": used, "_ids": full,
            })
        texts = tok.batch_decode([r["_ids"] for r in records])
        for r, t in zip(records, texts):
            r["text"] = t
        out[split] = records
    return out
