"""Putting adapters into a Hugging Face `*ForSequenceClassification` model, counting and merging them."""

from __future__ import annotations

import torch.nn as nn

from ssmlora.arch import Site, family_of, find_head, num_layers, select_sites
from ssmlora.config import AdapterConfig
from ssmlora.lora import AdapterLinear, LoRALinear
from ssmlora.ssm import SSMLoRALinear, SSMStateBus, checkpoint_context_fn

BUS_NAME = "ssm_state"


def inject_adapters(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """Freeze `model`, wrap the scheme's projections in `LoRALinear` / `SSMLoRALinear`, return it (in place).

    The classifier head (new, random weights) trains fully when `config.train_head`, except that with
    `config.freeze_adapted_head` a head projection carrying an adapter stays frozen (only its adapter trains).
    For `method="frozen"` only the head trains: the cost floor of the sweep.
    """
    if getattr(model, "adapter_config", None) is not None:
        raise ValueError("this model already has adapters: build a fresh model (or load_adapters into one)")
    family = family_of(model)
    head_path, _ = find_head(model, family)
    sites = [] if config.method == "frozen" else select_sites(
        model, family, config.method, config.targets, config.layers
    )
    for param in model.parameters():
        param.requires_grad_(False)

    wrappers = [_wrap(model, site, config) for site in sites]
    if config.method == "ssmlora":
        keys = [_chain_key(site, config.ssm_mode) for site in sites]
        bus = SSMStateBus(config.ssm_mode, keys)
        model.add_module(BUS_NAME, bus)
        seen: dict[str, int] = {}
        for wrapper, key in zip(wrappers, keys):
            wrapper.attach(bus, key, seen.get(key, 0))
            seen[key] = seen.get(key, 0) + 1

    for name, param in model.named_parameters():
        if name.startswith(head_path + ".") and not _is_adapter_param(name):
            param.requires_grad_(config.train_head)
    if config.freeze_adapted_head:
        for wrapper, site in zip(wrappers, sites):
            if site.role == "head":
                wrapper.base.requires_grad_(False)
    model.adapter_config = config
    model.adapter_head_path = head_path
    model.adapter_sites = sites
    return model


def _wrap(model: nn.Module, site: Site, config: AdapterConfig) -> AdapterLinear:
    parent_name, _, child = site.name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    base = getattr(parent, child)
    if config.method == "lora":
        wrapper = LoRALinear(base, config.r, config.scaling, config.dropout)
    else:
        wrapper = SSMLoRALinear(base, config.r, config.scaling, config.dropout, config.eps, config.norm)
    wrapper.train(base.training)  # a new module defaults to train mode; follow the model's mode
    setattr(parent, child, wrapper)
    return wrapper


def _chain_key(site: Site, mode: str) -> str:
    # carry keys q, k and v per layer and shares one key per other role across layers, as the released code
    if mode == "carry" and site.role in ("q", "k", "v"):
        return f"{site.role}.{site.layer}"
    return site.role


def _is_adapter_param(name: str) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return leaf in LoRALinear.adapter_param_names + SSMLoRALinear.adapter_param_names


def adapter_modules(model: nn.Module) -> dict[str, AdapterLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, AdapterLinear)}


def trainable_groups(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Trainable (name, parameter) pairs split into "adapter", "head" and "other" (e.g. a trainable pooler)."""
    head_path = getattr(model, "adapter_head_path", None)
    if head_path is None:
        head_path, _ = find_head(model, family_of(model))
    groups: dict[str, list] = {"adapter": [], "head": [], "other": []}
    for name, param in model.named_parameters():
        if param.requires_grad:
            kind = "adapter" if _is_adapter_param(name) else "head" if name.startswith(head_path + ".") else "other"
            groups[kind].append((name, param))
    return groups


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Adapter, head, trainable and total parameter counts.

    As the paper's tables count them: `adapter_params` holds only adapter matrices (a head adapter's included);
    trainable classifier-head weights are reported separately as `head_params`.
    """
    groups = trainable_groups(model)
    size = lambda kind: sum(p.numel() for _, p in groups[kind])  # noqa: E731
    return dict(
        adapter_params=size("adapter"),
        head_params=size("head"),
        trainable_params=size("adapter") + size("head") + size("other"),
        total_params=sum(p.numel() for p in model.parameters()),
    )


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its base weight and remove the wrappers (in place)."""
    config = getattr(model, "adapter_config", None)
    if config is None:
        raise ValueError("this model has no adapters to merge")
    if config.method == "ssmlora":
        raise ValueError(
            "SSMLoRA cannot be merged into the base weights: its output depends on a state chain and a "
            "per-token min-max normalisation, which are not linear in the input. Keep the adapters at inference"
        )
    for name, wrapper in adapter_modules(model).items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, wrapper.merged_base())
    model.adapter_config = None
    model.adapter_sites = []
    return model


def reset_ssm_state(model: nn.Module) -> None:
    """Forget SSMLoRA's carried state (``carry`` mode); a no-op for models without SSMLoRA."""
    bus = getattr(model, BUS_NAME, None)
    if isinstance(bus, SSMStateBus):
        bus.reset()


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Hugging Face gradient checkpointing in its non-reentrant form.

    The reentrant form drops the gradients of a checkpointed block whose inputs do not require grad, which is
    every block of a frozen backbone; the non-reentrant form does not. Its `context_fn` gives every checkpointed
    call a tape of SSMLoRA entry states, so that a recomputation sees the state its own forward saw, however
    many forward passes ran before the backward.
    """
    model.gradient_checkpointing_enable(
        gradient_checkpointing_kwargs={"use_reentrant": False, "context_fn": checkpoint_context_fn}
    )


def model_fingerprint(model: nn.Module) -> dict:
    """What an adapter checkpoint must agree with to load into `model`."""
    cfg = model.config
    return {
        "model_type": cfg.model_type,
        "num_hidden_layers": num_layers(model),
        "hidden_size": getattr(cfg, "hidden_size", getattr(cfg, "n_embd", None)),
        "num_labels": cfg.num_labels,
    }
