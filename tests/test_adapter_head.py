"""The classifier head: a head projection that carries an adapter is frozen (only its adapter trains), the rest of
the head follows `train_head`; parameter counts keep adapter matrices and head weights apart."""

import pytest
import torch

from ssmlora import AdapterConfig, count_parameters, inject_adapters, load_adapters, save_adapters
from tiny_models import HIDDEN, LABELS, tiny_batch, tiny_model

H = HIDDEN
HEAD = {"llama": "score", "bert": "classifier", "roberta": "classifier.out_proj"}
# trainable weights of the whole head module when it trains fully
FULL_HEAD = {"llama": H * LABELS, "bert": H * LABELS + LABELS, "roberta": H * H + H + H * LABELS + LABELS}
RANK = 8


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("family", ["llama", "bert", "roberta"])
def test_adapted_head_projection_is_frozen_and_adapted(family):
    model = inject_adapters(tiny_model(family), AdapterConfig(method="ssmlora", r=RANK)).train()
    head = HEAD[family]
    trainable = _trainable(model)
    assert not any(n.startswith(f"{head}.base.") for n in trainable)
    assert {f"{head}.{w}" for w in ("Wa", "Wb", "Wc", "Wd")} <= trainable
    counts = count_parameters(model)
    base = model.get_submodule(head).base
    head_adapter = RANK * (base.in_features + base.out_features) + 2 * RANK * RANK
    assert sum(p.numel() for n, p in model.named_parameters() if n.startswith(f"{head}.W")) == head_adapter
    # RoBERTa's classifier.dense carries no adapter: it still trains (train_head); the adapted out_proj does not
    assert counts["head_params"] == (H * H + H if family == "roberta" else 0)
    if family == "roberta":
        assert {"classifier.dense.weight", "classifier.dense.bias"} <= trainable

    base_before = base.weight.detach().clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for module in model.modules():  # Wb != 0 so that Wa receives a gradient too
        if hasattr(module, "Wb"):
            module.Wb.data.normal_(0, 0.1)
    wa_before = model.get_submodule(head).Wa.detach().clone()
    ids = tiny_batch()
    model(input_ids=ids, labels=ids[:, 0] % 3).loss.backward()
    opt.step()
    assert torch.equal(base.weight, base_before)
    assert not torch.equal(model.get_submodule(head).Wa, wa_before)


@pytest.mark.parametrize("train_head", [True, False])
def test_unadapted_head_follows_train_head(train_head):
    model = inject_adapters(tiny_model("bert"), AdapterConfig(method="lora", train_head=train_head))
    assert count_parameters(model)["head_params"] == (FULL_HEAD["bert"] if train_head else 0)


def test_frozen_adapted_head_round_trips(tmp_path):
    cfg = AdapterConfig(method="ssmlora")
    model = inject_adapters(tiny_model("roberta"), cfg)
    for module in model.modules():
        if hasattr(module, "Wb"):
            module.Wb.data.normal_(0, 0.1)
    save_adapters(model, tmp_path)
    loaded = load_adapters(tiny_model("roberta"), tmp_path)
    assert loaded.adapter_config == cfg
    ids = tiny_batch()
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
