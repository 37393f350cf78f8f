"""SSMLoRA (Yu et al., NAACL 2025, arXiv 2502.04958): low-rank adapters linked by a state space model.

Each adapted projection gets a "time module" with `Wa` (in×r), `Wb` (r×out), `Wc` (r×r, state matrix) and
`Wd` (r×r, control matrix). With `u = x Wa` and the incoming state `h` (detached, shape of `u`):

    h_next = h Wc + u Wd + h                        (one Euler step of h' = h Wc + u Wd)
    h_norm = N(h_next)                              (per token, over its r features, in float32)
    y      = W0 x + s · (u + drop(h_norm)) Wb

`h_norm` is what the next module on the same chain receives. Which modules form a chain, and how long a state
lives, is `ssm_mode`:

- ``depth``: one chain per role (q, v, o, ffn-*, head) in depth order; the first link starts from zero at
  every forward pass, so outputs are deterministic and independent of the rest of the batch.
- ``carry``: as the released code: q, k and v keyed per layer, o / each FFN matrix / head one key across all
  layers; the state survives from one forward pass to the next. Shape mismatches (another batch size or
  length) are resolved by zero-padding or cutting at the end, the same way every time; never randomly.

The normalisation `N` (`AdapterConfig.norm`), with `R = max - min` of the token's r features:

- ``minmax`` (the released code): `(h_next - min) / (R + eps)`. Its derivative is `1 / (R + eps)`, so at a
  flat state (R = 0: every state at init, since `Wc = Wd = 0`) it is `1/eps`. Once `Wb != 0`, `Wd`'s gradient
  is then 10^4-10^5 times every other adapter gradient, and gradient-norm clipping shrinks the rest of the
  step to almost nothing. Treating min and max as constants in backward does not help: the `1/(R + eps)`
  factor stays.
- ``smooth``: `(h_next - min) / sqrt(R^2 + 1)`. Where `R >> 1` it is the min-max map; where `R << 1` it is
  only a shift, so a near-flat state is no longer stretched to [0, 1] and the derivative is bounded by 1
  whatever the state. The output stays in [0, 1) (the reason for normalising), and 1 is the range the exact
  map would give, so the two agree in scale. The gradient ratios of each choice, measured, are in
  docs/adapters.md (SSMLoRA, "Normalisation N").

Init: `Wa` ~ N(0, 1/r), `Wb = Wc = Wd = 0`, first state 0, so the adapted model starts as the frozen one.

Gradient checkpointing recomputes a layer in backward, when the live state has moved on (later layers, or
later forward passes before one backward). The recomputed modules read the states their layer saw on entry in
its own forward pass, from `ssmlora.recompute.LayerEntries`, and never write the bus a second time.

Which matrices cannot learn: `Wc` multiplies the incoming state, so a `Wc` that only ever sees a zero state
gets a zero gradient forever. In ``depth`` mode that is the first link of every chain (and the head, a chain
of one). In ``carry`` mode a first link's `Wc` starts learning a step later than the rest, once a state made
with a non-zero `Wd` has been carried over. With r = 1 the range is always 0, so `h_norm` is 0 and `Wc`, `Wd`
never learn.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssmlora.lora import AdapterLinear
from ssmlora.recompute import LayerEntries, in_backward


def fit_to(state: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`state` zero-padded or cut at the end of each leading dim to `like`'s shape (deterministic)."""
    if state.shape == like.shape:
        return state
    out = torch.zeros(like.shape, dtype=state.dtype, device=like.device)
    if state.dim() != like.dim():
        return out
    common = tuple(slice(0, min(a, b)) for a, b in zip(state.shape, like.shape))
    out[common] = state[common].to(like.device)
    return out


NORMS = ("minmax", "smooth")


def normalise(h: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """The per-token normalisation `N` of the module docstring."""
    low = h.amin(dim=-1, keepdim=True)
    spread = h.amax(dim=-1, keepdim=True) - low
    if norm == "minmax":
        return (h - low) / (spread + eps)
    if norm == "smooth":
        return (h - low) / (spread * spread + 1.0).sqrt()
    raise ValueError(f"unknown norm {norm!r}: choose one of {', '.join(NORMS)}")


class SSMStateBus(nn.Module):
    """Holds the SSMLoRA states of one model: the latest state emitted on every chain key.

    The states are non-persistent buffers of this module (so they move with `.to()` and never leak between
    model objects); `save_adapters` writes them explicitly in ``carry`` mode. They are deliberately kept out of
    `state_dict()`, because their shape follows the last batch.
    """

    def __init__(self, mode: str, keys: list[str], layer_keys: dict[int, list[str]] | None = None):
        super().__init__()
        self.mode = mode
        self.keys = list(dict.fromkeys(keys))
        self.layer_keys = layer_keys or {}  # transformer layer -> the chain keys its modules read
        for i, _ in enumerate(self.keys):
            self.register_buffer(self._buffer(i), torch.empty(0), persistent=False)

    def _buffer(self, i: int) -> str:
        return f"state_{i}"

    def read(self, key: str, like: torch.Tensor) -> torch.Tensor:
        return self.fit(getattr(self, self._buffer(self.keys.index(key))), like)

    def layer_entry(self, layer: int) -> dict[str, torch.Tensor]:
        """The states on the chains that `layer` reads, as they are now (for `LayerEntries`)."""
        return {key: getattr(self, self._buffer(self.keys.index(key))) for key in self.layer_keys.get(layer, ())}

    @staticmethod
    def fit(state: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A stored state made ready to use against `like` (zeros when there is none yet)."""
        if not state.numel():
            return torch.zeros(like.shape, device=like.device)
        if state.is_inference() and not torch.is_inference_mode_enabled():
            # Written under torch.inference_mode(): autograd refuses to save such a tensor for backward.
            state = state.clone()
        return fit_to(state, like)

    def write(self, key: str, state: torch.Tensor) -> None:
        setattr(self, self._buffer(self.keys.index(key)), state)

    def states(self) -> dict[str, torch.Tensor]:
        return {key: getattr(self, self._buffer(i)) for i, key in enumerate(self.keys)}

    def load_states(self, states: dict[str, torch.Tensor]) -> None:
        for key, value in states.items():
            self.write(key, value)

    @torch.no_grad()
    def reset(self) -> None:
        """Forget every state (the next forward starts every chain from zero)."""
        for i, _ in enumerate(self.keys):
            setattr(self, self._buffer(i), torch.empty(0))

    def extra_repr(self) -> str:
        return f"mode={self.mode}, chains={len(self.keys)}"


class SSMLoRALinear(AdapterLinear):
    """One SSMLoRA time module around a frozen nn.Linear or Conv1D (see the module docstring)."""

    adapter_param_names = ("Wa", "Wb", "Wc", "Wd")

    def __init__(
        self, base: nn.Module, r: int, scaling: float, dropout: float = 0.0, eps: float = 1e-6, norm: str = "smooth",
        out_slice: tuple[int, int] | None = None,
    ):
        super().__init__(base, r, scaling, dropout, out_slice)
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}: choose one of {', '.join(NORMS)}")
        self.eps, self.norm = eps, norm
        kw = self._param_kw
        self.Wa = nn.Parameter(torch.randn(self.in_features, r, **kw) / r**0.5)
        self.Wb = nn.Parameter(torch.zeros(r, self.out_features, **kw))
        self.Wc = nn.Parameter(torch.zeros(r, r, **kw))
        self.Wd = nn.Parameter(torch.zeros(r, r, **kw))
        # Set by `attach`: where this module sits on its state chain, and in which transformer layer.
        self.chain_key: str | None = None
        self.chain_pos = 0
        self.layer: int | None = None
        # Lists keep the shared bus and entry records out of this module's children.
        self._bus: list[SSMStateBus] = []
        self._entries: list[LayerEntries] = []

    def attach(self, bus: SSMStateBus, key: str, position: int, layer: int | None = None,
               entries: LayerEntries | None = None) -> None:
        self._bus, self._entries = [bus], [entries] if entries is not None else []
        self.chain_key, self.chain_pos, self.layer = key, position, layer

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        u = F.linear(self._adapter_input(x), self.Wa.t())
        h = self._incoming_state(u)
        with torch.autocast(device_type=u.device.type, enabled=False):
            # float32 so that the min-max range never underflows to 0/0 under bf16 or fp16 autocast
            h_next = h @ self.Wc.float() + u.float() @ self.Wd.float() + h
            h_norm = normalise(h_next, self.norm, self.eps)
        if not in_backward() and self._bus:  # a recomputation must not advance the chain a second time
            self._bus[0].write(self.chain_key, h_norm.detach())
        mixed = u + self.dropout(h_norm).to(u.dtype)
        return F.linear(mixed * self.scaling, self.Wb.t())

    def _incoming_state(self, u: torch.Tensor) -> torch.Tensor:
        if not self._bus or (self._bus[0].mode == "depth" and self.chain_pos == 0):
            return torch.zeros(u.shape, dtype=torch.float32, device=u.device)
        if not in_backward():
            return self._bus[0].read(self.chain_key, u).float()
        if not self._entries:
            raise RuntimeError("an SSMLoRA layer attached without entry records is being recomputed in backward: "
                               "attach it with the model's LayerEntries (inject_adapters does)")
        return SSMStateBus.fit(self._entries[0].replay(self.layer, self.chain_key), u).float()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, norm={self.norm}, chain={self.chain_key}[{self.chain_pos}]"
