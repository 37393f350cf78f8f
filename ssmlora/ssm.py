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
  map would give, so the two agree in scale. Measured on the tiny test models (LLaMA, BERT) at init with
  `Wb ~ N(0, 0.02)`, largest |gradient| of one kind of matrix over the largest of the other kinds: minmax
  ~5·10^4 (Wd); min and max as constants in backward ~5·10^4; a range floor sqrt(float32 eps) ~140;
  smooth ~20 (Wb leads, as B does in LoRA while it is small).

Init: `Wa` ~ N(0, 1/r), `Wb = Wc = Wd = 0`, first state 0, so the adapted model starts as the frozen one.

Gradient checkpointing recomputes a layer in backward, when the live state has moved on (later layers, or
later forward passes before one backward). Each checkpointed call therefore records the entry state of every
module it runs on its own `StateTape`, and the recomputation replays that tape: the tape belongs to that call's
autograd graph, so any number of forwards may precede the backward. `checkpoint_context_fn` is the
`context_fn` that `enable_gradient_checkpointing` gives `torch.utils.checkpoint`; a recomputation without a
tape (checkpointing enabled some other way) raises instead of using a wrong state.

Which matrices cannot learn: `Wc` multiplies the incoming state, so a `Wc` that only ever sees a zero state
gets a zero gradient forever. In ``depth`` mode that is the first link of every chain (and the head, a chain
of one). In ``carry`` mode a first link's `Wc` starts learning a step later than the rest, once a state made
with a non-zero `Wd` has been carried over. With r = 1 the range is always 0, so `h_norm` is 0 and `Wc`, `Wd`
never learn.
"""

from __future__ import annotations

import threading

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


class StateTape:
    """The entry states of the SSMLoRA modules run inside one checkpointed call, in call order per module.

    `recording` is entered around the call's forward, `replaying` around each recomputation of it (autograd
    may recompute more than once, e.g. with `retain_graph=True`, so every entry replays from the start).
    """

    def __init__(self) -> None:
        self._states: dict[nn.Module, list[torch.Tensor]] = {}
        self._cursor: dict[nn.Module, int] = {}
        self.recording = _TapeContext(self, replay=False)
        self.replaying = _TapeContext(self, replay=True)

    def record(self, module: nn.Module, state: torch.Tensor) -> None:
        self._states.setdefault(module, []).append(state)

    def replay(self, module: nn.Module) -> torch.Tensor:
        i = self._cursor.get(module, 0)
        states = self._states.get(module, [])
        if i >= len(states):
            raise RuntimeError("gradient checkpointing recomputed an SSMLoRA module more often than the forward ran it")
        self._cursor[module] = i + 1
        return states[i]


class _TapeContext:
    """Re-enterable: pushes its tape on this thread's stack for the duration of the block."""

    _local = threading.local()

    def __init__(self, tape: StateTape, replay: bool):
        self.tape, self.replay = tape, replay

    @classmethod
    def stack(cls) -> list["_TapeContext"]:
        if not hasattr(cls._local, "stack"):
            cls._local.stack = []
        return cls._local.stack

    def __enter__(self) -> "_TapeContext":
        if self.replay:
            self.tape._cursor = {}
        self.stack().append(self)
        return self

    def __exit__(self, *exc) -> bool:
        self.stack().pop()
        return False


def checkpoint_context_fn() -> tuple[_TapeContext, _TapeContext]:
    """`context_fn` for `torch.utils.checkpoint` (non-reentrant): a fresh tape for every checkpointed call."""
    tape = StateTape()
    return tape.recording, tape.replaying


def _active_tape() -> _TapeContext | None:
    stack = _TapeContext.stack()
    return stack[-1] if stack else None


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
        self, base: nn.Module, r: int, scaling: float, dropout: float = 0.0, eps: float = 1e-6, norm: str = "smooth"
    ):
        super().__init__(base, r, scaling, dropout)
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}: choose one of {', '.join(NORMS)}")
        self.eps, self.norm = eps, norm
        kw = self._param_kw
        self.Wa = nn.Parameter(torch.randn(self.in_features, r, **kw) / r**0.5)
        self.Wb = nn.Parameter(torch.zeros(r, self.out_features, **kw))
        self.Wc = nn.Parameter(torch.zeros(r, r, **kw))
        self.Wd = nn.Parameter(torch.zeros(r, r, **kw))
        # Set by `attach`: where this module sits on its state chain.
        self.chain_key: str | None = None
        self.chain_pos = 0
        self._bus: list[SSMStateBus] = []  # a list keeps the shared bus out of this module's children

    def attach(self, bus: SSMStateBus, key: str, position: int) -> None:
        self._bus = [bus]
        self.chain_key, self.chain_pos = key, position

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
        tape = _active_tape()
        if tape is not None and tape.replay:
            return tape.tape.replay(self)
        if not self._bus or (self._bus[0].mode == "depth" and self.chain_pos == 0):
            state = torch.zeros(u.shape, dtype=torch.float32, device=u.device)
        elif in_backward():
            raise RuntimeError(
                "an SSMLoRA layer is being recomputed in backward (gradient checkpointing) without the state it saw "
                "in its forward pass: enable checkpointing with ssmlora.enable_gradient_checkpointing(model), or pass "
                "context_fn=ssmlora.ssm.checkpoint_context_fn to torch.utils.checkpoint (use_reentrant=False)"
            )
        else:
            state = self._bus[0].read(self.chain_key, u).float()
        if tape is not None:
            tape.tape.record(self, state)
        return state

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, norm={self.norm}, chain={self.chain_key}[{self.chain_pos}]"
