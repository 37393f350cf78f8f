"""Backbone loading: the offline default MiniLM, hub ids and local paths.

`check_backbone` reads only the config, so the sweep can refuse a bad model or an impossible length before
any training starts; `load_backbone` builds the `*ForSequenceClassification` model at a given context length.

Context length policy (what "can take" a length means here):
- absolute learned positions (BERT, RoBERTa, ELECTRA, GPT-2 ...): extended past the native table by tiling
  copies of the pretrained position embeddings, as Longformer extended RoBERTa;
- rotary / relative positions (Llama, Qwen2, Mistral, DeBERTa-v2 ...): never extended or rescaled here; a
  length above `max_position_embeddings` is refused, because running RoPE past its trained range silently
  degrades the model. Build such a model with a larger `max_position_embeddings` (or a rope scaling in its
  config) if that is what you want.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from data_prep import MAX_EXTENDED_LEN
from ssmlora.inject import enable_gradient_checkpointing
from data_prep.models import DEFAULT_MODEL, default_model_dir, resolve_model_path  # noqa: F401 (re-exported)

ATTN_IMPLS = ("auto", "flash_attention_2", "sdpa", "eager")
POOLINGS = ("auto", "mean", "model")


@dataclass
class ModelConfig:
    """The backbone every cell adapts."""

    model: str = field(default=DEFAULT_MODEL, metadata={
        "help": f"backbone: {DEFAULT_MODEL} (offline MiniLM, the default), a local folder or a hub id"})
    attn: str = field(default="auto", metadata={
        "help": "attention kernel: auto (flash_attention_2 on a GPU with flash-attn installed, else sdpa) | "
                "flash_attention_2 | sdpa | eager", "choices": ATTN_IMPLS})
    pooling: str = field(default="auto", metadata={
        "help": "head input: auto (a sentence-transformers checkpoint's own pooling) | mean | model (the "
                "architecture's own, e.g. CLS)", "choices": POOLINGS})


class BackboneError(ValueError):
    """A model that cannot be loaded, or a length it cannot take. The message is meant for the user as is."""


@dataclass
class BackboneInfo:
    """What was loaded, recorded with every result."""

    model: str  # as the user named it
    path: str  # resolved folder or hub id
    model_type: str
    positions: str  # "absolute" (extendable) | "fixed" (rotary, relative or unknown: never extended)
    native_reach: int  # longest input the pretrained position table covers
    reach: int  # longest input this model instance takes
    attn_impl: str = ""  # the kernel that runs: flash_attention_2 | sdpa | eager
    pooling: str = "model"  # "mean" (masked mean of token states, as the checkpoint was trained) | "model"

    def to_dict(self) -> dict:
        return asdict(self)


def _position_offset(config) -> int:
    """RoBERTa-style models reserve the first pad_token_id + 1 rows of the position table."""
    if config.model_type in {"roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text"}:
        return int(config.pad_token_id or 0) + 1
    return 0


def _native_positions(config) -> int | None:
    n = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return None if n is None else int(n) - _position_offset(config)


# Families whose learned position table lives at `<base>.embeddings.position_embeddings` (or GPT-2's `wpe`).
_ABSOLUTE_FAMILIES = {"bert", "roberta", "xlm-roberta", "camembert", "electra", "data2vec-text", "gpt2"}


def _has_absolute_positions(config) -> bool:
    # Newer transformers drop `position_embedding_type` from BERT configs; absent means absolute.
    return config.model_type in _ABSOLUTE_FAMILIES and getattr(config, "position_embedding_type", "absolute") == "absolute"


def check_backbone(name_or_path: str, reach: int) -> BackboneInfo:
    """Read the model's config (no weights) and check it can take `reach` tokens. Raises BackboneError."""
    from transformers import AutoConfig

    try:
        path = resolve_model_path(name_or_path)
    except FileNotFoundError as err:
        raise BackboneError(str(err)) from None
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as err:  # OSError, ValueError, HF hub errors: all mean "not a model we can load"
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BackboneError(
            f"unknown model {name_or_path!r}: no config.json there and not reachable offline ({first_line[:160]})"
        ) from None
    native = _native_positions(config)
    positions = "absolute" if _has_absolute_positions(config) else "fixed"
    if positions == "fixed" and native is not None and reach > native:
        raise BackboneError(
            f"--max-len {reach} is beyond what {name_or_path!r} ({config.model_type}, max_position_embeddings="
            f"{native}) can take: its positions are not absolute, so they are not extended; use lengths <= "
            f"{native} or a model configured for longer inputs"
        )
    if positions == "absolute" and reach > MAX_EXTENDED_LEN:
        raise BackboneError(
            f"--max-len {reach} is beyond what {name_or_path!r} can take: its absolute positions are extended "
            f"by copying up to {MAX_EXTENDED_LEN} tokens; use lengths <= {MAX_EXTENDED_LEN}"
        )
    return BackboneInfo(
        model=name_or_path,
        path=path,
        model_type=config.model_type,
        positions=positions,
        native_reach=native or reach,
        reach=max(reach, native or 0),
    )


def pick_attn_implementation(requested: str = "auto") -> str:
    """flash_attention_2 when flash-attn is importable and CUDA is there, else sdpa (or what was asked)."""
    if requested not in ATTN_IMPLS:
        raise BackboneError(f"unknown attention implementation {requested!r}: choose one of {', '.join(ATTN_IMPLS)}")
    if requested != "auto":
        return requested
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def extend_positions(model: nn.Module, reach: int) -> int:
    """Tile the pretrained absolute position embeddings up to `reach` rows (Longformer-style copy).

    Returns the new table length. Copies (rather than interpolates) so every position keeps a vector the
    pretrained attention already knows how to read; fine-tuning sorts out the repeats.
    """
    config = model.config
    offset = _position_offset(config)
    if config.model_type == "gpt2":
        owner, attr = model.transformer, "wpe"
    else:
        base = getattr(model, model.base_model_prefix)
        owner, attr = base.embeddings, "position_embeddings"
    old: nn.Embedding = getattr(owner, attr)
    native = old.num_embeddings - offset
    if reach <= native:
        return old.num_embeddings
    rows = old.weight.data[offset:]
    tiled = rows.repeat(math.ceil(reach / native), 1)[:reach]
    # `_weight` skips nn.Embedding's random init: drawing it would move the global RNG by a length-dependent
    # amount, so adapter init and dropout would depend on how far positions were extended.
    new = nn.Embedding(offset + reach, old.embedding_dim, padding_idx=old.padding_idx,
                       _weight=torch.cat([old.weight.data[:offset], tiled]).to(old.weight.dtype))
    new.weight.requires_grad_(old.weight.requires_grad)
    setattr(owner, attr, new)
    # BERT-style embeddings keep (1, max_positions) index buffers that slice by length: grow them too.
    for name in ("position_ids", "token_type_ids"):
        buf = getattr(owner, name, None)
        if isinstance(buf, torch.Tensor) and buf.dim() == 2 and buf.shape[1] < offset + reach:
            grown = (
                torch.arange(offset + reach, dtype=buf.dtype).expand(1, -1)
                if name == "position_ids"
                else torch.zeros(1, offset + reach, dtype=buf.dtype)
            )
            owner.register_buffer(name, grown.to(buf.device), persistent=False)
    if config.model_type == "gpt2":
        config.n_positions = reach
    config.max_position_embeddings = offset + reach
    return offset + reach


class MaskedMeanPooler(nn.Module):
    """Stands in for BERT's CLS pooler: the mean of the token states under the attention mask.

    BERT's pooler only sees the hidden states, so the mask is handed over by a forward pre-hook on the
    whole model (`use_mean_pooling`) and dropped again after the forward; without a mask every position counts.
    """

    def __init__(self) -> None:
        super().__init__()
        self.mask: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        mask = self.mask
        if mask is None or mask.shape != hidden.shape[:2]:
            return hidden.mean(1)
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1)


def sentence_transformers_pooling(path: str) -> str | None:
    """The pooling a sentence-transformers checkpoint was trained with ('mean', 'cls', ...), if it says."""
    import json

    cfg = Path(path) / "1_Pooling" / "config.json"
    if not cfg.is_file():
        return None
    modes = json.loads(cfg.read_text())
    if modes.get("pooling_mode_mean_tokens"):
        return "mean"
    return "cls" if modes.get("pooling_mode_cls_token") else "other"


def use_mean_pooling(model: nn.Module) -> bool:
    """Swap a BERT-style CLS pooler for `MaskedMeanPooler`, or switch a model that pools by its config
    (ModernBERT's `classifier_pooling`, already mask-aware) to its mean; False if the model has neither."""
    if getattr(model.config, "classifier_pooling", None) in ("cls", "mean"):
        model.config.classifier_pooling = "mean"
        return True
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if base is None or getattr(base, "pooler", None) is None:
        return False
    pooler = MaskedMeanPooler()
    base.pooler = pooler

    def hand_over_mask(module, args, kwargs):
        pooler.mask = kwargs.get("attention_mask")

    def drop_mask(module, args, kwargs, output):
        pooler.mask = None

    model.register_forward_pre_hook(hand_over_mask, with_kwargs=True)
    model.register_forward_hook(drop_mask, with_kwargs=True)
    return True


def load_backbone(
    name_or_path: str,
    num_labels: int,
    reach: int,
    attn_implementation: str = "auto",
    gradient_checkpointing: bool = False,
    id2label: dict[int, str] | None = None,
    pad_token_id: int | None = None,
    pooling: str = "auto",
) -> tuple[nn.Module, BackboneInfo]:
    """A `*ForSequenceClassification` model that takes `reach` tokens (at least), with attention dropout 0.

    `pooling`: "auto" follows a sentence-transformers checkpoint's own pooling config (the default MiniLM was
    trained to be read out by a mean over tokens, not by its CLS token; with CLS the head stayed at chance
    in a 30-step budget); "mean" forces it; "model" keeps the architecture's own head input.

    Attention dropout is forced to 0 because on the CPU dropout > 0 sends SDPA to its quadratic-memory math
    path; hidden dropout stays as pretrained.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the new head's "newly initialized" report is expected, not news
    hf_logging.disable_progress_bar()  # a weight-loading bar per cell is noise in a sweep's console
    info = check_backbone(name_or_path, reach)
    attn = pick_attn_implementation(attn_implementation)
    overrides = {"num_labels": num_labels}
    if id2label:
        overrides["id2label"] = {int(k): v for k, v in id2label.items()}
        overrides["label2id"] = {v: int(k) for k, v in id2label.items()}
    config = AutoConfig.from_pretrained(info.path)
    for key in ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop"):
        if hasattr(config, key):
            overrides[key] = 0.0
    if pad_token_id is not None and getattr(config, "pad_token_id", None) is None:
        overrides["pad_token_id"] = pad_token_id  # decoder classifiers find the last token through it
    # The classifier head is new for every task, so a checkpoint's head of another size is simply replaced.
    overrides["ignore_mismatched_sizes"] = True
    try:
        model = AutoModelForSequenceClassification.from_pretrained(info.path, attn_implementation=attn, **overrides)
    except (ValueError, ImportError) as err:
        if attn == "sdpa" or attn_implementation != "auto":
            raise BackboneError(f"cannot load {name_or_path!r} with attention {attn!r}: {err}") from None
        attn = "sdpa"
        model = AutoModelForSequenceClassification.from_pretrained(info.path, attn_implementation=attn, **overrides)
    if info.positions == "absolute":
        extend_positions(model, reach)
    if pooling == "mean" or (pooling == "auto" and sentence_transformers_pooling(info.path) == "mean"):
        info.pooling = "mean" if use_mean_pooling(model) else "model"
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)  # Hugging Face's switch; works for every adapter method
    info.attn_impl = getattr(model.config, "_attn_implementation", None) or attn
    info.reach = max(reach, info.native_reach)
    return model, info


def save_tiny_backbone(folder: str | Path, family: str = "bert", max_positions: int = 128, seed: int = 0) -> Path:
    """Save a tiny randomly initialised backbone with the default MiniLM tokenizer (tests, smoke runs).

    Built with `from_config`, so nothing is downloaded. `family`: bert or gpt2 (absolute positions, extendable),
    llama, qwen3 or modernbert (rotary, never extended past `max_positions`).
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    size = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                max_position_embeddings=max_positions)
    tiny = {
        "bert": size,
        "llama": {**size, "num_key_value_heads": 2, "pad_token_id": 0},
        "qwen3": {**size, "num_key_value_heads": 2, "head_dim": 16, "pad_token_id": 0},
        "gpt2": dict(vocab_size=30522, n_embd=32, n_layer=2, n_head=2, n_inner=64, n_positions=max_positions,
                     pad_token_id=0, bos_token_id=101, eos_token_id=102),
        # MiniLM's tokenizer: [PAD] 0, [CLS] 101, [SEP] 102; every other layer global, as ModernBERT-base
        "modernbert": {**size, "pad_token_id": 0, "bos_token_id": 101, "cls_token_id": 101, "eos_token_id": 102,
                       "sep_token_id": 102, "global_attn_every_n_layers": 2, "local_attention": 16},
    }
    if family not in tiny:
        raise ValueError(f"unknown tiny family {family!r}: {' | '.join(tiny)}")
    folder = Path(folder)
    torch.manual_seed(seed)
    config = AutoConfig.for_model(family, **tiny[family])
    return save_with_default_tokenizer(AutoModelForSequenceClassification.from_config(config), folder)


def save_with_default_tokenizer(model: nn.Module, folder: str | Path) -> Path:
    """Save `model` to `folder` with the offline MiniLM tokenizer beside it, so `--model <folder>` runs offline."""
    import shutil

    folder = Path(folder)
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(default_model_dir() / name, folder / name)
    return folder
