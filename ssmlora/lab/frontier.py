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

`frontier_point` measures a few short probe lengths, fits peak - fixed = c * L**b (fixed: weights, gradients,
optimizer state from `memory_decomposition`), predicts the largest L within the budget and then
- CUDA: bisects with real attempts, starting from the prediction (`how` = "measured");
- CPU: confirms the prediction with one real step at that L, stepping down while the real step is over the
  budget (`how` = "predicted": the L is the prediction's, shown by a real step to fit).
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

from ssmlora.lab.memory import MiB, PhaseMeter, fit_power_law, memory_decomposition, synthetic_batch



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
    `guess` (e.g. from `predict_max_len`) is tried first and then its neighbour, so a good prediction is
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


def predict_max_len(fixed_bytes: float, per_seq_points: list[tuple[int, float]], budget_bytes: float,
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


def step_peak_mb(model: nn.Module, length: int, device: torch.device, autocast_dtype: torch.dtype | None) -> float:
    """Peak MiB of one training step of `model` (on `device`, train mode) at micro-batch 1 and length `length`.

    See the module's docstring for what the figure includes on each device. Raises torch.OutOfMemoryError (CUDA)
    when the step does not fit; gradients and the optimizer state are gone when it returns.
    """
    batch = synthetic_batch(model, length, 1, device)
    fixed = memory_decomposition(model)
    resident = fixed["weights_frozen_mb"] + fixed["weights_trainable_mb"] + fixed["buffers_mb"]
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-6) if trainable else None
    meter = PhaseMeter("step", device)
    try:
        with meter:
            with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
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
    if device.type == "cuda":
        return meter.result["step_peak_mb"]
    return resident + meter.result["step_rise_mb"]


def fit_step_curve(points: list[tuple[int, float]]) -> tuple[float, float, float]:
    """(a, c, b) of peak(L) = a + c * L**b fitted to [(L, peak)], least squares in relative error.

    `a` takes what does not grow with L (weights, optimizer state, kernel workspaces), c * L**b the rest: a plain
    power law through short probes would read a constant part as a smaller exponent and under-predict long L.
    b is searched on [0.5, 3] in steps of 0.005 (a, c solved linearly for each b, c >= 0); two points give b = 1.
    """
    if len({L for L, _ in points}) < 2:
        raise ValueError("fitting a step curve needs at least two distinct lengths")
    lengths = torch.tensor([float(L) for L, _ in points], dtype=torch.float64)
    peaks = torch.tensor([float(p) for _, p in points], dtype=torch.float64)
    best = (math.inf, 0.0, 0.0, 1.0)
    for b in ([1.0] if len(set(lengths.tolist())) == 2 else [0.5 + 0.005 * i for i in range(501)]):
        design = torch.stack([torch.ones_like(lengths), lengths**b], 1) / peaks[:, None]
        a, c = torch.linalg.lstsq(design, torch.ones_like(peaks)).solution.tolist()
        if c <= 0:
            continue
        error = float((((a + c * lengths**b) - peaks) / peaks).square().sum())
        if error < best[0] - 1e-12:
            best = (error, a, c, b)
    if best[0] == math.inf:
        raise ValueError("the step's memory does not grow with the length: cannot predict")
    return best[1], best[2], best[3]


def predict_step_len(points: list[tuple[int, float]], budget_mb: float, reach: int, multiple: int = 256) -> int:
    """Largest multiple of `multiple` <= reach whose fitted step peak (`fit_step_curve`) is within the budget."""
    a, c, b = fit_step_curve(points)
    k = reach // multiple
    while k > 0 and a + c * (k * multiple) ** b > budget_mb:
        k -= 1
    return k * multiple


def frontier_point(build: Callable[[int], nn.Module], budget_bytes: int, device: str | torch.device = "cpu",
                   autocast_dtype: torch.dtype | None = None, probe_lengths: tuple[int, ...] = (2048, 4096, 8192),
                   reach: int = 32768, multiple: int = 256, max_confirms: int = 4, log=None) -> dict:
    """Largest L (multiple of `multiple`, <= `reach`) whose training step fits `budget_bytes`; see the module.

    `build(L)` returns the adapted model (gradient checkpointing already set as wanted) for inputs of L tokens.
    CPU: every real step (probe or confirmation) becomes a point of the fitted curve, so a confirmation over
    the budget sharpens the next prediction. Returns the frontier.csv fields this function knows: max_len,
    how, reach, cap_hit, step_peak_mb (real step at max_len), predicted_len (the first prediction), exponent,
    fixed_mb, attempts (JSON {L: peak MiB, or "oom"}), seconds.
    """
    device = torch.device(device)
    start, budget_mb = time.perf_counter(), budget_bytes / MiB
    attempts: dict[int, float | str] = {}
    say = log or (lambda *_: None)

    def attempt(length: int) -> float | None:
        model = build(length).to(device).train()
        try:
            peak = step_peak_mb(model, length, device, autocast_dtype)
        except torch.OutOfMemoryError:
            peak = None
        finally:
            del model
            gc.collect()
        attempts[length] = "oom" if peak is None else round(peak, 1)
        say(f"  L={length}: " + ("out of memory" if peak is None else f"{peak:.0f} MiB"))
        return peak

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
    attempt(probes[0])  # warm-up: the first step also carries the kernel libraries' one-off buffers
    attempts.clear()
    for length in probes:
        if not fits(length):  # no point probing longer
            break
    predicted, exponent = 0, math.nan
    if len(measured()) >= 2:
        exponent = fit_step_curve(measured())[2]
        predicted = predict_step_len(measured(), budget_mb, reach, multiple)
    if device.type == "cuda" or predicted == 0:  # real attempts, bisection from the prediction
        how = "measured"
        best = find_frontier(fits, multiple, reach, multiple, guess=predicted or None)
    else:  # CPU: real steps at the prediction until one fits, each refining the curve
        how, best = "predicted", predicted
        for _ in range(max_confirms):
            if fits(best):
                break
            best = min(best - multiple, predict_step_len(measured(), budget_mb, reach, multiple))
            if best <= 0:
                best = 0
                break
        else:
            best = best if fits(best) else 0
    peak = attempts.get(best)
    return {"max_len": best, "how": how, "reach": reach, "cap_hit": best >= reach // multiple * multiple,
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
