"""Tiny randomly initialised backbones for tests (built from configs: nothing is downloaded)."""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    GPT2Config,
    LlamaConfig,
    ModernBertConfig,
    RobertaConfig,
)

HIDDEN, LAYERS, FFN, LABELS = 32, 4, 64, 3


def tiny_config(family: str, **overrides):
    common = dict(num_labels=LABELS, pad_token_id=0)
    if family == "llama":
        cfg = LlamaConfig(vocab_size=128, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                          num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256, **common)
    elif family == "bert":
        cfg = BertConfig(vocab_size=128, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                         num_attention_heads=4, max_position_embeddings=256, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0, **common)
    elif family == "roberta":
        cfg = RobertaConfig(vocab_size=128, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                            num_attention_heads=4, max_position_embeddings=258, hidden_dropout_prob=0.0,
                            attention_probs_dropout_prob=0.0, num_labels=LABELS, pad_token_id=1)
    elif family == "gpt2":
        cfg = GPT2Config(vocab_size=128, n_embd=HIDDEN, n_inner=FFN, n_layer=LAYERS, n_head=4, n_positions=256, bos_token_id=1, eos_token_id=2,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
    elif family == "modernbert":  # every other layer global, a 16-token local window: both kinds of attention
        cfg = ModernBertConfig(vocab_size=128, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                               num_attention_heads=4, max_position_embeddings=256, global_attn_every_n_layers=2,
                               local_attention=16, bos_token_id=1, cls_token_id=1, eos_token_id=2, sep_token_id=2,
                               **common)
    else:
        raise KeyError(family)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def tiny_model(family: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(tiny_config(family, **overrides), attn_implementation="eager")
    return model.eval()


def tiny_batch(batch: int = 2, seq: int = 10, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 128, (batch, seq), generator=g)


def tiny_sweep_env(base, lengths, **sizes) -> dict:
    """A tiny BERT (64 native positions) saved with the MiniLM tokenizer, and topic-mix pre-built at `lengths`
    with `sizes` (n_train, n_validation, n_test), so every sweep cell process only loads the data."""
    from data_prep import build_task
    from ssmlora.lab.backbone import save_tiny_backbone

    bert = save_tiny_backbone(base / "bert", "bert", max_positions=64)
    cache = base / "data"
    for length in lengths:
        build_task("topic-mix", max_len=length, tokenizer=str(bert), cache_dir=str(cache), seed=0, **sizes)
    return {"base": base, "bert": bert, "cache": cache}


def assert_bf16_steps_finite(model, batches) -> None:
    """AdamW steps under CPU bf16 autocast, one per (input_ids, attention_mask or None) batch: the loss and every
    trainable gradient must stay finite (clipped at 1.0 as the sweep does)."""
    import torch

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step, (ids, mask) in enumerate(batches):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, attention_mask=mask, labels=ids[:, 0] % 3).loss
        assert torch.isfinite(loss), step
        loss.backward()
        for name, p in model.named_parameters():
            if p.requires_grad:
                assert torch.isfinite(p.grad).all(), (step, name)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
