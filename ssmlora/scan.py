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

`ScanLoRALinear` (below) is the adapter layer built on it; `SequenceMask` hands it the attention mask.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssmlora.lora import AdapterLinear
from ssmlora.recompute import LayerEntries, in_backward
from ssmlora.ssm import NORMS, normalise

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


class _CausalScan(torch.autograd.Function):
    """``h = _causal(v, log_a)`` with a hand-written backward that keeps only ``h`` (which the normalisation
    after it keeps anyway): autograd through the blocked form would keep a padded copy of ``v`` and the permuted
    operands of each einsum, ~1.1x the activations of a ``depth`` adapter step on MiniLM. With the adjoint
    ``λ_t = g_t + a λ_{t+1}`` (the same scan, reversed): ``dv_t = λ_t`` and ``d log a = a Σ_t λ_t h_{t-1}``."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, log_a: torch.Tensor, chunk: int) -> torch.Tensor:
        h = _causal(v, log_a, chunk, 1)
        ctx.save_for_backward(h, log_a)
        ctx.chunk = chunk
        return h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h: torch.Tensor):
        h, log_a = ctx.saved_tensors
        adjoint = _causal(grad_h.flip(1), log_a, ctx.chunk, 1).flip(1)
        previous = F.pad(h[:, :-1], (0, 0, 1, 0))
        grad_log_a = (adjoint * previous).sum(dim=(0, 1)) * log_a.exp()
        return adjoint, grad_log_a, None


def _masked_causal(v: torch.Tensor, log_a: torch.Tensor, keep: torch.Tensor | None, chunk: int) -> torch.Tensor:
    if keep is None:
        return _CausalScan.apply(v, log_a, chunk)
    # Skipping pads = packing each row's real tokens to the front (stable, so their order is kept), scanning
    # the packed rows with unit steps, and putting the states back. The zeroed pads then sit after every real
    # token and cannot reach it; this keeps a single shared decay matrix instead of one per row and block.
    order = torch.sort((~keep).to(torch.int32), dim=1, stable=True).indices
    back = torch.argsort(order, dim=1)
    r = v.shape[-1]
    packed = v.masked_fill(~keep[..., None], 0.0).gather(1, order[..., None].expand(-1, -1, r))
    h = _CausalScan.apply(packed, log_a, chunk).gather(1, back[..., None].expand(-1, -1, r))
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


# ---- the adapter layer (``ssm_mode="scan"``) ----

MASK_NAME = "scan_mask"  # attribute of a scan-mode model that holds the current forward's attention mask


class SequenceMask(nn.Module):
    """The attention mask of the forward pass in flight, for the scan adapters of one model.

    A projection only sees hidden states, yet a scan must skip pad tokens, so a forward pre-hook on the
    model stores the mask here and a forward hook clears it (`install`). A layer recomputed by gradient
    checkpointing runs after that, so `LayerEntries` records the mask each layer saw (`layer_entry`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.mask: torch.Tensor | None = None

    @staticmethod
    def install(model: nn.Module) -> None:
        """Add a holder to `model` (as `model.scan_mask`) and the hooks that fill and clear it. The hooks find
        the holder through the module they run on, so a deep copy of the model uses its own holder."""
        model.add_module(MASK_NAME, SequenceMask())

        def store(module, args, kwargs):
            mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
            getattr(module, MASK_NAME).mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

        def clear(module, args, kwargs, output):
            getattr(module, MASK_NAME).mask = None

        model.register_forward_pre_hook(store, with_kwargs=True)
        model.register_forward_hook(clear, with_kwargs=True)

    def layer_entry(self, layer: int) -> dict[str, torch.Tensor | None]:
        return {"mask": self.mask}


class ScanLoRALinear(AdapterLinear):
    """SSMLoRA with its state running over the token positions of each sequence (`ssm_mode="scan"`).

    With ``u = x Wa`` (r per token) and the decays ``a = exp(-softplus(decay_logit))``:

        h_t = a ⊙ h_{t-1} + u_t Wd        (causal; bidirectional adds the same scan run backwards)
        y_t = W0 x_t + s · (u_t + drop(N(h_t))) Wb

    `N` is the per-token normalisation of the other modes (`AdapterConfig.norm`), in float32. Pads are
    skipped (see `linear_scan`). A 2-D input (BERT's pooled head input) is a sequence of one token. Init:
    `Wa` ~ N(0, 1/r), `Wb = Wd = 0`, decay timescales spread log-uniformly over 1..1000 tokens, so the
    adapted model starts as the frozen one. Parameters: r·(in + out) + r² + r.
    """

    adapter_param_names = ("Wa", "Wb", "Wd", "decay_logit")

    def __init__(self, base: nn.Module, r: int, scaling: float, dropout: float = 0.0, eps: float = 1e-6,
                 norm: str = "minmax", direction: str = "causal", out_slice: tuple[int, int] | None = None):
        super().__init__(base, r, scaling, dropout, out_slice)
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}: choose one of {', '.join(NORMS)}")
        self.eps, self.norm, self.direction = eps, norm, validate_direction(direction)
        kw = self._param_kw
        self.Wa = nn.Parameter(torch.randn(self.in_features, r, **kw) / r**0.5)
        self.Wb = nn.Parameter(torch.zeros(r, self.out_features, **kw))
        self.Wd = nn.Parameter(torch.zeros(r, r, **kw))
        self.decay_logit = nn.Parameter(init_decay_logits(r).to(**kw))
        # The adapted model and its entry records, in lists to keep them out of this module's children.
        self._model: list[nn.Module] = []
        self._entries: list[LayerEntries] = []
        self.layer: int | None = None

    def attach(self, model: nn.Module, direction: str, layer: int | None = None,
               entries: LayerEntries | None = None) -> None:
        self._model, self._entries = [model], [entries] if entries is not None else []
        self.direction, self.layer = validate_direction(direction), layer

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        u = F.linear(self._adapter_input(x), self.Wa.t())
        seq = u if u.dim() == 3 else u.unsqueeze(1)  # (batch, r): one token per row
        mask = self._sequence_mask(seq) if u.dim() == 3 else None
        with torch.autocast(device_type=u.device.type, enabled=False):
            v = seq.float() @ self.Wd.float()
            h = linear_scan(v, decay_from_logits(self.decay_logit), mask, self.direction)
            h_norm = normalise(h, self.norm, self.eps).reshape(u.shape)
        mixed = u + self.dropout(h_norm).to(u.dtype)
        return F.linear(mixed * self.scaling, self.Wb.t())

    def _sequence_mask(self, seq: torch.Tensor) -> torch.Tensor | None:
        if in_backward():  # a recomputation: the holder was cleared when the forward pass ended
            if not self._entries:
                raise RuntimeError("a scan adapter attached without entry records is being recomputed in backward: "
                                   "attach it with the model's LayerEntries (inject_adapters does)")
            mask = self._entries[0].replay(self.layer, "mask")
        else:
            holder = getattr(self._model[0], MASK_NAME, None) if self._model else None
            mask = holder.mask if holder is not None else None
        if mask is not None:
            if mask.shape != seq.shape[:2]:
                raise RuntimeError(f"scan adapter: attention mask of shape {tuple(mask.shape)} does not match the "
                                   f"hidden states' (batch, seq) {tuple(seq.shape[:2])}")
            if bool(mask.bool().all()):
                mask = None  # nothing to skip: the plain scan avoids the gather of pad-skipping
        return mask

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, norm={self.norm}, direction={self.direction}"
