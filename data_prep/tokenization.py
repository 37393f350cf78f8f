"""Tokenizer loading, identity, length limits and explicit truncation.

Examples carry `input_ids` WITH the model's special tokens. Documents are tokenized in full (no tokenizer-side
truncation), then cut here by the chosen rule so that the number of tokens cut is known and recorded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from .config import HEAD_SHARE, MAX_EXTENDED_LEN, MIN_LEN
from .models import DEFAULT_MODEL, resolve_model_path

_LOADED: dict[str, PreTrainedTokenizerBase] = {}


def load_tokenizer(tokenizer: str | PreTrainedTokenizerBase | None = None) -> PreTrainedTokenizerBase:
    """A tokenizer object from an instance, the default alias, a local folder or a hub id."""
    if isinstance(tokenizer, PreTrainedTokenizerBase):
        return tokenizer
    name = resolve_model_path(tokenizer or DEFAULT_MODEL)
    if name not in _LOADED:
        _LOADED[name] = AutoTokenizer.from_pretrained(name)
    return _LOADED[name]


def tokenizer_identity(tok: PreTrainedTokenizerBase) -> dict:
    """Name plus a hash of the vocabulary and special tokens: the tokenizer part of the cache key."""
    h = hashlib.sha256()
    for piece, idx in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]):
        h.update(f"{idx}\t{piece}\n".encode())
    h.update(json.dumps(encode_specials(tok), sort_keys=True).encode())
    h.update(str(getattr(tok, "do_lower_case", "")).encode())
    path = str(tok.name_or_path)
    # the alias for the offline default, a folder's name for local folders (moving it keeps the cache), else the id
    name = DEFAULT_MODEL if path == str(resolve_model_path(DEFAULT_MODEL)) else (
        Path(path).name if Path(path).is_dir() else path) or type(tok).__name__
    return {"name": name, "vocab_sha256": h.hexdigest()[:16]}


def _backbone_config(tok: PreTrainedTokenizerBase) -> dict:
    """config.json next to the tokenizer, if it is a local folder (the offline backbone is)."""
    cfg = Path(str(tok.name_or_path)) / "config.json"
    try:
        return json.loads(cfg.read_text())
    except (OSError, ValueError):
        return {}


def max_supported_len(tok: PreTrainedTokenizerBase) -> int:
    """Longest max_len allowed for this tokenizer/backbone.

    Rule: a backbone with learned absolute positions (BERT-style, `position_embedding_type: absolute`, which is
    also what an unknown config is assumed to be) can be extended by copying its position table, so it gets
    MAX_EXTENDED_LEN. Any other backbone (rotary, relative) is capped at its `max_position_embeddings`. Without a
    config the cap is MAX_EXTENDED_LEN.
    """
    cfg = _backbone_config(tok)
    if cfg.get("position_embedding_type", "absolute") == "absolute" or "max_position_embeddings" not in cfg:
        return MAX_EXTENDED_LEN
    return int(cfg["max_position_embeddings"])


def check_max_len(max_len: int, tok: PreTrainedTokenizerBase) -> None:
    """ValueError unless MIN_LEN <= max_len <= max_supported_len(tok)."""
    cap = max_supported_len(tok)
    if not MIN_LEN <= int(max_len) <= cap:
        raise ValueError(
            f"max_len must be between {MIN_LEN} and {cap} tokens for tokenizer "
            f"{tokenizer_identity(tok)['name']!r}; got {max_len}"
        )


def encode_specials(tok: PreTrainedTokenizerBase) -> dict[str, list[int]]:
    """The special-token template, probed from the tokenizer itself (works for BERT, RoBERTa, GPT-2, Llama).

    Returns prefix / suffix ids for a single text and prefix / middle / suffix for a pair.
    """
    x, y = tok("x", add_special_tokens=False)["input_ids"], tok("y", add_special_tokens=False)["input_ids"]
    single = tok("x")["input_ids"]
    pair = tok("x", "y")["input_ids"]
    i = _find(single, x)
    j = _find(pair, x)
    k = _find(pair, y, start=j + len(x))
    return {
        "prefix": single[:i], "suffix": single[i + len(x):],
        "pair_prefix": pair[:j], "pair_middle": pair[j + len(x):k], "pair_suffix": pair[k + len(y):],
    }


def _find(seq: list[int], sub: list[int], start: int = 0) -> int:
    for i in range(start, len(seq) - len(sub) + 1):
        if seq[i:i + len(sub)] == sub:
            return i
    raise ValueError("could not locate the probe text in the tokenizer's output")


def cut(ids: list[int], budget: int, truncation: str) -> tuple[list[int], int]:
    """Keep at most `budget` ids by the truncation rule; returns (kept ids, number cut)."""
    n_cut = max(0, len(ids) - budget)
    if n_cut == 0:
        return list(ids), 0
    if truncation == "head":
        return list(ids[:budget]), n_cut
    if truncation == "tail":
        return list(ids[len(ids) - budget:]), n_cut
    head = int(budget * HEAD_SHARE)
    return list(ids[:head]) + list(ids[len(ids) - (budget - head):]), n_cut


def content_ids(tok: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Full tokenization without special tokens or truncation (batched through the fast tokenizer)."""
    if not texts:
        return []
    # verbose=False: the "longer than model_max_length" warning is expected, we cut explicitly afterwards.
    return tok(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]


def encode_records(records: list[dict], tok: PreTrainedTokenizerBase, max_len: int, truncation: str) -> dict[str, list]:
    """Columns `input_ids`, `n_tokens`, `n_tokens_cut` for records with `text` (and maybe `text_pair`).

    A record may bring precomputed content ids under `_ids` (builders that assemble documents from
    already-tokenized pieces); otherwise `text` is tokenized here. For pairs only `text` (the long document)
    is cut; `text_pair` (question / hypothesis) is kept whole.
    """
    sp = encode_specials(tok)
    need = [i for i, r in enumerate(records) if "_ids" not in r]
    fresh = dict(zip(need, content_ids(tok, [records[i]["text"] for i in need])))
    pairs = [r["text_pair"] for r in records if "text_pair" in r]
    pair_ids = iter(content_ids(tok, pairs))
    out = {"input_ids": [], "n_tokens": [], "n_tokens_cut": []}
    for i, r in enumerate(records):
        ids = r["_ids"] if "_ids" in r else fresh[i]
        if "text_pair" in r:
            q = next(pair_ids)
            fixed = len(sp["pair_prefix"]) + len(sp["pair_middle"]) + len(sp["pair_suffix"]) + len(q)
            kept, n_cut = cut(ids, max(0, max_len - fixed), truncation)
            full = sp["pair_prefix"] + kept + sp["pair_middle"] + q + sp["pair_suffix"]
            if len(full) > max_len:  # the question alone is too long: cut it as well, and count it
                n_cut += len(full) - max_len
                full = full[: max_len - len(sp["pair_suffix"])] + sp["pair_suffix"]
        else:
            kept, n_cut = cut(ids, max_len - len(sp["prefix"]) - len(sp["suffix"]), truncation)
            full = sp["prefix"] + kept + sp["suffix"]
        out["input_ids"].append(full)
        out["n_tokens"].append(len(full))
        out["n_tokens_cut"].append(n_cut)
    return out
