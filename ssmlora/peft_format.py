"""LoRA checkpoints in PEFT's layout, both ways: a folder `peft.PeftModel.from_pretrained(base, path)` loads, and
a PEFT LoRA folder read into this library's LoRA.

PEFT's layout: `adapter_config.json` is a `LoraConfig` (`"peft_type": "LORA"`), and `adapter_model.safetensors`
holds, per adapted module, `base_model.model.<module>.lora_A.weight` (r × in) and `.lora_B.weight` (out × r),
plus every weight of each module in `modules_to_save` (here the classifier head) under
`base_model.model.<module>.<parameter>`. PEFT's update is `(lora_alpha / r) · B A x` (`lora_alpha / sqrt(r)` with
rsLoRA), so `lora_alpha = s · r` carries our scale s whatever its convention. A LoRA on one part of a fused
projection's outputs (ModernBERT's Wqkv) is written as a full-width B whose rows outside the part are zero: the
same function, in the terms PEFT has.

Only LoRA has a PEFT tuner. SSMLoRA's state links adapters across layers, and a `LoraConfig` cannot say so; it is
refused rather than written as a LoRA that would compute something else.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ssmlora.arch import _LAYER_RE, family_of, find_head
from ssmlora.config import AdapterConfig
from ssmlora.inject import inject_adapters, trainable_groups
from ssmlora.lora import LoRALinear, projection_dims

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."
_LORA_KEYS = (".lora_A.weight", ".lora_B.weight")


def is_peft_folder(directory: str | Path) -> bool:
    """Does `directory` hold a PEFT adapter (its config names a `peft_type`)?"""
    path = Path(directory) / CONFIG_NAME
    return path.exists() and "peft_type" in json.loads(path.read_text())


def save_peft(model: nn.Module, directory: str | Path) -> Path:
    """Write `model`'s LoRA and classifier head as PEFT writes a `SEQ_CLS` LoRA (see the module docstring)."""
    config: AdapterConfig | None = getattr(model, "adapter_config", None)
    if config is None:
        raise ValueError("this model has no adapters: call inject_adapters(model, config) first")
    if config.method != "lora":
        raise ValueError(f"format='peft' writes LoRA only: {config.method} has no PEFT tuner (its state links "
                         "adapters across layers, which a PEFT LoraConfig cannot express); save it in this "
                         "library's format (format='ssmlora') and load it with load_adapters")
    sites = model.adapter_sites
    if any(site.role == "head" for site in sites):
        raise ValueError("format='peft': this LoRA adapts the classifier head, whose frozen weights PEFT cannot "
                         "save beside the head's LoRA; adapt the head's weights instead (targets without 'head')")
    other = [name for name, _ in trainable_groups(model)["other"]]
    if other:
        raise ValueError(f"format='peft': trainable weights outside the adapters and the head ({other[:3]}) have "
                         "no place in a PEFT LoRA folder")
    tensors, conv1d = {}, False
    for site in sites:
        module: LoRALinear = model.get_submodule(site.name)
        lora_b = module.lora_B.detach()
        if module.out_slice is not None:
            full = lora_b.new_zeros(projection_dims(module.base)[1], module.r)
            full[module.out_slice[0]:module.out_slice[1]] = lora_b
            lora_b = full
        tensors[f"{PREFIX}{site.name}.lora_A.weight"] = module.lora_A.detach().contiguous()
        tensors[f"{PREFIX}{site.name}.lora_B.weight"] = lora_b.contiguous()
        conv1d |= not isinstance(module.base, nn.Linear)  # GPT-2's Conv1D stores its weight in x out
    head = model.adapter_head_path
    for name, param in model.named_parameters():
        if name.startswith(head + "."):
            tensors[PREFIX + name] = param.detach().contiguous()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, directory / WEIGHTS_NAME, metadata={"format": "pt"})
    r = config.r
    peft_config = {
        "peft_type": "LORA", "task_type": "SEQ_CLS", "r": r,
        "lora_alpha": model.get_submodule(sites[0].name).scaling * r, "lora_dropout": config.dropout,
        "target_modules": sorted(site.name for site in sites), "modules_to_save": [head],
        "fan_in_fan_out": conv1d, "bias": "none", "use_rslora": False, "use_dora": False,
        "init_lora_weights": True, "inference_mode": True,
        "base_model_name_or_path": getattr(getattr(model, "config", None), "_name_or_path", None),
    }
    (directory / CONFIG_NAME).write_text(json.dumps(peft_config, indent=2) + "\n")
    return directory


def load_peft(model: nn.Module, directory: str | Path) -> nn.Module:
    """Read a PEFT LoRA folder into a fresh `model` as this library's LoRA: the same modules, weights and scale,
    and the head weights of `modules_to_save`. Refuses what our LoRA cannot compute the same way."""
    directory = Path(directory)
    cfg = json.loads((directory / CONFIG_NAME).read_text())
    if cfg.get("peft_type") != "LORA":
        raise ValueError(f"{directory} holds a PEFT {cfg.get('peft_type')} adapter: only LORA reads into this "
                         "library's LoRA")
    unsupported = [k for k in ("use_dora", "rank_pattern", "alpha_pattern", "layer_replication") if cfg.get(k)]
    if cfg.get("bias", "none") != "none":
        unsupported.append(f"bias={cfg['bias']!r}")
    if unsupported:
        raise ValueError(f"{directory}: PEFT LoRA settings {unsupported} have no counterpart in this library's "
                         "LoRA (one rank and scale for every module, no trained biases)")
    if getattr(model, "adapter_config", None) is not None:
        raise ValueError("load a PEFT folder into a fresh model (this one already has adapters)")
    tensors = {k.removeprefix(PREFIX): v for k, v in load_file(directory / WEIGHTS_NAME).items()}
    lora = {k[:-len(suffix)] for k in tensors for suffix in _LORA_KEYS if k.endswith(suffix)}
    rest = {k: v for k, v in tensors.items() if not k.endswith(_LORA_KEYS)}
    if not lora:
        raise ValueError(f"{directory}/{WEIGHTS_NAME} holds no lora_A / lora_B weights")
    r = int(cfg["r"])
    alpha = float(cfg["lora_alpha"])
    scaling = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    config = AdapterConfig(method="lora", r=r, alpha=scaling * r, dropout=float(cfg.get("lora_dropout", 0.0)),
                           scale="alpha/r", train_head=bool(rest), **_targets(model, lora))
    inject_adapters(model, config)
    sites = {site.name: site for site in model.adapter_sites}
    if set(sites) != lora:
        raise ValueError(f"{directory}: its LoRA modules are not a set of whole layers' projections this library "
                         f"adapts (PEFT only: {sorted(lora - set(sites))[:3]}; here only: "
                         f"{sorted(set(sites) - lora)[:3]})")
    for name, site in sites.items():
        module: LoRALinear = model.get_submodule(name)
        lora_a, lora_b = tensors[f"{name}.lora_A.weight"], tensors[f"{name}.lora_B.weight"]
        if site.out_slice is not None:
            start, stop = site.out_slice
            if lora_b[:start].any() or lora_b[stop:].any():
                raise ValueError(f"{directory}: {name} updates more of the fused projection than its "
                                 f"{site.role} part, which this library's scheme adapts alone")
            lora_b = lora_b[start:stop]
        _copy(module.lora_A, lora_a, f"{name}.lora_A")
        _copy(module.lora_B, lora_b, f"{name}.lora_B")
    params = dict(model.named_parameters())
    unknown = sorted(set(rest) - set(params))
    if unknown:
        raise ValueError(f"{directory}: weights {unknown[:3]} match no parameter of this model (another model?)")
    for name, value in rest.items():
        _copy(params[name], value, name)
    return model


def _targets(model: nn.Module, modules: set[str]) -> dict:
    """`targets` and `layers` that select exactly `modules` (checked after injection)."""
    _, head_linear = find_head(model, family_of(model))
    rels, layers = set(), set()
    for name in modules:
        if name == head_linear:
            rels.add("head")
            continue
        match = _LAYER_RE.match(name)
        if match is None:
            raise ValueError(f"PEFT LoRA on {name}: outside the transformer layers and the head, where this "
                             "library places no adapter")
        rels.add(match["rel"])
        layers.add(int(match["idx"]))
    return {"targets": sorted(rels), "layers": sorted(layers) or None}


def _copy(param: torch.Tensor, value: torch.Tensor, name: str) -> None:
    if param.shape != value.shape:
        raise ValueError(f"{name}: the PEFT folder holds shape {tuple(value.shape)}, this model "
                         f"{tuple(param.shape)} (another rank or model size?)")
    param.data.copy_(value)
