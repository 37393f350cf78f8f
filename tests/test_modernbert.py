"""ModernBERT as a family: its fused Wqkv and GLU input adapted whole or part by part, LoRA against PEFT, SSMLoRA
against its equations on the q and v parts of the fused output, parameter counts against a direct count, its
own mean pooling, and lengths beyond its positions refused."""

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import ModernBertConfig

from ssmlora import AdapterConfig, LoRALinear, SSMLoRALinear, inject_adapters, load_adapters, merge_adapters, save_adapters
from ssmlora.arch import scan_direction
from ssmlora.lab.backbone import BackboneError, check_backbone, load_backbone, save_tiny_backbone
from ssmlora.params import main as params_main, parameter_table
from test_ssmlora import reference_step
from tiny_models import FFN, HIDDEN, LAYERS, tiny_batch, tiny_model


def _adapted(method="ssmlora", seed=0, **kw):
    model = inject_adapters(tiny_model("modernbert", seed=seed), AdapterConfig(method=method, r=4, **kw))
    torch.manual_seed(seed + 100)
    for module in model.modules():  # leave init so the updates matter
        for name in ("lora_B", "Wb", "Wc", "Wd"):
            if hasattr(module, name):
                getattr(module, name).data.normal_(0, 0.3)
    return model


def test_ssmlora_scheme_puts_q_on_even_and_v_on_odd_parts_of_the_fused_wqkv():
    model = _adapted("ssmlora")
    sites = {(s.name, s.role): s.out_slice for s in model.adapter_sites}
    for layer in range(LAYERS):
        name = f"model.layers.{layer}.attn.Wqkv"
        role, part = ("q", (0, HIDDEN)) if layer % 2 == 0 else ("v", (2 * HIDDEN, 3 * HIDDEN))
        assert sites[(name, role)] == part and model.get_submodule(name).out_features == HIDDEN
        assert sites[(f"model.layers.{layer}.mlp.Wi", "ffn-in")] is None  # both GLU parts wanted: adapted whole
        assert (f"model.layers.{layer}.attn.Wo", "o") in sites and (f"model.layers.{layer}.mlp.Wo", "ffn-out") in sites
    assert sites[("classifier", "head")] is None and len(sites) == 4 * LAYERS + 1
    assert scan_direction("modernbert", "auto") == "bidirectional"


def test_ssmlora_on_a_fused_part_follows_its_equations_and_leaves_the_other_parts_alone():
    model = _adapted("ssmlora", norm="minmax")
    x = torch.randn(2, 7, HIDDEN)
    for layer, part in ((0, slice(0, HIDDEN)), (1, slice(2 * HIDDEN, 3 * HIDDEN))):
        module = model.get_submodule(f"model.layers.{layer}.attn.Wqkv")
        assert isinstance(module, SSMLoRALinear) and module.chain_pos == 0  # first on its chain: state 0
        with torch.no_grad():
            out, frozen = module(x), module.base(x)
            sliced = torch.nn.Linear(HIDDEN, HIDDEN, bias=False)
            sliced.weight.data = module.base.weight[part]
            expected, _ = reference_step(x, torch.zeros(2, 7, 4), module.Wa, module.Wb, module.Wc, module.Wd,
                                         sliced, module.scaling)
        torch.testing.assert_close(out[..., part], expected, rtol=1e-5, atol=1e-5)
        rest = torch.ones(3 * HIDDEN, dtype=torch.bool)
        rest[part] = False
        assert torch.equal(out[..., rest], frozen[..., rest])


def test_lora_matches_peft_on_the_fused_projections():
    ours = _adapted("lora", dropout=0.0)
    theirs = get_peft_model(tiny_model("modernbert"), LoraConfig(r=4, lora_alpha=16, target_modules=["Wqkv", "Wo", "Wi"],
                                                                 modules_to_save=["classifier"]))
    adapters = {n: m for n, m in ours.named_modules() if isinstance(m, LoRALinear)}
    assert len(adapters) == 4 * LAYERS and all(m.out_slice is None for m in adapters.values())
    for name, module in adapters.items():
        peft_layer = theirs.base_model.model.get_submodule(name)
        peft_layer.lora_A["default"].weight.data.copy_(module.lora_A.data)
        peft_layer.lora_B["default"].weight.data.copy_(module.lora_B.data)
    theirs.base_model.model.classifier.modules_to_save["default"].load_state_dict(ours.classifier.state_dict())
    ids, labels = tiny_batch(), torch.tensor([0, 2])
    with torch.no_grad():
        frozen = tiny_model("modernbert")(input_ids=ids).logits
    mine, peft = ours(input_ids=ids, labels=labels), theirs(input_ids=ids, labels=labels)
    assert (peft.logits - frozen).abs().max() > 1e-2  # the update moves the logits
    torch.testing.assert_close(mine.logits, peft.logits, rtol=1e-5, atol=1e-5)
    mine.loss.backward()
    peft.loss.backward()
    for name, module in adapters.items():
        torch.testing.assert_close(module.lora_A.grad, theirs.base_model.model.get_submodule(name).lora_A["default"].weight.grad,
                                   rtol=1e-4, atol=1e-6)


def test_a_lora_on_one_fused_part_merges_into_those_rows_only():
    model = _adapted("lora", targets=["q", "ffn-gate"])
    assert {s.out_slice for s in model.adapter_sites} == {(0, HIDDEN), (FFN, 2 * FFN)}
    ids = tiny_batch()
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        merged = merge_adapters(model)(input_ids=ids).logits
    torch.testing.assert_close(merged, adapted, rtol=1e-5, atol=1e-5)
    base = tiny_model("modernbert").model.layers[0].attn.Wqkv.weight
    merged_weight = model.model.layers[0].attn.Wqkv.weight
    assert not torch.equal(merged_weight[:HIDDEN], base[:HIDDEN]) and torch.equal(merged_weight[HIDDEN:], base[HIDDEN:])


@pytest.mark.parametrize("mode", ["depth", "scan"])
def test_sliced_adapters_save_and_load_to_the_same_logits(mode, tmp_path):
    model = _adapted("ssmlora", ssm_mode=mode)
    ids = tiny_batch()
    with torch.no_grad():
        before = model(input_ids=ids).logits
    save_adapters(model, tmp_path / "a")
    loaded = load_adapters(tiny_model("modernbert"), tmp_path / "a")
    assert [s.out_slice for s in loaded.adapter_sites] == [s.out_slice for s in model.adapter_sites]
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, before)


def test_two_parts_of_one_fused_projection_are_refused_in_one_line():
    with pytest.raises(ValueError, match="fuses q, k, v in one projection.*not q and v apart"):
        inject_adapters(tiny_model("modernbert"), AdapterConfig(method="lora", targets="qv"))


def test_eager_and_sdpa_attention_agree_with_adapters():
    ids = tiny_batch(seq=40)  # longer than the 16-token local window: the sliding layers differ from global ones
    logits = {}
    for impl in ("eager", "sdpa"):
        model = _adapted("ssmlora")
        model.config._attn_implementation = impl
        with torch.no_grad():
            logits[impl] = model(input_ids=ids).logits
    torch.testing.assert_close(logits["eager"], logits["sdpa"], rtol=1e-4, atol=1e-4)


def _direct_counts(h: int, i: int, layers: int, r: int = 8, labels: int = 2) -> dict:
    """Adapter parameters written out from the layer shapes: Wqkv h->3h, attn.Wo h->h, Wi h->2i, mlp.Wo i->h."""
    lora = layers * r * ((h + 3 * h) + (h + h) + (h + 2 * i) + (i + h))
    ssm = lambda n_in, n_out: r * (n_in + n_out) + 2 * r * r  # noqa: E731  depth/carry: Wa, Wb, Wc, Wd
    ssmlora = layers * (ssm(h, h) + ssm(h, h) + ssm(h, 2 * i) + ssm(i, h)) + ssm(h, labels)
    return {"lora": lora, "ssmlora": ssmlora}


@pytest.mark.parametrize("size, h, i, layers, heads", [("base", 768, 1152, 22, 12), ("large", 1024, 2624, 28, 16)])
def test_parameter_counts_of_modernbert_base_and_large_match_a_direct_count(size, h, i, layers, heads, tmp_path, capsys):
    folder = tmp_path / size  # a config alone: the model is built on the meta device, no weights
    ModernBertConfig(hidden_size=h, intermediate_size=i, num_hidden_layers=layers, num_attention_heads=heads).save_pretrained(folder)
    expected = _direct_counts(h, i, layers)
    table = {row["method"]: row["adapter_params"] for row in parameter_table(str(folder), methods=["lora", "ssmlora"])}
    assert table == expected
    assert params_main(["--model", str(folder)]) == 0
    printed = {row["method"]: row["adapter_params"] for row in map(json.loads, capsys.readouterr().out.splitlines())}
    assert printed["lora"] == expected["lora"] and printed["ssmlora"] == expected["ssmlora"]


def test_saved_modernbert_pools_by_its_mean_and_refuses_lengths_beyond_its_positions(tmp_path):
    folder = save_tiny_backbone(tmp_path / "mb", "modernbert", max_positions=128)
    model, info = load_backbone(str(folder), num_labels=3, reach=128, pooling="mean")
    assert model.config.classifier_pooling == "mean" and info.pooling == "mean" and info.positions == "fixed"
    assert check_backbone(str(folder), 128).native_reach == 128
    with pytest.raises(BackboneError, match="beyond what .* can take: its positions are not absolute"):
        check_backbone(str(folder), 256)
