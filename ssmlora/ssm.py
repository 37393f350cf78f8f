"""SSMLoRA (Yu et al., NAACL 2025, arXiv 2502.04958): low-rank adapters linked by a state space model.

Each adapted projection gets a "time module" with `Wa` (in×r), `Wb` (r×out), `Wc` (r×r, state matrix) and
`Wd` (r×r, control matrix). With `u = x Wa` and the incoming state `h` (detached, shape of `u`):

    h_next = h Wc + u Wd + h                        (one Euler step of h' = h Wc + u Wd)
    h_norm = (h_next - min) / (max - min + eps)     (min/max over the r features of each token, in float32)
    y      = W0 x + s · (u + drop(h_norm)) Wb

`h_norm` is what the next module on the same chain receives. Which modules form a chain, and how long a state
lives, is `ssm_mode` (SPEC.md §1):

- ``depth``: one chain per role (q, v, o, ffn-*, head) in depth order; the first link starts from zero at
  every forward pass, so outputs are deterministic and independent of the rest of the batch.
- ``carry``: as the released code: q, k and v keyed per layer, o / each FFN matrix / head one key across all
  layers; the state survives from one forward pass to the next. Shape mismatches (another batch size or
  length) are resolved by zero-padding or cutting at the end, the same way every time; never randomly.

Init: `Wa` ~ N(0, 1/r), `Wb = Wc = Wd = 0`, first state 0, so the adapted model starts as the frozen one.

Which matrices cannot learn: `Wc` multiplies the incoming state, so a `Wc` that only ever sees a zero state
gets a zero gradient forever. In ``depth`` mode that is the first link of every chain (and the head, a chain
of one). In ``carry`` mode a first link's `Wc` starts learning a step later than the rest, once a state made
with a non-zero `Wd` has been carried over. With r = 1 the min–max range is always 0, so `h_norm` is 0 and `Wc`, `Wd` never learn.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssmlora.lora import AdapterLinear


def in_backward() -> bool:
    """True while autograd runs a backward pass: that is when gradient checkpointing recomputes a layer."""
    return torch._C._current_graph_task_id() != -1


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


class SSMStateBus(nn.Module):
    """Holds the SSMLoRA states of one model: the latest state emitted on every chain key.

    The states are non-persistent buffers of this module (so they move with `.to()` and never leak between
    model objects); `save_adapters` writes them explicitly in ``carry`` mode. They are deliberately kept out of
    `state_dict()`, because their shape follows the last batch.
    """

    def __init__(self, mode: str, keys: list[str]):
        super().__init__()
        self.mode = mode
        self.keys = list(dict.fromkeys(keys))
        for i, _ in enumerate(self.keys):
            self.register_buffer(self._buffer(i), torch.empty(0), persistent=False)

    def _buffer(self, i: int) -> str:
        return f"state_{i}"

    def read(self, key: str, like: torch.Tensor) -> torch.Tensor:
        state = getattr(self, self._buffer(self.keys.index(key)))
        return fit_to(state, like) if state.numel() else torch.zeros(like.shape, device=like.device)

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

    def __init__(self, base: nn.Module, r: int, scaling: float, dropout: float = 0.0, eps: float = 1e-6):
        super().__init__(base, r, scaling, dropout)
        self.eps = eps
        kw = self._param_kw
        self.Wa = nn.Parameter(torch.randn(self.in_features, r, **kw) / r**0.5)
        self.Wb = nn.Parameter(torch.zeros(r, self.out_features, **kw))
        self.Wc = nn.Parameter(torch.zeros(r, r, **kw))
        self.Wd = nn.Parameter(torch.zeros(r, r, **kw))
        # Set by `attach`: where this module sits on its state chain.
        self.chain_key: str | None = None
        self.chain_pos = 0
        self._bus: list[SSMStateBus] = []  # a list keeps the shared bus out of this module's children
        self._entry_state: torch.Tensor | None = None

    def attach(self, bus: SSMStateBus, key: str, position: int) -> None:
        self._bus = [bus]
        self.chain_key, self.chain_pos = key, position

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        u = F.linear(self._adapter_input(x), self.Wa.t())
        h = self._incoming_state(u)
        with torch.autocast(device_type=u.device.type, enabled=False):
            # float32 so that the min-max range never underflows to 0/0 under bf16 or fp16 autocast
            h_next = h @ self.Wc.float() + u.float() @ self.Wd.float() + h
            low = h_next.amin(dim=-1, keepdim=True)
            high = h_next.amax(dim=-1, keepdim=True)
            h_norm = (h_next - low) / (high - low + self.eps)
        if not in_backward() and self._bus:
            self._bus[0].write(self.chain_key, h_norm.detach())
        mixed = u + self.dropout(h_norm).to(u.dtype)
        return F.linear(mixed * self.scaling, self.Wb.t())

    def _incoming_state(self, u: torch.Tensor) -> torch.Tensor:
        if in_backward() and self._entry_state is not None:
            # Gradient checkpointing recomputes this layer: reuse the state it saw the first time instead
            # of a state the rest of the forward pass has advanced since.
            return fit_to(self._entry_state, u)
        if not self._bus or (self._bus[0].mode == "depth" and self.chain_pos == 0):
            state = torch.zeros(u.shape, dtype=torch.float32, device=u.device)
        else:
            state = self._bus[0].read(self.chain_key, u).float()
        self._entry_state = state if torch.is_grad_enabled() else None
        return state

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, chain={self.chain_key}[{self.chain_pos}]"
