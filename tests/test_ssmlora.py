"""SSMLoRA against direct implementations of its equations (the paper's and the released code's), its state
chains, its normalisations and its training rules (checkpointing, inference mode, saved state)."""

import pytest
import torch
import torch.nn.functional as F

from ssmlora import (
    AdapterConfig,
    SSMLoRALinear,
    enable_gradient_checkpointing,
    inject_adapters,
    load_adapters,
    reset_ssm_state,
    save_adapters,
)
from tiny_models import LAYERS, tiny_batch, tiny_model

EPS = 1e-6


def reference_step(x, h, Wa, Wb, Wc, Wd, base, scale):
    """The module's equations with the exact min-max normalisation, written out: returns (y, normalised state)."""
    u = x @ Wa
    h_next = h @ Wc + u @ Wd + h
    lo = h_next.min(dim=-1, keepdim=True).values
    hi = h_next.max(dim=-1, keepdim=True).values
    h_norm = (h_next - lo) / (hi - lo + EPS)
    return base(x) + scale * (u + h_norm) @ Wb, h_norm


def _ssm_model(family="llama", mode="depth", seed=0, **kw):
    model = inject_adapters(tiny_model(family, seed=seed), AdapterConfig(method="ssmlora", ssm_mode=mode, dropout=0.0, **kw))
    torch.manual_seed(seed + 100)
    for module in _adapters(model).values():  # leave init so the state terms matter
        for name in ("Wb", "Wc", "Wd"):
            getattr(module, name).data.normal_(0, 0.3)
    return model


def _adapters(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, SSMLoRALinear)}


def _capture(model):
    """Record (input, output) of every adapter during forward passes."""
    records = {}
    for name, module in _adapters(model).items():
        module.register_forward_hook(lambda m, a, out, name=name: records.setdefault(name, []).append((a[0].detach(), out.detach())))
    return records


def _expected_chains(family, mode):
    """Which adapters form which chain, derived from the scheme by hand (not from the library)."""
    layer_prefix = {"llama": "model.layers.{}.", "bert": "bert.encoder.layer.{}."}[family]
    roles = {
        "llama": {"q": "self_attn.q_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
                  "ffn-gate": "mlp.gate_proj", "ffn-in": "mlp.up_proj", "ffn-out": "mlp.down_proj"},
        "bert": {"q": "attention.self.query", "v": "attention.self.value", "o": "attention.output.dense",
                 "ffn-in": "intermediate.dense", "ffn-out": "output.dense"},
    }[family]
    chains = {}
    for role, rel in roles.items():
        layers = [i for i in range(LAYERS) if role not in ("q", "v") or i % 2 == (0 if role == "q" else 1)]
        names = [layer_prefix.format(i) + rel for i in layers]
        if mode == "carry" and role in ("q", "v"):
            chains.update({f"{role}.{i}": [n] for i, n in zip(layers, names)})
        else:
            chains[role] = names
    chains["head"] = ["score" if family == "llama" else "classifier"]
    return chains


@pytest.mark.parametrize("family", ["llama", "bert"])
@pytest.mark.parametrize("mode", ["depth", "carry"])
def test_chains_link_exactly_the_scheme(family, mode):
    model = _ssm_model(family, mode)
    found = {}
    for name, module in _adapters(model).items():
        found.setdefault(module.chain_key, []).append((module.chain_pos, name))
    found = {k: [n for _, n in sorted(v)] for k, v in found.items()}
    assert found == _expected_chains(family, mode)
    if mode == "depth":
        assert found["q"] == [f"{'model.layers' if family == 'llama' else 'bert.encoder.layer'}.{i}.{'self_attn.q_proj' if family == 'llama' else 'attention.self.query'}" for i in (0, 2)]


@pytest.mark.parametrize("family", ["llama", "bert"])
@pytest.mark.parametrize("mode", ["depth", "carry"])
def test_outputs_equal_direct_equations(family, mode):
    model = _ssm_model(family, mode)
    records = _capture(model)
    adapters = _adapters(model)
    ids = tiny_batch(2, 9)
    passes = 2
    with torch.no_grad():
        for _ in range(passes):
            model(input_ids=ids)
    chains = _expected_chains(family, mode)
    state = {}
    for p in range(passes):
        for key, names in chains.items():
            h = None
            for pos, name in enumerate(names):
                m = adapters[name]
                x, y = records[name][p]
                if h is None:  # first link: zero in depth mode, the carried state in carry mode
                    h = state.get(key) if mode == "carry" else None
                    if h is None:
                        h = torch.zeros(*x.shape[:-1], m.r)
                y_ref, h = reference_step(x, h, m.Wa, m.Wb, m.Wc, m.Wd, m.base, m.scaling)
                torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
            state[key] = h


@pytest.mark.parametrize("family", ["llama", "bert", "gpt2", "roberta"])
@pytest.mark.parametrize("method", ["lora", "ssmlora"])
def test_adapted_model_starts_as_frozen_model(family, method):
    ids = tiny_batch()
    frozen = tiny_model(family)(input_ids=ids).logits
    adapted = inject_adapters(tiny_model(family), AdapterConfig(method=method))
    assert torch.equal(adapted(input_ids=ids).logits, frozen)


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_depth_mode_is_deterministic_and_batch_independent(family):
    model = _ssm_model(family, "depth")
    ids = tiny_batch(4, 12)
    with torch.no_grad():
        batched = model(input_ids=ids).logits
        again = model(input_ids=ids).logits
        alone = torch.cat([model(input_ids=ids[i : i + 1]).logits for i in range(4)])
        shuffled = model(input_ids=ids[[2, 0, 3, 1]]).logits
    assert torch.equal(batched, again)
    torch.testing.assert_close(alone, batched, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shuffled, batched[[2, 0, 3, 1]], atol=1e-5, rtol=1e-5)


def test_depth_mode_padded_batch_matches_unpadded_example():
    model = _ssm_model("bert", "depth")
    ids = tiny_batch(2, 12)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask).logits
        alone = model(input_ids=ids[1:, :7]).logits
    torch.testing.assert_close(batched[1:], alone, atol=1e-5, rtol=1e-5)


def test_carry_mode_uses_no_random_numbers_and_resets_explicitly():
    model = _ssm_model("llama", "carry")
    ids = tiny_batch(2, 8)
    rng = torch.get_rng_state()
    with torch.no_grad():
        first = model(input_ids=ids).logits
        second = model(input_ids=ids).logits  # sees the state carried from the first pass
        other_shape = model(input_ids=tiny_batch(3, 5)).logits  # pad/cut, never a random reshape
        reset_ssm_state(model)
        after_reset = model(input_ids=ids).logits
    assert torch.equal(torch.get_rng_state(), rng)
    assert not torch.allclose(first, second)
    assert torch.isfinite(other_shape).all()
    assert torch.equal(after_reset, first)


def test_carry_state_pad_and_cut_are_deterministic():
    results = []
    for _ in range(2):
        model = _ssm_model("llama", "carry")
        with torch.no_grad():
            model(input_ids=tiny_batch(2, 8))
            results.append(model(input_ids=tiny_batch(3, 11)).logits)
            results.append(model(input_ids=tiny_batch(1, 4)).logits)
    assert torch.equal(results[0], results[2]) and torch.equal(results[1], results[3])


def test_carry_state_is_saved_and_loaded(tmp_path):
    model = _ssm_model("llama", "carry")
    ids = tiny_batch(2, 8)
    with torch.no_grad():
        model(input_ids=ids)
        save_adapters(model, tmp_path)
        expected = model(input_ids=ids).logits
    loaded = load_adapters(tiny_model("llama"), tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, expected)


def _summed_grads(model, batches):
    """One backward through the summed losses of several forward passes (R-Drop, pairwise losses)."""
    model.zero_grad(set_to_none=True)
    loss = sum(model(input_ids=ids, labels=ids[:, 0] % 3).loss for ids in batches)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _checkpointing_on(model):
    return any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


@pytest.mark.parametrize("passes", [2, 3])
@pytest.mark.parametrize("mode", ["depth", "carry"])
@pytest.mark.parametrize("family", ["llama", "bert"])
def test_gradient_checkpointing_gives_the_same_gradients(family, mode, passes):
    batches = [tiny_batch(2, 10, seed=s) for s in range(passes)]
    plain = _ssm_model(family, mode).train()
    checkpointed = _ssm_model(family, mode).train()
    enable_gradient_checkpointing(checkpointed)
    assert _checkpointing_on(checkpointed) and not _checkpointing_on(plain)
    expected, got = _summed_grads(plain, batches), _summed_grads(checkpointed, batches)
    assert expected.keys() == got.keys()
    for name, want in expected.items():
        scale = want.abs().max().item()
        assert scale > 0 or name.endswith("Wc"), name  # only a first link's Wc may have seen zero states only
        torch.testing.assert_close(got[name], want, rtol=1e-4, atol=1e-4 * scale, msg=name)
    if mode == "carry":  # the carried state advanced once per pass, not once more per recomputation
        for key, state in plain.ssm_state.states().items():
            torch.testing.assert_close(checkpointed.ssm_state.states()[key], state, msg=key)


def test_checkpointing_without_the_state_tape_fails_loudly():
    model = _ssm_model("llama", "carry").train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})  # no context_fn
    ids = tiny_batch(2, 6)
    loss = model(input_ids=ids, labels=ids[:, 0] % 3).loss
    with pytest.raises(RuntimeError, match="enable_gradient_checkpointing"):
        loss.backward()


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("method, mode", [("lora", "depth"), ("ssmlora", "depth"), ("ssmlora", "carry")])
def test_inference_mode_forward_then_training_steps(method, mode, checkpointing):
    model = inject_adapters(tiny_model("llama"), AdapterConfig(method=method, ssm_mode=mode)).train()
    if checkpointing:
        enable_gradient_checkpointing(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    with torch.inference_mode():  # e.g. a validation pass between training steps
        model(input_ids=tiny_batch(3, 7))
    for step in range(3):
        ids = tiny_batch(2, 8, seed=step)
        model(input_ids=ids, labels=ids[:, 0] % 3).loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params), step
        opt.step()
        opt.zero_grad()
        with torch.inference_mode():
            model(input_ids=ids)


@pytest.mark.parametrize("method", ["lora", "ssmlora"])
def test_bf16_autocast_training_stays_finite(method):
    model = inject_adapters(tiny_model("llama"), AdapterConfig(method=method)).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(20):
        ids = tiny_batch(4, 16, seed=step)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids[:, 0] % 3).loss
        assert torch.isfinite(loss), step
        loss.backward()
        for name, p in model.named_parameters():
            if p.requires_grad:
                assert torch.isfinite(p.grad).all(), (step, name)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()


def test_normalisation_is_float32_and_finite_on_a_flat_state():
    layer = SSMLoRALinear(torch.nn.Linear(8, 8), r=4, scaling=2.0)
    x = torch.ones(2, 3, 8, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x.float())
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("mode", ["depth", "carry"])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_every_trainable_parameter_gets_a_gradient_every_step(family, mode):
    model = inject_adapters(tiny_model(family), AdapterConfig(method="ssmlora", ssm_mode=mode)).train()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    first_links = {f"{n}.Wc" for n, m in _adapters(model).items() if m.chain_pos == 0}
    opt = torch.optim.AdamW(params.values(), lr=1e-2)
    for step in range(4):
        opt.zero_grad(set_to_none=True)
        ids = tiny_batch(2, 8, seed=step)
        model(input_ids=ids, labels=ids[:, 0] % 3).loss.backward()
        assert all(p.grad is not None for p in params.values()), step  # DDP needs no find_unused_parameters
        zero = {n for n, p in params.items() if p.grad.abs().max() == 0}
        if step == 2:
            # After two optimizer steps only the documented exceptions are still zero: Wc of a chain's first
            # link has only ever seen a zero state (in carry mode that state was made while Wd was still 0).
            assert zero == first_links
        if step == 3:
            assert zero == (first_links if mode == "depth" else set())
        opt.step()
