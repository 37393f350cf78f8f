"""BBC articles tokenized once per tokenizer (documents are assembled from these pieces, not re-tokenized)."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from .corpora import bbc_articles
from .tokenization import content_ids, tokenizer_identity

_CACHE: dict[str, dict[str, list[int]]] = {}


def article_ids(tok: PreTrainedTokenizerBase) -> dict[str, list[int]]:
    """{article id: content token ids}. For a WordPiece tokenizer, concatenating these equals tokenizing the
    articles joined by blank lines (a test checks it); for byte-level BPE it can differ by one token at a seam."""
    key = tokenizer_identity(tok)["vocab_sha256"]
    if key not in _CACHE:
        arts = bbc_articles()
        _CACHE[key] = dict(zip((a.id for a in arts), content_ids(tok, [a.text for a in arts])))
    return _CACHE[key]
