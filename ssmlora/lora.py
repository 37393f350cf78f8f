"""LoRA (Hu et al., 2021, arXiv 2106.09685): a trainable low-rank update beside a frozen projection.

    y = W0 x + s · B(A(drop(x)))        A: r×in (random), B: out×r (zero), s = alpha/r

`B = 0` at init, so the adapted model starts exactly as the frozen one. The parameter layout (`lora_A` r×in,
`lora_B` out×r) matches PEFT's `lora_A.weight` / `lora_B.weight`, so weights copy across directly.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def projection_dims(base: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an nn.Linear or a GPT-2 Conv1D (weight stored in×out)."""
    if isinstance(base, nn.Linear):
        return base.in_features, base.out_features
    in_f, out_f = base.weight.shape
    return int(in_f), int(out_f)


def dense_weight(base: nn.Module) -> torch.Tensor:
    """The projection's weight as out×in, whatever its storage."""
    return base.weight if isinstance(base, nn.Linear) else base.weight.t()


class MaskDropout(nn.Dropout):
    """`nn.Dropout` whose CPU backward keeps a 1-byte keep-mask instead of a float32 noise tensor.

    Why: on the CPU `F.dropout` draws its noise with `bernoulli_` and autograd keeps that float32 tensor (4 bytes
    per element of the adapter's full-width input); a bool mask drawn with `rand_like` keeps 1 byte and skips
    the float noise's writes and reads. The distribution is the same:
    each element kept with probability 1 - p and scaled by 1 / (1 - p). Other devices use the fused kernel.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        keep = torch.rand_like(x, dtype=torch.float32) >= self.p
        return x.mul(keep).mul_(1.0 / (1.0 - self.p))


class AdapterLinear(nn.Module):
    """Common frame of both adapters: holds the frozen `base` projection and adds `delta(x)` to its output."""

    #: names of this adapter's own parameters (everything else belongs to the base layer)
    adapter_param_names: tuple[str, ...] = ()
    mergeable = False

    def __init__(self, base: nn.Module, r: int, scaling: float, dropout: float,
                 out_slice: tuple[int, int] | None = None):
        super().__init__()
        self.base = base
        self.in_features, self.out_features = projection_dims(base)
        # A fused projection (ModernBERT's Wqkv: q, k and v side by side) may be adapted on one part of its
        # output only: the update then has that part's width and is added to those output features alone.
        self.out_slice = None if out_slice is None else (int(out_slice[0]), int(out_slice[1]))
        if self.out_slice is not None:
            start, stop = self.out_slice
            if not 0 <= start < stop <= self.out_features:
                raise ValueError(f"output slice {out_slice} outside the projection's {self.out_features} features")
            self.out_features = stop - start
        self.r = r
        self.scaling = scaling
        self.dropout = MaskDropout(dropout) if dropout > 0 else nn.Identity()
        weight = base.weight
        # Half-precision bases keep float32 adapters: tiny low-rank updates vanish in bf16 rounding.
        self._param_kw = dict(
            device=weight.device,
            dtype=torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        # In place: a projection's backward keeps its input and weight, never its output, so this is safe
        # and saves one activation of the layer's full width per adapter.
        if self.out_slice is None:
            return out.add_(self.delta(x).to(out.dtype))
        out[..., self.out_slice[0]:self.out_slice[1]].add_(self.delta(x).to(out.dtype))
        return out

    def delta(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _adapter_input(self, x: torch.Tensor) -> torch.Tensor:
        # Under autocast F.linear picks the compute dtype itself; outside it, match the adapter's dtype.
        return x if torch.is_autocast_enabled(x.device.type) else x.to(self._param_kw["dtype"])

    def extra_repr(self) -> str:
        part = "" if self.out_slice is None else f" (output features {self.out_slice[0]}:{self.out_slice[1]})"
        return f"in={self.in_features}, out={self.out_features}{part}, r={self.r}, scaling={self.scaling:g}"


class LoRALinear(AdapterLinear):
    """`y = W0 x + s · B(A(drop(x)))` around a frozen nn.Linear or Conv1D."""

    adapter_param_names = ("lora_A", "lora_B")
    mergeable = True

    def __init__(self, base: nn.Module, r: int, scaling: float, dropout: float = 0.0,
                 out_slice: tuple[int, int] | None = None):
        super().__init__(base, r, scaling, dropout, out_slice)
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, **self._param_kw))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, **self._param_kw))
        # Same init as PEFT's default (kaiming-uniform A, zero B).
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        x = self._adapter_input(self.dropout(x))
        # scale in the rank-r space: r numbers per token instead of out_features
        return F.linear(F.linear(x, self.lora_A) * self.scaling, self.lora_B)

    @torch.no_grad()
    def merged_base(self) -> nn.Module:
        """The base projection with `s · B A` folded into its weight (for inference without the adapter)."""
        update = (self.lora_B.float() @ self.lora_A.float()) * self.scaling
        weight = self.base.weight
        if self.out_slice is not None:  # rows of an nn.Linear, columns of a Conv1D (stored in x out)
            start, stop = self.out_slice
            weight = weight[start:stop] if isinstance(self.base, nn.Linear) else weight[:, start:stop]
        weight += (update if isinstance(self.base, nn.Linear) else update.t()).to(weight.dtype)
        return self.base
