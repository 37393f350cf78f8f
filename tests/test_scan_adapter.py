"""SSMLoRA's ``scan`` mode in a model: the adapter layer against a per-token loop written out here, padding,
direction per family, and the rules every mode keeps (init, gradients, saving, bf16, 32K)."""

import pytest
import torch
import torch.nn.functional as F

from ssmlora import AdapterConfig, enable_gradient_checkpointing, inject_adapters, load_adapters, save_adapters
from ssmlora.arch import FAMILIES, Family
from ssmlora.config import ConfigValueError
from ssmlora.inject import count_parameters
from ssmlora.scan import ScanLoRALinear, SequenceMask
from tiny_models import assert_bf16_steps_finite, tiny_batch, tiny_model

EPS = 1e-6


def _scan_model(family="llama", seed=0, **kw):
    model = inject_adapters(tiny_model(family, seed=seed),
                            AdapterConfig(method="ssmlora", ssm_mode="scan", dropout=0.0, **kw))
    torch.manual_seed(seed + 100)
    for module in _adapters(model).values():  # leave init so that the state term matters
        module.Wb.data.normal_(0, 0.3)
        module.Wd.data.normal_(0, 0.3)
        module.decay_logit.data.normal_(0, 2.0)
    return model


def _adapters(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, ScanLoRALinear)}


def naive_adapter(m, x, mask, direction):
    """The layer's equations token by token: h_t = a h_{t-1} + u_t Wd over real tokens only; the layer's norm."""
    x = x.double()
    seq = x if x.dim() == 3 else x[:, None]
    real = torch.ones(seq.shape[:2], dtype=torch.bool) if mask is None or x.dim() == 2 else mask.bool()
    u = seq @ m.Wa.double()
    v = u @ m.Wd.double()
    a = torch.exp(-F.softplus(m.decay_logit.double()))
    h = torch.zeros_like(v)
    for b in range(v.shape[0]):
        orders = [range(v.shape[1])] + ([reversed(range(v.shape[1]))] if direction == "bidirectional" else [])
        for order in orders:
            state = torch.zeros(v.shape[-1], dtype=torch.float64)
            for t in order:
                if real[b, t]:
                    state = a * state + v[b, t]
                    h[b, t] += state
    lo, hi = h.min(-1, keepdim=True).values, h.max(-1, keepdim=True).values
    h_norm = (h - lo) / (hi - lo + EPS) if m.norm == "minmax" else (h - lo) / torch.sqrt((hi - lo) ** 2 + 1)
    delta = m.scaling * (u + h_norm) @ m.Wb.double()  # the adapter's term; W0 x is the frozen layer's
    return delta if x.dim() == 3 else delta[:, 0]


def _padded_batch(lengths, total, side):
    ids = tiny_batch(len(lengths), total, seed=7)
    mask = torch.zeros_like(ids)
    for b, n in enumerate(lengths):
        left = side == "left" or (side == "mixed" and b % 2)
        mask[b, total - n:] = 1 if left else 0
        if not left:
            mask[b, :n] = 1
    return ids.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize("family, direction", [("llama", "causal"), ("bert", "bidirectional"),
                                               ("llama", "bidirectional"), ("bert", "causal")])
@pytest.mark.parametrize("side", ["right", "left", "mixed"])
@pytest.mark.parametrize("norm", ["smooth", "minmax"])
def test_every_adapter_equals_a_per_token_loop(family, direction, side, norm):
    model = _scan_model(family, scan_direction=direction, norm=norm)
    ids, mask = _padded_batch([13, 5, 9, 1], 13, side)
    records = {}
    for name, m in _adapters(model).items():
        m.register_forward_hook(lambda mod, args, out, name=name: records.__setitem__(name, (args[0], out)))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    assert len(records) == len(_adapters(model))
    for name, m in _adapters(model).items():
        x, out = records[name]
        want = naive_adapter(m, x, mask, direction)
        with torch.no_grad():
            got = (out - m.base(x)).double()
        real = mask.bool() if x.dim() == 3 else torch.ones(x.shape[0], dtype=torch.bool)
        scale = want[real].abs().max().item()  # 1e-5 relative to the adapter's own output
        assert scale > 1e-2, name
        torch.testing.assert_close(got[real], want[real], atol=1e-5 * scale, rtol=1e-5, msg=name)


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_a_sequence_scores_the_same_alone_and_in_a_padded_batch(family):
    model = _scan_model(family)
    ids, mask = _padded_batch([11, 4, 8], 11, "right")  # right: absolute positions stay those of the sequence
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask).logits
        alone = torch.cat([model(input_ids=ids[b:b + 1, :n]).logits for b, n in enumerate([11, 4, 8])])
        shuffled = model(input_ids=ids[[2, 0, 1]], attention_mask=mask[[2, 0, 1]]).logits
    torch.testing.assert_close(alone, batched, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shuffled, batched[[2, 0, 1]], atol=1e-5, rtol=1e-5)


def test_pad_tokens_change_nothing_at_real_positions():
    model = _scan_model("bert")
    ids, mask = _padded_batch([9, 5], 9, "right")
    other = ids.clone()
    other[mask == 0] = 77  # whatever sits at the pads
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask).logits
        b = model(input_ids=other, attention_mask=mask).logits
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("family", ["llama", "bert", "gpt2", "roberta"])
def test_scan_model_starts_as_the_frozen_model(family):
    ids, mask = _padded_batch([10, 6], 10, "right")
    frozen = tiny_model(family)(input_ids=ids, attention_mask=mask).logits
    adapted = inject_adapters(tiny_model(family), AdapterConfig(method="ssmlora", ssm_mode="scan"))
    assert torch.equal(adapted(input_ids=ids, attention_mask=mask).logits, frozen)


def test_direction_follows_the_family_and_can_be_overridden():
    assert {m.direction for m in _adapters(_scan_model("llama")).values()} == {"causal"}
    assert {m.direction for m in _adapters(_scan_model("gpt2")).values()} == {"causal"}
    assert {m.direction for m in _adapters(_scan_model("bert")).values()} == {"bidirectional"}
    assert {m.direction for m in _adapters(_scan_model("llama", scan_direction="bidirectional")).values()} == {
        "bidirectional"}


def test_causal_scan_reads_no_later_token():
    model = _scan_model("llama")
    ids = tiny_batch(1, 12)
    later = ids.clone()
    later[0, 8:] = 5
    outs = []
    for batch in (ids, later):
        records = {}
        for name, m in _adapters(model).items():
            m._forward_hooks.clear()
            m.register_forward_hook(lambda mod, args, out, name=name: records.__setitem__(name, out))
        with torch.no_grad():
            model(input_ids=batch)
        outs.append(records)
    for name in outs[0]:
        if outs[0][name].dim() == 3:
            torch.testing.assert_close(outs[0][name][:, :8], outs[1][name][:, :8], msg=name)


def test_undecidable_family_and_unknown_direction_are_errors(monkeypatch):
    monkeypatch.setitem(FAMILIES, "llama", Family("llama", FAMILIES["llama"].roles, heads=("score",)))
    with pytest.raises(ValueError, match="scan_direction auto cannot tell whether 'llama'.*causal or bidirectional"):
        inject_adapters(tiny_model("llama"), AdapterConfig(method="ssmlora", ssm_mode="scan"))
    inject_adapters(tiny_model("llama"), AdapterConfig(method="ssmlora", ssm_mode="scan", scan_direction="causal"))
    with pytest.raises(ConfigValueError, match="scan_direction = 'backward'.*auto, causal, bidirectional"):
        AdapterConfig(method="ssmlora", ssm_mode="scan", scan_direction="backward")


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_parameter_count_follows_the_equation(family):
    model = inject_adapters(tiny_model(family), AdapterConfig(method="ssmlora", ssm_mode="scan", r=4))
    per = [m.r * (m.in_features + m.out_features) + m.r ** 2 + m.r for m in _adapters(model).values()]
    assert count_parameters(model)["adapter_params"] == sum(per)
    depth = inject_adapters(tiny_model(family), AdapterConfig(method="ssmlora", ssm_mode="depth", r=4))
    assert len(per) == len([m for m in depth.modules() if hasattr(m, "Wc")])  # same sites as the other modes


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_every_trainable_parameter_gets_a_gradient_every_step(family):
    model = inject_adapters(tiny_model(family), AdapterConfig(method="ssmlora", ssm_mode="scan")).train()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW(params.values(), lr=1e-2)
    for step in range(4):
        opt.zero_grad(set_to_none=True)
        ids, mask = _padded_batch([8, 6], 8, "right")
        model(input_ids=ids, attention_mask=mask, labels=ids[:, 0] % 3).loss.backward()
        assert all(p.grad is not None for p in params.values()), step  # DDP needs no find_unused_parameters
        zero = {n for n, p in params.items() if p.grad.abs().max() == 0}
        if step == 3:
            # BERT's head adapter reads one pooled vector per sequence: one token, so its decay never acts
            assert zero == ({"classifier.decay_logit"} if family == "bert" else set())
        opt.step()


def test_save_and_load_round_trip(tmp_path):
    model = _scan_model("llama")
    ids, mask = _padded_batch([9, 4], 9, "mixed")
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
    save_adapters(model, tmp_path)
    loaded = load_adapters(tiny_model("llama"), tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids, attention_mask=mask).logits, expected)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_inference_mode_forward_then_training_steps(checkpointing):
    model = inject_adapters(tiny_model("llama"), AdapterConfig(method="ssmlora", ssm_mode="scan")).train()
    if checkpointing:
        enable_gradient_checkpointing(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    with torch.inference_mode():
        model(input_ids=tiny_batch(3, 7), attention_mask=torch.ones(3, 7, dtype=torch.long))
    for step in range(3):
        ids, mask = _padded_batch([8, 5], 8, "right")
        model(input_ids=ids, attention_mask=mask, labels=ids[:, 0] % 3).loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params), step
        opt.step()
        opt.zero_grad()
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=mask)


def test_bf16_autocast_training_stays_finite():
    model = inject_adapters(tiny_model("llama"), AdapterConfig(method="ssmlora", ssm_mode="scan")).train()
    assert_bf16_steps_finite(model, (_padded_batch([16, 16 - step % 8, 9, 12], 16, "right") for step in range(20)))


class _Stack(torch.nn.Module):
    """Two adapted projections with a residual: the scan part of a model, without attention (whose CPU cost at
    32K tokens is not what this checks)."""

    def __init__(self, width=32, direction="causal"):
        super().__init__()
        torch.manual_seed(0)
        self.layers = torch.nn.ModuleList(ScanLoRALinear(torch.nn.Linear(width, width), r=8, scaling=2.0)
                                          for _ in range(2))
        SequenceMask.install(self)
        for layer in self.layers:
            layer.attach(self, direction)
            layer.Wb.data.normal_(0, 0.3)
            layer.Wd.data.normal_(0, 0.3)

    def forward(self, x, attention_mask=None):
        for layer in self.layers:
            x = x + layer(x)
        return x


@pytest.mark.parametrize("direction", ["causal", "bidirectional"])
def test_32k_tokens_under_bf16_autocast_stay_finite(direction):
    stack = _Stack(direction=direction)
    x = torch.randn(2, 32768, 32)
    mask = torch.ones(2, 32768, dtype=torch.long)
    mask[1, 30000:] = 0  # and a padded row, so the pad-skipping path runs at full length too
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = stack(x, attention_mask=mask)
    assert torch.isfinite(out).all()
    out.float().square().mean().backward()
    for name, p in stack.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
