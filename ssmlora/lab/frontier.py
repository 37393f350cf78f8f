"""The max-context frontier: the longest L (a multiple of 256) whose training step at micro-batch 1 fits a budget.

One training step here is what a cell does per micro-batch, without Lightning: forward (under autocast when the
precision is mixed), backward, an AdamW step over the trainable parameters. Its peak is
- CUDA: `torch.cuda.max_memory_allocated` during the step (weights, gradients, optimizer state, activations,
  the backward's transients: every live tensor), with the budget enforced by
  `torch.cuda.set_per_process_memory_fraction`, so a step that does not fit raises OutOfMemoryError;
- CPU: the weights and buffers (resident before the step) plus the rise of the process's RSS over the step
  (gradients, optimizer state, activations, transients). The Python runtime and its libraries are not part of
  it: they are the same for every L and every method. No cap can be enforced on the CPU, so the fit is a
  comparison of that figure with the budget.

`frontier_point` predicts from the counted activations, then confirms with real steps:
- counted(L), the bytes the forward saves for backward (`SavedActivationCounter`), is exact and a polynomial
  in L (degree 1 with flash/SDPA kernels, 2 with eager attention), so a few short steps determine it;
- the step's peak is A + K * counted(L), the line through the two longest real steps (A: weights, gradients,
  optimizer state, workspaces; K: what the step holds per saved byte: gradients and the backward's transients
  ride on the activations; under checkpointing the recomputed layer's working set, which the count misses);
- CUDA: bisection with real attempts, starting from the prediction (`how` = "measured");
- CPU: one real step at the prediction; a step over the budget becomes the longest real point, so the next
  prediction interpolates and steps down (`how` = "predicted": the L is the prediction's, shown by a real step
  to fit). Each L is stepped at most once: long steps cost minutes on a CPU.
The answer never exceeds `reach`, the backbone's longest input (`cap_hit` says when the reach, not memory, was
the limit).
"""

from __future__ import annotations

import gc
import json
import math
import time
from typing import Callable

import torch
from torch import nn

from ssmlora.lab.memory import (MiB, PhaseMeter, SavedActivationCounter, fit_exponent, fit_power_law,
                                memory_decomposition, synthetic_batch)


# glibc's mmap threshold during the frontier's steps (`configure_allocator_for_measurement`). The cells use
# 64 KiB, so a tensor of 64-512 KiB leaves RSS when freed; here speed wins: at 64 KiB the CPU flash-attention
# kernels' block buffers (just under 512 KiB) are a fresh mmap each, which makes a long step much slower for the
# same peak (docs/results.md, "Max-context frontier"). The answer is a step at a long L, where the adapters'
# per-token tensors (L x r x 4 bytes: 512 KiB from 16K tokens at r = 8) are above 512 KiB anyway.
FRONTIER_MMAP_THRESHOLD = 512 * 1024


def budget_check(budget_bytes: int, weights_bytes: int) -> int:
    """Bytes left for everything but the weights; ValueError if the budget is not positive or below them."""
    if budget_bytes <= 0:
        raise ValueError(f"memory budget must be positive, got {budget_bytes} bytes")
    if budget_bytes < weights_bytes:
        raise ValueError(f"memory budget {budget_bytes / MiB:.1f} MiB is below the model's own weights "
                         f"({weights_bytes / MiB:.1f} MiB): no context length can fit; raise the budget")
    return budget_bytes - weights_bytes


def find_frontier(step_fits: Callable[[int], bool], lo: int, hi: int, multiple: int = 256,
                  guess: int | None = None) -> int:
    """Largest multiple of `multiple` in [lo, hi] for which `step_fits(L)` is True; 0 if none does.

    Bisection, assuming a step that fits at L fits at every shorter length. Each L is tried at most once.
    `guess` (e.g. from `predict_fit_len`) is tried first and then its neighbour, so a good prediction is
    confirmed with two real steps.
    """
    if multiple <= 0:
        raise ValueError(f"multiple must be positive, got {multiple}")
    first = math.ceil(lo / multiple)
    good, bad = first - 1, hi // multiple + 1  # in units of `multiple`: good fits (or is below lo), bad does not
    probes: list[int] = []
    if guess is not None and good + 1 < bad:
        g = min(max(round(guess / multiple), good + 1), bad - 1)
        if step_fits(g * multiple):
            good, probes = g, [g + 1]
        else:
            bad, probes = g, [g - 1]
    while bad - good > 1:
        k = probes.pop() if probes and good < probes[-1] < bad else (good + bad) // 2
        if step_fits(k * multiple):
            good = k
        else:
            bad = k
    return good * multiple if good >= first else 0


def predict_fit_len(fixed_bytes: float, per_seq_points: list[tuple[int, float]], budget_bytes: float,
                    multiple: int = 256, micro_batch: int = 1) -> int:
    """Largest multiple of `multiple` with fixed + micro_batch * c * L**b <= budget; 0 if none.

    (c, b) are fitted (log-log least squares) to `per_seq_points` = [(L, activation bytes per sequence)],
    e.g. from `activation_scaling` (in bytes). `fixed_bytes`: what does not grow with L: `fixed_mb` of
    `memory_decomposition`, autocast `weight_copies_mb`, and whatever else the caller knows (CUDA context,
    runtime, a margin for the backward's transients, which the count leaves out). Past the measured lengths
    the exponent is assumed to hold; confirm with a real step (`find_frontier(..., guess=prediction)`).
    """
    c, b = fit_power_law([L for L, _ in per_seq_points], [v for _, v in per_seq_points])
    if b <= 0:
        raise ValueError(f"activations do not grow with the length (fitted exponent {b:.3f}): cannot predict")
    fits = lambda L: fixed_bytes + micro_batch * c * L**b <= budget_bytes  # noqa: E731
    room = budget_bytes - fixed_bytes
    if room <= 0:
        return 0
    k = int((room / (micro_batch * c)) ** (1 / b) // multiple)
    while fits((k + 1) * multiple):  # the closed form can be a step off through float rounding
        k += 1
    while k > 0 and not fits(k * multiple):
        k -= 1
    return k * multiple


def measure_step(model: nn.Module, length: int, device: torch.device, autocast_dtype: torch.dtype | None) -> dict:
    """One training step of `model` (on `device`, train mode) at micro-batch 1 and length `length`.

    Returns MiB: `peak_mb` (see the module's docstring for what it includes on each device) and `counted_mb`,
    the bytes the forward saved for backward less autocast weight copies (`SavedActivationCounter`: exact,
    the same on every run and device for the same kernels). Raises torch.OutOfMemoryError (CUDA) when the
    step does not fit; gradients and the optimizer state are gone when it returns.
    """
    batch = synthetic_batch(model, length, 1, device)
    fixed = memory_decomposition(model)
    resident = fixed["weights_frozen_mb"] + fixed["weights_trainable_mb"] + fixed["buffers_mb"]
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-6) if trainable else None
    meter = PhaseMeter("step", device)
    try:
        with meter:
            with SavedActivationCounter(model) as counter:  # returns what it is given: no memory of its own
                with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16,
                                    enabled=autocast_dtype is not None):
                    out = model(**batch)
            loss = out.loss if getattr(out, "loss", None) is not None else out.logits.float().sum()
            loss.backward()
            if optimizer is not None:
                optimizer.step()
            del out, loss
    finally:
        model.zero_grad(set_to_none=True)
        del optimizer
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    peak = meter.result["step_peak_mb"] if device.type == "cuda" else resident + meter.result["step_rise_mb"]
    return {"peak_mb": peak, "counted_mb": (counter.bytes - counter.weight_copy_bytes) / MiB}


def fit_counted(points: list[tuple[int, float]]) -> Callable[[float], float]:
    """counted(L) through [(L, counted MiB)]: the polynomial in L of degree min(2, points - 1), least squares.

    Saved activations are a polynomial in L of degree 1 (flash / memory-efficient attention) or 2 (eager
    attention keeps the L x L probabilities), so three counted lengths determine it exactly.
    """
    lengths = sorted({L for L, _ in points})
    if len(lengths) < 2:
        raise ValueError("fitting the counted activations needs at least two distinct lengths")
    degree = min(2, len(lengths) - 1)
    xs = torch.tensor([float(L) for L, _ in points], dtype=torch.float64) / 1024  # scaled: a well-posed system
    ys = torch.tensor([float(v) for _, v in points], dtype=torch.float64)
    design = torch.stack([xs**k for k in range(degree + 1)], 1)
    coef = torch.linalg.lstsq(design, ys[:, None]).solution[:, 0].tolist()
    return lambda L: sum(c * (L / 1024) ** k for k, c in enumerate(coef))


def predict_from_counted(counted: Callable[[float], float], real: list[tuple[int, float]], budget_mb: float,
                         reach: int, multiple: int = 256) -> int:
    """Largest multiple of `multiple` <= reach with A + K * counted(L) <= budget_mb; 0 if none.

    A (what does not grow: weights, optimizer state, kernel workspaces) and K (what the step holds per counted
    byte: the backward's gradients and transients ride on the saved activations, and under checkpointing the
    recomputed layer's working set, which the count does not see) come from the line through the two longest
    real steps `real` = [(L, peak MiB)]: the nearest to the lengths predicted, so a confirming step over the
    budget makes the next prediction an interpolation. One real step: K = 1.
    """
    if not real:
        raise ValueError("predicting from the counted activations needs at least one real step")
    (l1, p1), (l2, p2) = (sorted(real)[-2:] if len(real) > 1 else [real[0], real[0]])
    k = (p2 - p1) / (counted(l2) - counted(l1)) if l1 != l2 and counted(l2) != counted(l1) else 1.0
    a = p2 - k * counted(l2)
    n = reach // multiple
    while n > 0 and a + k * counted(n * multiple) > budget_mb:
        n -= 1
    return n * multiple


def frontier_point(build: Callable[[int], nn.Module], budget_bytes: int, device: str | torch.device = "cpu",
                   autocast_dtype: torch.dtype | None = None, probe_lengths: tuple[int, ...] = (4096, 8192),
                   reach: int = 32768, multiple: int = 256, max_confirms: int = 4, warmup_len: int = 1024,
                   log=None) -> dict:
    """Largest L (multiple of `multiple`, <= `reach`) whose training step fits `budget_bytes`; see the module.

    `build(L)` returns the adapted model (gradient checkpointing already set as wanted) for inputs of L tokens.
    A warm-up step at `warmup_len` (its peak carries the kernel libraries' one-off buffers, so it is not a
    point; its count is) and real steps at `probe_lengths` give counted(L) (`fit_counted`) and the line
    peak = A + K * counted (`predict_from_counted`). CPU: every confirming step joins the real points, so one
    over the budget sharpens the next prediction. Returns the frontier.csv fields this function knows:
    fit_len, how, reach, cap_hit, step_peak_mb (real step at fit_len), predicted_len (the first prediction),
    exponent, fixed_mb, attempts (JSON {L: peak MiB, or "oom"}), seconds.
    """
    device = torch.device(device)
    start, budget_mb = time.perf_counter(), budget_bytes / MiB
    attempts: dict[int, float | str] = {}
    counts: dict[int, float] = {}
    say = log or (lambda *_: None)

    def attempt(length: int) -> float | None:
        model = build(length).to(device).train()
        t0 = time.perf_counter()
        try:
            step = measure_step(model, length, device, autocast_dtype)
        except torch.OutOfMemoryError:
            step = None
        finally:
            del model
            gc.collect()
        attempts[length] = "oom" if step is None else round(step["peak_mb"], 1)
        if step is not None:
            counts[length] = step["counted_mb"]
        say(f"  L={length}: " + ("out of memory" if step is None else f"{step['peak_mb']:.0f} MiB")
            + f" ({time.perf_counter() - t0:.0f} s)")
        return step and step["peak_mb"]

    def fits(length: int) -> bool:
        peak = attempts[length] if length in attempts else attempt(length)
        return peak != "oom" and peak <= budget_mb

    def measured() -> list[tuple[int, float]]:
        return [(L, p) for L, p in attempts.items() if p != "oom"]

    probes = sorted({L for L in probe_lengths if L <= reach})
    first = build(probes[0])
    fixed_mb = memory_decomposition(first)["fixed_mb"]
    budget_check(budget_bytes, int(sum(p.numel() * p.element_size() for p in first.parameters())))
    del first
    attempt(min(warmup_len, probes[0]))  # warm-up: counted, but its peak is no point (one-off buffers)
    attempts.clear()
    for length in probes:
        if not fits(length):  # no point probing longer
            break
    predicted, exponent = 0, math.nan
    if len(counts) >= 2 and measured():
        counted = fit_counted(list(counts.items()))
        exponent = fit_exponent(list(counts), list(counts.values())) if min(counts.values()) > 0 else math.nan
        predicted = predict_from_counted(counted, measured(), budget_mb, reach, multiple)
    if device.type == "cuda" or predicted == 0:  # real attempts, bisection from the prediction
        how = "measured"
        best = find_frontier(fits, multiple, reach, multiple, guess=predicted or None)
    else:  # CPU: a real step at the prediction; one over the budget refines the line and steps down
        how, best = "predicted", predicted
        for _ in range(max_confirms):
            if fits(best):
                break
            best = min(best - multiple, predict_from_counted(counted, measured(), budget_mb, reach, multiple))
            if best <= 0:
                best = 0
                break
        else:
            best = best if fits(best) else 0
    peak = attempts.get(best)
    return {"fit_len": best, "how": how, "reach": reach, "cap_hit": best >= reach // multiple * multiple,
            "step_peak_mb": peak if isinstance(peak, float) else None, "predicted_len": predicted,
            "exponent": exponent, "fixed_mb": fixed_mb, "attempts": json.dumps({str(k): v for k, v in attempts.items()}),
            "seconds": time.perf_counter() - start}


def cuda_budget(budget_bytes: int, device: torch.device):
    """Context manager: the caching allocator of `device` refuses to hold more than `budget_bytes`."""
    import contextlib

    @contextlib.contextmanager
    def cap():
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget_bytes / total), device)
        try:
            yield
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
            torch.cuda.empty_cache()
    return cap()
