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
from tiny_models import LAYERS, assert_bf16_steps_finite, tiny_batch, tiny_model

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
    kw.setdefault("norm", "minmax")  # the reference equations above; the smooth map has tests of its own
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
    assert_bf16_steps_finite(model, ((tiny_batch(4, 16, seed=step), None) for step in range(20)))


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


# --- normalisation ------------------------------------------------------------------------------------------


def _gradient_ratio(family, mode, norm, sigma=0.02):
    """At init (Wc = Wd = 0, so every state is flat) with Wb ~ N(0, sigma): the largest |gradient| of one kind
    of adapter matrix over the largest |gradient| of every other kind."""
    model = inject_adapters(tiny_model(family), AdapterConfig(method="ssmlora", ssm_mode=mode, dropout=0.0, norm=norm))
    torch.manual_seed(5)
    for module in _adapters(model).values():
        module.Wb.data.normal_(0, sigma)
    ids = tiny_batch(4, 12)
    model.train()(input_ids=ids, labels=ids[:, 0] % 3).loss.backward()
    peaks = {}
    for name, p in model.named_parameters():
        kind = name.rsplit(".", 1)[-1]
        if kind in SSMLoRALinear.adapter_param_names:
            peaks[kind] = max(peaks.get(kind, 0.0), p.grad.abs().max().item())
    return max(peak / max(v for k, v in peaks.items() if k != kind) for kind, peak in peaks.items())


@pytest.mark.parametrize("mode", ["depth", "carry"])
@pytest.mark.parametrize("family", ["llama", "bert"])
def test_smooth_norm_keeps_adapter_gradients_in_proportion_at_init(family, mode):
    assert _gradient_ratio(family, mode, "smooth") < 100
    assert _gradient_ratio(family, mode, "minmax") > 1e3  # the exact map's 1/eps at a flat state


def test_norm_default_is_the_smooth_map():
    from ssmlora.config import NORMS
    from ssmlora.ssm import NORMS as LAYER_NORMS

    assert NORMS == LAYER_NORMS
    assert AdapterConfig().norm == "smooth" and AdapterConfig.released_code().norm == "minmax"
    assert AdapterConfig(method="ssmlora", norm="minmax").norm == "minmax"
    with pytest.raises(ValueError, match="norm = .* is not allowed: choose one of minmax, smooth"):
        AdapterConfig(norm="layer")


@pytest.mark.parametrize("mode", ["depth", "carry"])
def test_smooth_norm_outputs_equal_its_equation(mode):
    model = _ssm_model("bert", mode, norm="smooth")
    records, adapters = _capture(model), _adapters(model)
    with torch.no_grad():
        for _ in range(2):
            model(input_ids=tiny_batch(2, 9))
    state = {}
    for p in range(2):
        for key, names in _expected_chains("bert", mode).items():
            h = state.get(key) if mode == "carry" else None
            for name in names:
                m = adapters[name]
                x, y = records[name][p]
                if h is None:
                    h = torch.zeros(*x.shape[:-1], m.r)
                u = x @ m.Wa
                h_next = h @ m.Wc + u @ m.Wd + h
                spread = h_next.max(-1, keepdim=True).values - h_next.min(-1, keepdim=True).values
                h = (h_next - h_next.min(-1, keepdim=True).values) / torch.hypot(spread, torch.ones_like(spread))
                assert h.min() >= 0 and h.max() < 1
                torch.testing.assert_close(y, m.base(x) + m.scaling * (u + h) @ m.Wb, atol=1e-5, rtol=1e-5)
            state[key] = h


# --- the released code's configuration, against an independent re-implementation ---------------------------

RELEASED_ALPHA, RELEASED_EPS, RELEASED_P = 16.0, 1e-8, 0.1
SHAPES = [(2, 8), (3, 11), (1, 4), (2, 8)]  # grow (pad), shrink (cut), back


def _released_model(seed=0):
    model = inject_adapters(tiny_model("llama", seed=seed), AdapterConfig.released_code())
    torch.manual_seed(seed + 100)
    for module in _adapters(model).values():
        module.Wb.data.normal_(0, 0.3)
        module.Wc.data.normal_(0, 0.3)
        # a tiny Wd makes the first state's range ~1e-5, where eps = 1e-8 and 1e-6 differ by ~10 %
        module.Wd.data.normal_(0, 1e-6)
    return model


def released_fit(h, shape):
    """Carry a state into a batch of another shape: F.pad with negative pads cuts, so this zero-pads or cuts
    at the end of the batch and length dims."""
    return F.pad(h, (0, 0, 0, shape[1] - h.shape[1], 0, shape[0] - h.shape[0]))


def released_step(x, h, m):
    """The released layer: alpha scale, exact min-max with eps 1e-8; returns (y, state without dropout)."""
    u = x @ m.Wa
    h_next = h @ m.Wc + u @ m.Wd + h
    lo, hi = h_next.min(-1, keepdim=True).values, h_next.max(-1, keepdim=True).values
    h_norm = (h_next - lo) / (hi - lo + RELEASED_EPS)
    return m.base(x) + RELEASED_ALPHA * (u + h_norm) @ m.Wb, h_norm


def _released_chain_inputs(adapters, records, passes):
    """(name, adapter, input, output, incoming state) of every recorded adapter call, in chain order, with the
    state the released code would carry into it (its pad/cut rule across passes of other shapes)."""
    state = {}
    for p in range(passes):
        for key, names in _expected_chains("llama", "carry").items():
            h = None
            for name in names:
                m = adapters[name]
                x, y = records[name][p]
                if h is None:
                    h = released_fit(state.get(key, torch.zeros(*x.shape[:-1], m.r)), x.shape[:-1])
                yield name, m, x, y, h
                _, h = released_step(x, h, m)
            state[key] = h


def _carry_reference_error(model, shapes=SHAPES):
    """Largest |library - reference| over every adapter output of `len(shapes)` eval-mode passes."""
    records, adapters = _capture(model), _adapters(model)
    with torch.no_grad():
        for i, (b, l) in enumerate(shapes):
            model(input_ids=tiny_batch(b, l, seed=i))
    worst = 0.0
    for name, m, x, y, h in _released_chain_inputs(adapters, records, len(shapes)):
        y_ref, _ = released_step(x, h, m)
        worst = max(worst, (y - y_ref).abs().max().item())
    return worst


def test_released_code_preset_fields():
    cfg = AdapterConfig.released_code()
    assert (cfg.method, cfg.ssm_mode, cfg.scale, cfg.eps, cfg.norm, cfg.dropout, cfg.train_head) == (
        "ssmlora", "carry", "alpha", 1e-8, "minmax", 0.1, False
    )
    assert AdapterConfig.released_code(r=4).r == 4
    model = _released_model()
    assert all(m.scaling == RELEASED_ALPHA for m in _adapters(model).values())
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith("score.base"))


def test_released_code_preset_equals_the_released_equations():
    assert _carry_reference_error(_released_model()) < 1e-5


def _mutant_pad_half(state, like):
    out = torch.full(like.shape, 0.5, dtype=state.dtype)
    common = tuple(slice(0, min(a, b)) for a, b in zip(state.shape, like.shape))
    out[common] = state[common]
    return out


def _mutant_cut_front(state, like):
    out = torch.zeros(like.shape, dtype=state.dtype)
    n = [min(a, b) for a, b in zip(state.shape, like.shape)]
    out[tuple(slice(0, k) for k in n)] = state[tuple(slice(a - k, a) for a, k in zip(state.shape, n))]
    return out


def _mutant_random_reshape(state, like):
    flat = state.flatten()[torch.randperm(state.numel())]
    return torch.cat([flat, torch.zeros(max(0, like.numel() - flat.numel()))])[: like.numel()].reshape(like.shape)


@pytest.mark.parametrize("mutant", [_mutant_pad_half, _mutant_cut_front, _mutant_random_reshape])
def test_carry_reference_catches_wrong_pad_and_cut(monkeypatch, mutant):
    import ssmlora.ssm

    model = _released_model()
    monkeypatch.setattr(ssmlora.ssm, "fit_to", lambda state, like: state if state.shape == like.shape else mutant(state, like))
    assert _carry_reference_error(model) > 1e-3


def test_released_code_dropout_is_on_the_state_term_only():
    """Train mode: recover each adapter's dropped state term from its output and check it against the
    reference state, element by element: either 0 or state / (1 - p); the carried state is never dropped."""
    model = _released_model().train()
    records, adapters = _capture(model), _adapters(model)
    with torch.no_grad():
        for i, (b, l) in enumerate(SHAPES[:2]):
            model(input_ids=tiny_batch(b, l, seed=i))
    dropped, total = 0, 0
    for name, m, x, y, h in _released_chain_inputs(adapters, records, 2):
        _, h_next = released_step(x, h, m)
        if m.out_features >= m.r:  # Wb has full column rank: the state term is recoverable
            u = x @ m.Wa
            target = ((y - m.base(x)) / RELEASED_ALPHA - u @ m.Wb).reshape(-1, m.out_features)
            term = torch.linalg.lstsq(m.Wb.t(), target.t()).solution.t().reshape(h_next.shape)
            kept = (term - h_next / (1 - RELEASED_P)).abs() < 1e-3
            zero = term.abs() < 1e-3
            assert (kept | zero).all(), name
            live = h_next > 0.05
            dropped += (zero & live).sum().item()
            total += live.sum().item()
    assert total > 1000 and abs(dropped / total - RELEASED_P) < 0.03


# --- the saved state is the scored state --------------------------------------------------------------------


def _score(model, batches):
    with torch.no_grad():
        return [model(input_ids=ids).logits for ids in batches]


def test_saved_snapshot_reproduces_the_scores(tmp_path):
    from ssmlora.serialization import load_ssm_state, ssm_state_snapshot

    model = inject_adapters(tiny_model("llama"), AdapterConfig(method="ssmlora", ssm_mode="carry")).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(3):
        ids = tiny_batch(2, 9, seed=step)
        model(input_ids=ids, labels=ids[:, 0] % 3).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    snapshot = ssm_state_snapshot(model)
    assert snapshot and all(v.abs().sum() > 0 for v in snapshot.values())
    batches = [tiny_batch(3, 7, seed=10), tiny_batch(2, 12, seed=11)]
    scored = _score(model, batches)  # advances the carried state
    save_adapters(model, tmp_path / "scored", ssm_state=snapshot)
    save_adapters(model, tmp_path / "live")  # the state after scoring: not the one that produced the scores

    fresh = load_adapters(tiny_model("llama"), tmp_path / "scored")
    for got, want in zip(_score(fresh, batches), scored):
        assert torch.equal(got, want)
    live = load_adapters(tiny_model("llama"), tmp_path / "live")
    assert not torch.allclose(_score(live, batches)[0], scored[0])
    # in memory as well, and loading replaces whatever state the model holds
    load_ssm_state(model, snapshot)
    for got, want in zip(_score(model, batches), scored):
        assert torch.equal(got, want)
    load_adapters(live, tmp_path / "scored")
    assert torch.equal(_score(live, batches)[0], scored[0])


def test_snapshot_is_empty_outside_carry_mode():
    from ssmlora.serialization import load_ssm_state, ssm_state_snapshot

    model = _ssm_model("llama", "depth")
    with torch.no_grad():
        model(input_ids=tiny_batch())
    assert ssm_state_snapshot(model) == {}
    with pytest.raises(ValueError, match="carries no SSMLoRA state"):
        load_ssm_state(model, {"o": torch.zeros(1, 1, 8)})
