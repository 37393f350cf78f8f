"""The method registry: every adapter method the suite knows, and everything that differs between methods.

A `Method` names its layer class, how one projection is wrapped, which sites its insertion scheme adapts, what
links its layers after injection, its default hyperparameters and the settings that tell two of its runs apart.
Injection, parameter counting, the sweep's learning rates, its result rows and the plots all read this table,
so adding a method means registering it here (or from your own code) next to its layer; see docs/adapters.md,
"Adding a method".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn

from ssmlora.arch import layer_modules, scan_direction

from ssmlora.lora import AdapterLinear, LoRALinear
from ssmlora.recompute import LayerEntries
from ssmlora.scan import MASK_NAME, ScanLoRALinear, SequenceMask
from ssmlora.ssm import SSMLoRALinear, SSMStateBus

# Annotations below name ssmlora.config.AdapterConfig and ssmlora.arch.Site; neither is imported, because the
# config validates method names against this registry (config -> methods), never the other way round.

ATTENTION_AND_FFN = frozenset({"q", "k", "v", "o", "ffn-in", "ffn-gate", "ffn-out"})
QV = frozenset({"q", "v"})
BUS_NAME = "ssm_state"  # attribute of an SSMLoRA model that holds its state chains
ENTRIES_NAME = "ssm_entries"  # attribute of an SSMLoRA model that records what each layer saw (checkpointing)


@dataclass(frozen=True)
class Method:
    """One adapter method. `in_scheme(role, layer, targets)` says whether a site with that role (q, k, v, o,
    ffn-in, ffn-gate, ffn-out, head) on that layer (None for the head) is adapted under the named scheme
    (`targets`: all | qv); explicit target lists bypass it."""

    name: str
    description: str
    layer: type[AdapterLinear] | None = None  # None: no adapters, only the classifier head trains
    in_scheme: Callable[[str, int | None, str], bool] = lambda role, layer, targets: False
    # default: layer(base, r, s, dropout); with an output slice (one part of a fused projection) also out_slice=
    build: Callable[..., AdapterLinear] | None = None
    link: Callable[[nn.Module, list["Site"], list[AdapterLinear], "AdapterConfig"], None] | None = None
    defaults: dict = field(default_factory=dict)  # sweep defaults, e.g. {"lr": 5e-4}
    identity: tuple[str, ...] = ()  # AdapterConfig fields recorded with each result row (e.g. ssm_mode)
    other_layers: tuple[type[AdapterLinear], ...] = ()  # further classes `build` may return (ssmlora's scan)

    def wrap(self, base: nn.Module, config: "AdapterConfig", out_slice: tuple[int, int] | None = None) -> AdapterLinear:
        """The adapter layer around `base`; `out_slice` (start, stop): adapt only those output features."""
        part = {} if out_slice is None else {"out_slice": out_slice}  # a build written before slices still works
        if self.build is not None:
            return self.build(base, config, **part)
        return self.layer(base, config.r, config.scaling, config.dropout, **part)

    @property
    def mergeable(self) -> bool:
        return self.layer is None or all(cls.mergeable for cls in (self.layer, *self.other_layers))


_REGISTRY: dict[str, Method] = {}


def register_method(method: Method, replace: bool = False) -> Method:
    """Add `method` to the registry (`replace=True` to redefine a name, e.g. in a test)."""
    if method.name in _REGISTRY and not replace:
        raise ValueError(f"method {method.name!r} is registered already")
    if not method.name or ":" in method.name or "," in method.name:
        raise ValueError(f"method name {method.name!r} must be non-empty, without ':' or ','")
    _REGISTRY[method.name] = method
    return method


def unregister_method(name: str) -> None:
    _REGISTRY.pop(name, None)


def get_method(name: str) -> Method:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}: choose one of {', '.join(method_names())}") from None


def method_names() -> list[str]:
    return list(_REGISTRY)


def adapter_param_names() -> tuple[str, ...]:
    """Parameter names owned by adapter layers (everything else trainable is the head or a base module)."""
    classes = [cls for m in _REGISTRY.values() if m.layer for cls in (m.layer, *m.other_layers)]
    return tuple(dict.fromkeys(n for cls in classes for n in cls.adapter_param_names))


# ---- the built-in methods ----

def _lora_scheme(role: str, layer: int | None, targets: str) -> bool:
    return role in (QV if targets == "qv" else ATTENTION_AND_FFN)


def _ssmlora_scheme(role: str, layer: int | None, targets: str) -> bool:
    # The paper's sparse scheme: q on even layers, v on odd ones (GPT-2's fused c_attn counts as q; ModernBERT's
    # Wqkv is adapted on its q or v part), never k; with
    # targets=all also o, every FFN matrix and the classifier head.
    if role in QV:
        return layer % 2 == (0 if role == "q" else 1)
    return targets == "all" and role != "k"


def _ssmlora_layer(base: nn.Module, config: "AdapterConfig", out_slice=None) -> AdapterLinear:
    if config.ssm_mode == "scan":  # its direction is set by _link_ssm_chains, which sees the model
        return ScanLoRALinear(base, config.r, config.scaling, config.dropout, config.eps, config.norm,
                              out_slice=out_slice)
    return SSMLoRALinear(base, config.r, config.scaling, config.dropout, config.eps, config.norm, out_slice=out_slice)


def _chain_key(site: "Site", mode: str) -> str:
    # carry keys q, k and v per layer and shares one key per other role across layers, as the released code
    if mode == "carry" and site.role in ("q", "k", "v"):
        return f"{site.role}.{site.layer}"
    return site.role


def _link_ssm_chains(model: nn.Module, sites, wrappers, config: "AdapterConfig") -> None:
    """Put every SSMLoRA layer on its state chain (one chain per key, in depth order) through one state bus;
    in scan mode, give every layer the model's attention mask and the scan direction of its family. Either
    way, record what each transformer layer reads on entry, for gradient checkpointing (ssmlora.recompute)."""
    if config.ssm_mode == "scan":
        direction = scan_direction(model.config.model_type, config.scan_direction)
        SequenceMask.install(model)
        entries = LayerEntries(getattr(model, MASK_NAME))
        for wrapper, site in zip(wrappers, sites):
            wrapper.attach(model, direction, site.layer, entries)
    else:
        keys = [_chain_key(site, config.ssm_mode) for site in sites]
        layer_keys: dict[int, list[str]] = {}
        for site, key in zip(sites, keys):
            if site.layer is not None:
                layer_keys.setdefault(site.layer, []).append(key)
        bus = SSMStateBus(config.ssm_mode, keys, layer_keys)
        model.add_module(BUS_NAME, bus)
        entries = LayerEntries(bus)
        seen: dict[str, int] = {}
        for wrapper, key, site in zip(wrappers, keys, sites):
            wrapper.attach(bus, key, seen.get(key, 0), site.layer, entries)
            seen[key] = seen.get(key, 0) + 1
    model.add_module(ENTRIES_NAME, entries)
    entries.install(layer_modules(model, sites))


register_method(Method(
    "lora", "LoRA (arXiv 2106.09685): y = W0 x + s·B A drop(x) on q, k, v, o and every FFN matrix",
    layer=LoRALinear, in_scheme=_lora_scheme, defaults={"lr": 5e-4},
))
register_method(Method(
    "ssmlora", "SSMLoRA (arXiv 2502.04958): low-rank adapters linked by a state space model, sparse scheme",
    layer=SSMLoRALinear, in_scheme=_ssmlora_scheme, build=_ssmlora_layer, link=_link_ssm_chains,
    defaults={"lr": 5e-5}, identity=("ssm_mode",), other_layers=(ScanLoRALinear,),
))
register_method(Method("frozen", "no adapters: only the classifier head trains (the cost floor)"))
