"""Diagonal linear scan for the ``scan`` reading of SSMLoRA (arXiv 2502.04958): the state runs along the tokens.

Per adapted projection, in the rank-r space of one sequence (the caller computes ``u = x Wa`` and ``v = u Wd``
and applies the min–max normalisation and ``Wb``):

    h_t = a ⊙ h_{t-1} + v_t,   h_{-1} = 0,   v_t = u_t Wd                           ("causal")
    y_t = W0 x_t + s · (u_t + drop(norm(h_t))) Wb

``a`` is a diagonal decay in (0, 1), ``a = exp(-softplus(θ))``, so it stays contractive whatever θ becomes.
θ starts with e-folding times ``τ = -1 / log a`` spread log-uniformly over ``[min_timescale, max_timescale]``
tokens, as S4D (Gu et al., 2022, arXiv 2206.11893) and Mamba (Gu & Dao, 2023, arXiv 2312.00752) initialise
their decays ``exp(-Δ·λ)``. (``1 / (1 - a) = τ + 1/2 + O(1/τ)``, so the two timescale notions agree except at
the short end, where ``1/(1-a) = 1`` would need ``a = 0``, i.e. θ = +∞.)

``"bidirectional"`` adds a backward scan, each direction starting from zero (``v_t`` is counted in both):

    h_t = Σ_{s≤t} a^{t-s} v_s + Σ_{s≥t} a^{s-t} v_s

Padding: with a mask, pad tokens are skipped, i.e. the recurrence only steps on real tokens, so a sequence's h
at its real positions is exactly its h without padding (left, right or interior padding alike); h is 0 at pads.

Intended use in an adapter (``ssm_mode="scan"``)::

    theta = nn.Parameter(init_decay_logits(r))                  # per adapted projection
    h = linear_scan(u @ Wd, decay_from_logits(theta), mask=attention_mask, direction="causal")
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DIRECTIONS = ("causal", "bidirectional")
DEFAULT_CHUNK = 64

# -log a is kept in [_MIN_RATE, _MAX_RATE]. Rates under ~6e-8 round a to exactly 1 in float32 (no decay);
# 1e-6 (τ = 1e6 tokens) keeps a ~16 ulps below 1. Rates over ~87 leave float32's normal range and soon round a
# to 0, whose log is -inf (0·inf = NaN in the exponents).
_MIN_RATE = 1e-6
_MAX_RATE = 80.0


def validate_direction(direction: str) -> str:
    """Return `direction` if it is one of ``"causal"``, ``"bidirectional"``; raise ValueError otherwise."""
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown scan direction {direction!r}; allowed: {', '.join(map(repr, DIRECTIONS))}")
    return direction


def init_decay_logits(r: int, min_timescale: float = 1.0, max_timescale: float = 1000.0) -> torch.Tensor:
    """θ (float32, shape (r,)) whose decays ``a = exp(-softplus(θ))`` have e-folding times ``τ = -1/log a``
    evenly spaced in log from `min_timescale` to `max_timescale` tokens (S4D / Mamba style).

    Deterministic (no RNG), so adding the parameter does not shift the random init of the other weights.
    With r = 1 the single state gets the geometric mean of the two timescales.
    """
    if r < 1:
        raise ValueError(f"r must be >= 1, got {r}")
    if not 0 < min_timescale <= max_timescale:
        raise ValueError(f"need 0 < min_timescale <= max_timescale, got {min_timescale}, {max_timescale}")
    lo, hi = math.log(min_timescale), math.log(max_timescale)
    log_tau = torch.linspace(lo, hi, r, dtype=torch.float64) if r > 1 else torch.tensor([(lo + hi) / 2])
    rate = torch.exp(-log_tau.double()).clamp(_MIN_RATE, _MAX_RATE)  # softplus(θ) = -log a = 1/τ
    return torch.log(torch.expm1(rate)).float()  # softplus⁻¹, in float64 so small rates keep their digits


def decay_from_logits(theta: torch.Tensor) -> torch.Tensor:
    """``a = exp(-softplus(θ))`` in float32, always strictly inside (0, 1) (gradient 0 where clamped)."""
    with torch.autocast(device_type=theta.device.type, enabled=False):
        return torch.exp(-F.softplus(theta.float()).clamp(_MIN_RATE, _MAX_RATE))


def linear_scan(
    v: torch.Tensor,
    a: torch.Tensor,
    mask: torch.Tensor | None = None,
    direction: str = "causal",
    chunk: int = DEFAULT_CHUNK,
) -> torch.Tensor:
    """States ``h`` (batch, seq, r), float32, of ``h_t = a ⊙ h_{t-1} + v_t`` (see the module docstring).

    Args:
        v: (batch, seq, r) inputs ``u Wd``, any float dtype; computed on in float32 with autocast off.
        a: (r,) decays in (0, 1], e.g. from `decay_from_logits`; values outside are clamped into range.
        mask: optional (batch, seq) attention mask, nonzero = real token. Pads are skipped by the recurrence
            (no contribution, no decay step) and get h = 0.
        direction: ``"causal"`` or ``"bidirectional"``.
        chunk: block length of the parallel scan (>= 2). Any value gives the same result up to rounding;
            cost is O(batch·seq·chunk·r) flops and O(batch·seq·r) saved activations.

    Differentiable w.r.t. `v` and `a` (hence θ). No Python loop over tokens: the sequence is cut into blocks,
    each solved in closed form with a (chunk×chunk) decay matrix, and the block-end states are scanned the
    same way one level up (recursively), so the work is linear in seq and the depth is log_chunk(seq).
    """
    validate_direction(direction)
    if chunk < 2:
        raise ValueError(f"chunk must be >= 2, got {chunk}")
    if v.dim() != 3 or a.shape != v.shape[-1:]:
        raise ValueError(f"need v (batch, seq, r) and a (r,), got {tuple(v.shape)} and {tuple(a.shape)}")
    if mask is not None and mask.shape != v.shape[:2]:
        raise ValueError(f"mask must be (batch, seq) = {tuple(v.shape[:2])}, got {tuple(mask.shape)}")
    with torch.autocast(device_type=v.device.type, enabled=False):
        v = v.float()
        log_a = torch.log(a.float().clamp(min=math.exp(-_MAX_RATE), max=1.0))
        keep = None if mask is None else mask.to(device=v.device) != 0
        h = _masked_causal(v, log_a, keep, chunk)
        if direction == "bidirectional":
            flipped = None if keep is None else keep.flip(1)
            h = h + _masked_causal(v.flip(1), log_a, flipped, chunk).flip(1)
        return h


def _masked_causal(v: torch.Tensor, log_a: torch.Tensor, keep: torch.Tensor | None, chunk: int) -> torch.Tensor:
    if keep is None:
        return _causal(v, log_a, chunk, 1)
    # Skipping pads = packing each row's real tokens to the front (stable, so their order is kept), scanning
    # the packed rows with unit steps, and putting the states back. The zeroed pads then sit after every real
    # token and cannot reach it; this keeps a single shared decay matrix instead of one per row and block.
    order = torch.sort((~keep).to(torch.int32), dim=1, stable=True).indices
    back = torch.argsort(order, dim=1)
    r = v.shape[-1]
    packed = v.masked_fill(~keep[..., None], 0.0).gather(1, order[..., None].expand(-1, -1, r))
    h = _causal(packed, log_a, chunk, 1).gather(1, back[..., None].expand(-1, -1, r))
    return h.masked_fill(~keep[..., None], 0.0)


def _decay_matrix(n: int, log_a: torch.Tensor, step: int) -> torch.Tensor:
    """(n, n, r): ``a^{(t-s)·step}`` for s <= t, else 0."""
    idx = torch.arange(n, device=log_a.device, dtype=torch.float32)
    lag = idx[:, None] - idx[None, :]
    # The lag is clamped before exp so that the upper triangle is exp(0)·0, never exp(+big) (inf·0 = NaN);
    # exponents are always <= 0, so nothing grows like a^{-t}.
    weight = torch.exp(lag.clamp(min=0)[..., None] * (step * log_a))
    return weight * (lag >= 0)[..., None]


def _causal(v: torch.Tensor, log_a: torch.Tensor, chunk: int, step: int) -> torch.Tensor:
    """Causal scan with state times ``t·step``: ``h_t = Σ_{s≤t} a^{(t-s)·step} v_s``."""
    batch, length, r = v.shape
    if length <= chunk:
        return torch.einsum("tsr,bsr->btr", _decay_matrix(length, log_a, step), v)
    blocks = -(-length // chunk)
    # Zero tail padding comes after every real entry, so it changes nothing before it.
    vb = F.pad(v, (0, 0, 0, blocks * chunk - length)).reshape(batch, blocks, chunk, r)
    local = torch.einsum("tsr,bksr->bktr", _decay_matrix(chunk, log_a, step), vb)  # each block from 0
    # Block ends are one chunk apart in time: the same scan one level up gives the state after each block.
    after = _causal(local[:, :, -1], log_a, chunk, step * chunk)
    incoming = F.pad(after[:, :-1], (0, 0, 1, 0))
    # The carried state decays (t+1)·step from the previous block's end to offset t of this block.
    offsets = torch.arange(1, chunk + 1, device=v.device, dtype=torch.float32)
    lead = torch.exp(offsets[:, None] * (step * log_a))
    h = local + lead * incoming[:, :, None]
    return h.reshape(batch, blocks * chunk, r)[:, :length]
