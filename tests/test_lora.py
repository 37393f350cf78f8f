"""LoRA against PEFT's LoRA: same weights in, same outputs and gradients out; merging."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from ssmlora import AdapterConfig, LoRALinear, inject_adapters, merge_adapters
from tiny_models import tiny_batch, tiny_model

# PEFT target patterns covering exactly the `lora` scheme (q, k, v, o and every FFN matrix, every layer)
PEFT_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "bert": r".*layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)",
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}
HEAD = {"llama": "score", "bert": "classifier", "gpt2": "score"}


def _pair(family: str, r: int = 4, alpha: float = 8.0, dropout: float = 0.0):
    ours = inject_adapters(tiny_model(family), AdapterConfig(method="lora", r=r, alpha=alpha, dropout=dropout))
    peft_cfg = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=PEFT_TARGETS[family],
        modules_to_save=[HEAD[family]], fan_in_fan_out=family == "gpt2",
    )
    theirs = get_peft_model(tiny_model(family), peft_cfg)
    # Non-zero B everywhere, copied into both, so the comparison exercises the update, not just W0.
    torch.manual_seed(7)
    adapters = {n: m for n, m in ours.named_modules() if isinstance(m, LoRALinear)}
    for name, module in adapters.items():
        module.lora_B.data.normal_(0, 0.1)
        peft_layer = theirs.base_model.model.get_submodule(name)
        peft_layer.lora_A["default"].weight.data.copy_(module.lora_A.data)
        peft_layer.lora_B["default"].weight.data.copy_(module.lora_B.data)
    head_src = ours.get_submodule(HEAD[family])
    theirs.base_model.model.get_submodule(HEAD[family]).modules_to_save["default"].load_state_dict(head_src.state_dict())
    return ours, theirs, adapters


def _relative_to_update(ours, theirs, frozen):
    """|ours - theirs| measured against the adapters' own contribution to the logits, not the logits: on BERT
    the update is a small part of the logits, so a plain tolerance would hide a wrong update."""
    return ((ours - theirs).abs().max() / (theirs - frozen).abs().max()).item()


def _assert_same_gradients(adapters, theirs):
    for name, module in adapters.items():
        peft_layer = theirs.base_model.model.get_submodule(name)
        for mine, peft in ((module.lora_A, peft_layer.lora_A["default"]), (module.lora_B, peft_layer.lora_B["default"])):
            torch.testing.assert_close(mine.grad, peft.weight.grad, atol=1e-4 * peft.weight.grad.abs().max(), rtol=1e-4)


@pytest.mark.parametrize("family", ["llama", "bert", "gpt2"])
def test_lora_matches_peft_outputs_and_gradients(family):
    ours, theirs, adapters = _pair(family)
    assert len(adapters) == 4 * (7 if family == "llama" else 6 if family == "bert" else 4)
    ids = tiny_batch()
    labels = torch.tensor([0, 2])
    with torch.no_grad():
        frozen = tiny_model(family)(input_ids=ids).logits
    out_ours = ours(input_ids=ids, labels=labels)
    out_theirs = theirs(input_ids=ids, labels=labels)
    assert _relative_to_update(out_ours.logits, out_theirs.logits, frozen) < 1e-4
    out_ours.loss.backward()
    out_theirs.loss.backward()
    _assert_same_gradients(adapters, theirs)
    assert sum(p.numel() for p in ours.parameters() if p.requires_grad) == sum(
        p.numel() for p in theirs.parameters() if p.requires_grad
    )
    # the comparison is sensitive: a 1 % error in the update's scale fails it
    for module in adapters.values():
        module.scaling *= 1.01
    with torch.no_grad():
        assert _relative_to_update(ours(input_ids=ids).logits, out_theirs.logits, frozen) > 1e-3


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_lora_matches_peft_with_dropout(family):
    ours, theirs, adapters = _pair(family, dropout=0.3)
    ours.eval()
    theirs.eval()  # get_peft_model leaves the model in train mode
    ids, labels = tiny_batch(), torch.tensor([0, 2])
    with torch.no_grad():
        frozen = tiny_model(family)(input_ids=ids).logits
        # eval: dropout off on both sides
        assert _relative_to_update(ours(input_ids=ids).logits, theirs(input_ids=ids).logits, frozen) < 1e-4
    # train: our CPU MaskDropout draws its mask differently from nn.Dropout (same distribution; see
    # test_cpu_mask_dropout_is_dropout_with_a_one_byte_saved_mask), so give ours PEFT's own dropout module:
    # same seed, same draws in the same order, hence identical masks, and the wiring must then agree exactly
    for module in adapters.values():
        assert module.dropout.p == 0.3
        module.dropout = torch.nn.Dropout(0.3)
    ours.train()
    theirs.train()
    torch.manual_seed(11)
    out_ours = ours(input_ids=ids, labels=labels)
    torch.manual_seed(11)
    out_theirs = theirs(input_ids=ids, labels=labels)
    torch.manual_seed(12)
    other_masks = theirs(input_ids=ids).logits
    assert _relative_to_update(out_ours.logits, out_theirs.logits, frozen) < 1e-4
    assert _relative_to_update(other_masks, out_theirs.logits, frozen) > 1e-2  # dropout is really on
    out_ours.loss.backward()
    out_theirs.loss.backward()
    _assert_same_gradients(adapters, theirs)


@pytest.mark.parametrize("family", ["llama", "bert", "gpt2"])
def test_merge_gives_same_outputs_without_wrappers(family):
    ours, _, adapters = _pair(family)
    ids = tiny_batch()
    before = ours(input_ids=ids).logits
    merge_adapters(ours)
    assert not any(isinstance(m, LoRALinear) for m in ours.modules())
    torch.testing.assert_close(ours(input_ids=ids).logits, before, atol=1e-5, rtol=1e-5)


def test_merge_refuses_ssmlora():
    model = inject_adapters(tiny_model("llama"), AdapterConfig(method="ssmlora"))
    with pytest.raises(ValueError, match="cannot be merged"):
        merge_adapters(model)


def test_lora_dropout_only_touches_the_adapter_path():
    model = inject_adapters(tiny_model("bert"), AdapterConfig(method="lora", dropout=0.5))
    model.train()
    ids = tiny_batch()
    # B = 0 at init: dropout on the adapter input cannot change the output
    reference = tiny_model("bert").train()
    torch.manual_seed(0)
    a = model(input_ids=ids).logits
    torch.manual_seed(0)
    b = reference(input_ids=ids).logits
    torch.testing.assert_close(a, b)


def test_alpha_scale_matches_released_code():
    lora = inject_adapters(tiny_model("llama"), AdapterConfig(method="lora", r=4, alpha=16, scale="alpha"))
    assert all(m.scaling == 16 for m in lora.modules() if isinstance(m, LoRALinear))
    lora = inject_adapters(tiny_model("llama"), AdapterConfig(method="lora", r=4, alpha=16))
    assert all(m.scaling == 4 for m in lora.modules() if isinstance(m, LoRALinear))


def test_cpu_mask_dropout_is_dropout_with_a_one_byte_saved_mask():
    from ssmlora.lora import MaskDropout

    drop = MaskDropout(0.25).train()
    x = torch.randn(400, 300, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.dtype) or t, lambda t: t):
        y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.01  # 120k draws: 4 sigma is 0.005
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.75)
    assert saved == [torch.bool]  # F.dropout on the CPU keeps a float32 noise tensor instead
    torch.manual_seed(3)
    a = drop(x)
    torch.manual_seed(3)
    assert torch.equal(a, drop(x))
    assert torch.equal(drop.eval()(x), x)
