"""ssmlora.lab.memory: sizes, counted activations, analytic state, phase peaks, scaling exponents, frontier."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, BertConfig

from ssmlora.lab import frontier
from ssmlora.lab.frontier import budget_check, find_frontier, fit_counted, predict_from_counted, predict_fit_len
from ssmlora.lab.memory import (
    MiB,
    SavedActivationCounter,
    activation_scaling,
    fit_exponent,
    fit_power_law,
    measure_activations,
    memory_decomposition,
    parse_size,
    synthetic_batch,
)

GiB = 2**30


# ------------------------------------------------------------------------------------------ sizes

@pytest.mark.parametrize("text, expected", [
    ("8GB", 8 * GiB), ("8 GiB", 8 * GiB), ("8g", 8 * GiB), ("8Gi", 8 * GiB), ("8192MiB", 8 * GiB),
    ("512M", 512 * MiB), ("2GiB", 2 * GiB), ("1073741824", GiB), ("1.5G", 3 * GiB // 2), ("64kb", 65536),
    ("100B", 100), (" 4 tb ", 4 * 2**40), (4096, 4096),
])
def test_parse_size_accepts(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["eight", "", "0", "0GB", "-1", "-8GB", "8XB", "8 G B", "1.5", "GB", "8ib", 0, -5])
def test_parse_size_rejects_with_the_value_and_the_forms(text):
    with pytest.raises(ValueError) as err:
        parse_size(text)
    assert repr(text) in str(err.value) and "accepted forms" in str(err.value)


# ------------------------------------------------------------------------------ counted activations

def tiny_bert(attn: str = "sdpa", layers: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=4096, hidden_dropout_prob=0.1,
                     attention_probs_dropout_prob=0.0, num_labels=2)
    return AutoModelForSequenceClassification.from_config(cfg, attn_implementation=attn).train()


def test_counter_counts_one_storage_once():
    x = torch.randn(1000, requires_grad=True)
    with SavedActivationCounter() as counter:
        y = (x * x).sum() + x.sin().sum() + (x[:500] * x[500:]).sum()  # x saved five times, two as views
    assert counter.bytes == 4000 and counter.tensors == 1 and counter.by_dtype == {"float32": 4000}
    y.backward()
    assert counter.live_bytes == 4000  # x itself is still alive


def test_counter_excludes_the_models_weights_and_their_views():
    layer = nn.Linear(64, 64)
    x = torch.randn(8, 64, requires_grad=True)  # so the linear saves weight.t() (a view) besides x
    with SavedActivationCounter(layer) as counter:
        out = layer(x).sum()
    assert counter.bytes == 8 * 64 * 4
    out.backward()


def test_counter_frees_with_the_graph_and_is_deterministic():
    model = tiny_bert()
    batch = synthetic_batch(model, 256, batch_size=2)
    counts = []
    for _ in range(2):
        with SavedActivationCounter(model) as counter:
            loss = model(**batch).loss
        assert counter.live_bytes == counter.bytes > 0
        loss.backward()
        # Backward released the graph; only the batch's own ids and labels (still referenced here) remain.
        assert counter.live_bytes == batch["input_ids"].nbytes + batch["labels"].nbytes
        counts.append(counter.bytes)
    assert counts[0] == counts[1]


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated")
def test_checkpointing_shrinks_the_count():
    batch = synthetic_batch(tiny_bert(), 1024)
    plain = measure_activations(tiny_bert(layers=4), batch)["activations_mb"]
    ckpt_model = tiny_bert(layers=4)
    ckpt_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ckpt = measure_activations(ckpt_model, batch)["activations_mb"]
    assert 0 < ckpt < 0.25 * plain


def test_measure_activations_per_sequence_and_cleanup():
    model = tiny_bert()
    one = measure_activations(model, synthetic_batch(model, 512, batch_size=1))
    two = measure_activations(model, synthetic_batch(model, 512, batch_size=2))
    assert two["batch_size"] == 2 and two["seq_len"] == 512
    assert two["activations_mb_per_seq"] == pytest.approx(two["activations_mb"] / 2)
    assert two["activations_mb_per_seq"] == pytest.approx(one["activations_mb_per_seq"], rel=0.02)
    assert all(p.grad is None for p in model.parameters())


def test_autocast_weight_copies_are_found_and_kept_out_of_the_per_sequence_figure():
    model = tiny_bert()
    linears = sum(m.weight.numel() * 2 for m in model.modules() if isinstance(m, nn.Linear))
    one = measure_activations(model, synthetic_batch(model, 256, batch_size=1), torch.bfloat16)
    two = measure_activations(model, synthetic_batch(model, 256, batch_size=2), torch.bfloat16)
    assert one["weight_copies_mb"] * MiB == two["weight_copies_mb"] * MiB == linears  # one bf16 copy per linear
    assert one["activations_by_dtype_mb"]["bfloat16"] > 0
    assert one["activations_mb_per_seq"] == pytest.approx(one["activations_mb"] - one["weight_copies_mb"])
    assert two["activations_mb_per_seq"] == pytest.approx(one["activations_mb_per_seq"], rel=0.02)


# --------------------------------------------------------------------------------- analytic state

def test_memory_decomposition_matches_a_real_adamw_state():
    model = nn.Sequential(nn.Linear(10, 10), nn.BatchNorm1d(10), nn.Linear(10, 2))
    for p in [*model[0].parameters(), *model[1].parameters()]:
        p.requires_grad_(False)
    d = memory_decomposition(model)
    assert d["weights_frozen_mb"] * MiB == (110 + 20) * 4
    assert d["weights_trainable_mb"] * MiB == d["grads_mb"] * MiB == 22 * 4
    assert d["buffers_mb"] * MiB == 20 * 4 + 8  # running mean/var + num_batches_tracked (int64)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    model(torch.randn(4, 10)).sum().backward()
    opt.step()
    state = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values())
    assert d["optimizer_mb"] * MiB == state
    assert d["fixed_mb"] == pytest.approx(sum(d[k] for k in ("weights_frozen_mb", "weights_trainable_mb",
                                                               "buffers_mb", "grads_mb", "optimizer_mb")))
    assert memory_decomposition(model, "sgd")["optimizer_mb"] == 0
    with pytest.raises(ValueError, match="optimizer_kind"):
        memory_decomposition(model, "lion")


# --------------------------------------------------------------------------------- measured phases

def run_phases(code: str) -> dict:
    """Run `code` in a fresh interpreter (own allocator state, own RSS) and return the JSON it prints."""
    script = "import json, sys, torch\nfrom torch import nn\nfrom ssmlora.lab.memory import *\n" \
             "torch.set_num_threads(1)\nconfigure_allocator_for_measurement()\n" + textwrap.dedent(code)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), *sys.path])}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_phase_reflects_its_own_allocation_not_an_earlier_one():
    r = run_phases("""
        r = {}
        with PhaseMeter("a", into=r):
            x = torch.ones(75_000_000)  # 286 MiB
            del x
        with PhaseMeter("b", into=r):
            y = torch.ones(25_000_000)  # 95 MiB
            del y
        r.update(process_peak())
        print(json.dumps(r))
    """)
    assert r["a_mem_basis"] == r["b_mem_basis"] == "cpu_rss"
    assert r["a_rise_mb"] == pytest.approx(286, abs=8)
    assert r["b_rise_mb"] == pytest.approx(95.4, abs=5)
    assert r["process_peak_rss_mb"] >= r["a_peak_mb"] > r["b_peak_mb"]


def test_phase_after_a_heavy_phase_matches_a_fresh_process():
    # Both processes run the workload once at toy size first: a kernel library's one-off buffers (oneDNN,
    # OpenMP) land in whichever phase uses it first, which is not what this test is about.
    code = """
        def work(n):
            torch.manual_seed(0)
            m = nn.Sequential(nn.Linear(256, 1024), nn.GELU(), nn.Linear(1024, 256))
            m(torch.randn(n, 256)).square().mean().backward()
        work(8)
        r = {}
        if HEAVY:
            with PhaseMeter("heavy", into=r):
                big = torch.ones(60_000_000)
                work(16384)
                del big
        with PhaseMeter("probe", into=r):
            work(16384)
        print(json.dumps(r))
    """
    cold = run_phases("HEAVY = False\n" + textwrap.dedent(code))
    warm = run_phases("HEAVY = True\n" + textwrap.dedent(code))
    assert warm["heavy_rise_mb"] > 1.5 * warm["probe_rise_mb"]
    assert warm["probe_rise_mb"] == pytest.approx(cold["probe_rise_mb"], rel=0.03)


# ------------------------------------------------------------------------------- scaling exponents

LENGTHS = [256, 512, 1024, 2048]


def test_fit_exponent_recovers_a_power_law():
    c, b = fit_power_law([100, 200, 400, 800], [3 * L**1.5 for L in (100, 200, 400, 800)])
    assert (c, b) == (pytest.approx(3), pytest.approx(1.5))
    with pytest.raises(ValueError):
        fit_exponent([512, 512], [1.0, 2.0])


def test_sdpa_activations_grow_linearly():
    points = activation_scaling(lambda L: tiny_bert("sdpa"), LENGTHS)
    assert [L for L, _ in points] == LENGTHS
    assert 0.9 <= fit_exponent(*zip(*points)) <= 1.2


def test_padding_brings_back_a_quadratic_mask_under_sdpa():
    full = activation_scaling(lambda L: tiny_bert("sdpa"), [512, 1024])
    padded = activation_scaling(lambda L: tiny_bert("sdpa"), [512, 1024], pad_tail=0.25)
    # transformers builds one boolean (1, 1, L, L) mask; SDPA turns it into a float32 bias at every call and
    # saves that, so each of the 2 layers keeps its own L x L copy.
    mask_bytes = [2 * L * L * 4 for L in (512, 1024)]
    for (L, f), (_, p), m in zip(full, padded, mask_bytes):
        assert (p - f) * MiB == pytest.approx(m, rel=0.01)


def test_eager_activations_grow_quadratically():
    points = activation_scaling(lambda L: tiny_bert("eager"), LENGTHS)
    assert fit_exponent(*zip(*points)) > 1.7


# -------------------------------------------------------------------------------------- frontier

def counting(limit):
    calls = []

    def fits(L):
        calls.append(L)
        return L <= limit
    return fits, calls


def test_find_frontier_bisects_over_multiples():
    fits, calls = counting(3000)
    assert find_frontier(fits, 256, 16384) == 2816
    assert all(L % 256 == 0 for L in calls) and len(calls) == len(set(calls)) <= 7
    assert find_frontier(counting(100)[0], 256, 4096) == 0  # nothing fits
    assert find_frontier(counting(10**9)[0], 256, 5000) == 4864  # everything fits: hi, rounded down
    assert find_frontier(counting(3000)[0], 300, 3000) == 2816  # lo rounded up
    assert find_frontier(counting(3000)[0], 2900, 2950) == 0  # no multiple of 256 in range


def test_find_frontier_confirms_a_good_guess_in_two_steps():
    fits, calls = counting(3000)
    assert find_frontier(fits, 256, 16384, guess=2816) == 2816 and calls == [2816, 3072]
    fits, calls = counting(3000)
    assert find_frontier(fits, 256, 16384, guess=3072) == 2816 and calls == [3072, 2816]
    fits, calls = counting(3000)
    assert find_frontier(fits, 256, 16384, guess=8000) == 2816  # a bad guess still converges


def test_predict_fit_len_matches_a_brute_force_search():
    c, b, fixed, budget = 3000.0, 1.3, 2 * GiB, 6 * GiB
    points = [(L, c * L**b) for L in (512, 1024, 2048)]
    brute = max(L for L in range(256, 10**6, 256) if fixed + c * L**b <= budget)
    assert predict_fit_len(fixed, points, budget) == brute
    brute2 = max(L for L in range(256, 10**6, 256) if fixed + 4 * c * L**b <= budget)
    assert predict_fit_len(fixed, points, budget, micro_batch=4) == brute2
    assert predict_fit_len(budget + 1, points, budget) == 0
    with pytest.raises(ValueError, match="exponent"):
        predict_fit_len(fixed, [(512, 10.0), (1024, 5.0)], budget)


def test_fit_counted_is_exact_for_linear_and_quadratic_activations():
    linear = lambda L: 20.0 + 0.1 * L  # noqa: E731  flash/SDPA: saved bytes grow with L
    quadratic = lambda L: 20.0 + 0.1 * L + 3e-5 * L**2  # noqa: E731  eager: the L x L probabilities too
    for truth in (linear, quadratic):
        fitted = fit_counted([(L, truth(L)) for L in (1024, 4096, 8192)])
        assert fitted(32768) == pytest.approx(truth(32768), rel=1e-9)
    assert fit_counted([(4096, linear(4096)), (8192, linear(8192))])(32768) == pytest.approx(linear(32768))
    with pytest.raises(ValueError, match="two distinct lengths"):
        fit_counted([(4096, 1.0), (4096, 1.0)])


def test_predict_from_counted_matches_a_brute_force_search():
    counted = lambda L: 20.0 + 0.1 * L  # noqa: E731
    peak = lambda L: 300.0 + 1.08 * counted(L)  # noqa: E731
    real = [(L, peak(L)) for L in (4096, 8192)]
    brute = max(L for L in range(256, 32769, 256) if peak(L) <= 2048)
    assert predict_from_counted(counted, real, 2048, 32768) == brute
    assert predict_from_counted(counted, real, 10**6, 32768) == 32768  # the reach, not memory
    assert predict_from_counted(counted, real, 100, 32768) == 0


def fake_steps(monkeypatch, peak, counted):
    """frontier_point with `measure_step` replaced by the given figures: the search itself, step by step."""
    calls = []

    def measure_step(model, length, device, autocast_dtype):
        calls.append(length)
        return {"peak_mb": peak(length), "counted_mb": counted(length)}
    monkeypatch.setattr(frontier, "measure_step", measure_step)
    return calls


def test_frontier_confirms_a_good_prediction_with_one_real_step(monkeypatch):
    counted = lambda L: 20.0 + 0.1 * L  # noqa: E731
    peak = lambda L: 300.0 + 1.08 * counted(L)  # noqa: E731
    calls = fake_steps(monkeypatch, peak, counted)
    point = frontier.frontier_point(lambda L: nn.Linear(4, 4), 2 * GiB)
    brute = max(L for L in range(256, 32769, 256) if peak(L) <= 2048)
    assert point["fit_len"] == point["predicted_len"] == brute and point["how"] == "predicted"
    assert calls == [1024, 4096, 8192, brute]  # warm-up, two probes, one confirmation
    assert list(json.loads(point["attempts"])) == ["4096", "8192", str(brute)]
    assert point["exponent"] == pytest.approx(fit_exponent([1024, 4096, 8192], [counted(L) for L in (1024, 4096, 8192)]))


def test_frontier_steps_down_from_a_confirmation_over_the_budget(monkeypatch):
    # The step grows a little faster than the saved activations (transients of a longer backward): the line
    # through the probes over-predicts; the step over the budget becomes a point and the next one interpolates.
    counted = lambda L: 20.0 + 0.1 * L  # noqa: E731
    peak = lambda L: 300.0 + counted(L) + 2e-7 * L**2  # noqa: E731
    calls = fake_steps(monkeypatch, peak, counted)
    point = frontier.frontier_point(lambda L: nn.Linear(4, 4), 2 * GiB)
    brute = max(L for L in range(256, 32769, 256) if peak(L) <= 2048)
    assert peak(point["predicted_len"]) > 2048  # the first prediction did not fit
    assert len(calls) == len(set(calls)) == 5  # warm-up, two probes, the failed confirmation, the one that fits
    assert peak(point["fit_len"]) <= 2048 and brute - 256 <= point["fit_len"] <= brute
    assert point["step_peak_mb"] == pytest.approx(peak(point["fit_len"]), abs=0.05)


def test_frontier_at_the_reach_takes_one_step_there(monkeypatch):
    calls = fake_steps(monkeypatch, lambda L: 250.0 + 0.03 * L, lambda L: 0.01 * L)  # checkpointing-like
    point = frontier.frontier_point(lambda L: nn.Linear(4, 4), 2 * GiB, reach=32768)
    assert point["fit_len"] == 32768 and point["cap_hit"] and calls == [1024, 4096, 8192, 32768]


def test_budget_check():
    assert budget_check(8 * GiB, 3 * GiB) == 5 * GiB
    with pytest.raises(ValueError, match="below the model's own weights"):
        budget_check(GiB, 2 * GiB)
    with pytest.raises(ValueError, match="positive"):
        budget_check(0, 10)
    assert math.isclose(memory_decomposition(nn.Linear(4, 4))["weights_trainable_mb"] * MiB, 80)
