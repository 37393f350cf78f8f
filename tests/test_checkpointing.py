"""Gradient checkpointing on SSMLoRA models, however it is switched on: Hugging Face's switch (reentrant or not)
or `torch.utils.checkpoint` around one layer gives the gradients of no checkpointing, for every mode and family,
with padded batches and several forward passes before one backward (ssmlora.recompute)."""

import copy
import functools
import warnings

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from ssmlora import AdapterConfig, enable_gradient_checkpointing, inject_adapters
from tiny_models import tiny_batch, tiny_model

FAMILIES = ["bert", "llama", "gpt2"]
MODES = ["depth", "carry", "scan"]
LAYER_LISTS = {"bert": "bert.encoder.layer", "llama": "model.layers", "gpt2": "transformer.h"}
TOLERANCE = 1e-4  # relative to the largest gradient of each parameter


def _model(family, mode, method="ssmlora"):
    model = inject_adapters(tiny_model(family), AdapterConfig(method=method, ssm_mode=mode, dropout=0.0))
    torch.manual_seed(100)
    for name, p in model.named_parameters():  # leave init so that every state term matters
        if p.requires_grad and name.rsplit(".", 1)[-1] in ("Wb", "Wc", "Wd", "decay_logit", "lora_B"):
            p.data.normal_(0, 0.3)
    return model.train()


def _batches(passes):
    """Padded batches of different shapes (right, left and no padding): a recomputed layer must use its own
    forward pass's state and mask, not the latest ones."""
    out = []
    for s in range(passes):
        ids = tiny_batch(3, 12 - s, seed=s)
        mask = torch.ones_like(ids)
        mask[1, 8 - s:] = 0
        mask[2, :3] = 0
        out.append((ids, mask))
    return out


def _grads(model, batches):
    """One backward through the summed losses of several forward passes (R-Drop, pairwise losses)."""
    model.zero_grad(set_to_none=True)
    loss = sum(model(input_ids=ids, attention_mask=mask, labels=ids[:, 0] % 3, use_cache=False).loss
               for ids, mask in batches)
    loss.backward()
    return [(n, p.grad.clone()) for n, p in model.named_parameters() if p.requires_grad]


def _assert_same_grads(expected, got, from_init=False):
    assert len(expected) == len(got) and len(expected) > 0
    for (name, want), (_, have) in zip(expected, got):
        scale = want.abs().max().item()
        # Away from init, only a chain's first Wc (zero state in depth mode) or BERT's one-token head decay may
        # have a zero gradient; at init (Wb = 0) Wa, Wc and Wd do too, and must stay exactly zero.
        assert from_init or scale > 0 or name.endswith(("Wc", "classifier.decay_logit")), name
        assert (have - want).abs().max().item() <= TOLERANCE * scale, name


class _Checkpointed(torch.nn.Module):
    """A layer run under torch.utils.checkpoint, as a user would wrap one by hand."""

    def __init__(self, layer, use_reentrant):
        super().__init__()
        self.layer, self.use_reentrant = layer, use_reentrant

    def forward(self, *args, **kwargs):  # the reentrant form takes tensors positionally only
        return checkpoint(functools.partial(self.layer, **kwargs), *args, use_reentrant=self.use_reentrant)


def _switch_on(model, family, how, use_reentrant):
    if how == "hugging-face":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # transformers 5 renamed the switch; the old name works
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
        assert all(layer.gradient_checkpointing for layer in model.get_submodule(LAYER_LISTS[family]))
    else:  # torch.utils.checkpoint by hand: a layer after an unchecked one, and one after a checkpointed one
        layers = model.get_submodule(LAYER_LISTS[family])
        for i in (1, 2):
            layers[i] = _Checkpointed(layers[i], use_reentrant)


@pytest.mark.parametrize("use_reentrant", [False, True])
@pytest.mark.parametrize("how", ["hugging-face", "torch-around-one-layer"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", FAMILIES)
def test_checkpointing_gives_the_same_gradients(family, mode, how, use_reentrant):
    batches = _batches(2)
    plain, checkpointed = _model(family, mode), _model(family, mode)
    _switch_on(checkpointed, family, how, use_reentrant)
    _assert_same_grads(_grads(plain, batches), _grads(checkpointed, batches))
    if mode == "carry":  # the carried state advanced once per pass, not once more per recomputation
        for key, state in plain.ssm_state.states().items():
            torch.testing.assert_close(checkpointed.ssm_state.states()[key], state, msg=key)


@pytest.mark.parametrize("passes", [1, 3])
def test_more_passes_before_one_backward(passes):
    plain, checkpointed = _model("llama", "carry"), _model("llama", "carry")
    enable_gradient_checkpointing(checkpointed)
    _assert_same_grads(_grads(plain, _batches(passes)), _grads(checkpointed, _batches(passes)))


def test_records_live_as_long_as_the_graph():
    model = _model("bert", "carry")
    enable_gradient_checkpointing(model)
    records = model.ssm_entries._records
    ids, mask = _batches(1)[0]
    loss = model(input_ids=ids, attention_mask=mask, labels=ids[:, 0] % 3).loss
    assert len(records) == 4  # one per layer, held while the graph may recompute it
    loss.backward()
    del loss
    assert not records
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    assert not records  # a pass without a graph leaves nothing behind


class _TwoLayers(torch.nn.Module):
    """Layers i and i+1 recomputed as one block: the second one's input is then a fresh tensor in backward."""

    def __init__(self, first, second):
        super().__init__()
        self.first, self.second = first, second

    def forward(self, hidden, **kwargs):
        block = lambda h: self.second(self.first(h, **kwargs), **kwargs)  # noqa: E731
        return checkpoint(block, hidden, use_reentrant=False)


class _Skip(torch.nn.Module):
    def forward(self, hidden, **kwargs):
        return hidden


def test_a_checkpoint_around_two_layers_fails_in_backward_and_says_what_to_do():
    model = _model("llama", "depth")
    layers = model.model.layers
    layers[1], layers[2] = _TwoLayers(layers[1], layers[2]), _Skip()
    ids, mask = _batches(1)[0]
    loss = model(input_ids=ids, attention_mask=mask, labels=ids[:, 0] % 3, use_cache=False).loss
    with pytest.raises(RuntimeError, match="layer 2 .*Checkpoint whole transformer layers, one per checkpoint"):
        loss.backward()


def test_a_deep_copy_records_its_own_passes():
    model = _model("gpt2", "depth")
    enable_gradient_checkpointing(model)
    ids, mask = _batches(1)[0]
    twin = copy.deepcopy(model)
    assert twin.ssm_entries is not model.ssm_entries and not twin.ssm_entries._records
    _assert_same_grads(_grads(_model("gpt2", "depth"), [(ids, mask)]), _grads(twin, [(ids, mask)]))
    assert not model.ssm_entries._records


def test_lora_is_untouched():
    model = _model("llama", "depth", method="lora")
    assert not hasattr(model, "ssm_entries")
    plain = _model("llama", "depth", method="lora")
    enable_gradient_checkpointing(model)
    _assert_same_grads(_grads(plain, _batches(2)), _grads(model, _batches(2)))


class _GradientLog:
    """A Trainer callback that keeps every trainable gradient just before each optimizer step."""

    def __init__(self):
        from transformers import TrainerCallback

        log = self.steps = []

        class Callback(TrainerCallback):
            def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
                log.append([(n, p.grad.clone()) for n, p in model.named_parameters() if p.requires_grad])

        self.callback = Callback()


def _trainer_run(tmp_path, mode, gradient_checkpointing, use_reentrant):
    from transformers import Trainer, TrainingArguments

    model = inject_adapters(tiny_model("llama"), AdapterConfig(method="ssmlora", ssm_mode=mode, dropout=0.1))
    model.config.use_cache = False
    rows = []
    for ids, mask in _batches(3):  # padded rows of three lengths
        for b in range(ids.shape[0]):
            rows.append({"input_ids": ids[b, :10], "attention_mask": mask[b, :10], "labels": ids[b, 0] % 3})
    args = TrainingArguments(
        output_dir=str(tmp_path / f"gc{int(gradient_checkpointing)}"), per_device_train_batch_size=3, max_steps=3,
        learning_rate=1e-2, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0,
        dataloader_num_workers=0, gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": use_reentrant}, disable_tqdm=True,
    )
    grads = _GradientLog()
    trainer = Trainer(model=model, args=args, train_dataset=rows, callbacks=[grads.callback])
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    on = any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    return losses, grads.steps, on


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing.* is deprecated:FutureWarning")
@pytest.mark.parametrize("mode, use_reentrant", [("depth", False), ("carry", False), ("scan", False),
                                                 ("carry", True)])
def test_trainer_with_gradient_checkpointing_matches_the_run_without(tmp_path, mode, use_reentrant):
    """`transformers.Trainer(gradient_checkpointing=True)`, adapter dropout on: same losses and gradients at
    every step as the same run without checkpointing (the checkpoint replays the dropout masks too)."""
    losses, steps, on = _trainer_run(tmp_path, mode, False, use_reentrant)
    ck_losses, ck_steps, ck_on = _trainer_run(tmp_path, mode, True, use_reentrant)
    assert ck_on and not on
    assert len(losses) == len(ck_losses) == 3 and len(steps) == len(ck_steps) == 3
    assert ck_losses == pytest.approx(losses, rel=1e-5)
    for want, got in zip(steps, ck_steps):
        _assert_same_grads(want, got, from_init=True)
    assert sum(bool(g.abs().max() > 0) for _, g in steps[-1]) > len(steps[-1]) // 2  # the adapters did train
