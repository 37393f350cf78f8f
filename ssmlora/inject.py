"""Putting adapters into a Hugging Face `*ForSequenceClassification` model, counting and merging them."""

from __future__ import annotations

import torch.nn as nn

from ssmlora.arch import family_of, find_head, num_layers, select_sites
from ssmlora.config import AdapterConfig
from ssmlora.lora import AdapterLinear
from ssmlora.methods import BUS_NAME, adapter_param_names, get_method
from ssmlora.ssm import SSMStateBus


def inject_adapters(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """Freeze `model`, wrap the scheme's projections in `LoRALinear` / `SSMLoRALinear`, return it (in place).

    Which projections are wrapped, and in what, is the method's registry entry (ssmlora.methods). The
    classifier head trains fully when `config.train_head`, except a head projection that carries an adapter:
    that one stays frozen and only its adapter trains (as in the released code), so a head weight is either
    adapted or trained, never both, and the paper's parameter counts (adapter matrices only) stay meaningful.
    A method without a layer (`frozen`) trains only the head: the cost floor of the sweep.
    """
    if getattr(model, "adapter_config", None) is not None:
        raise ValueError("this model already has adapters: build a fresh model (or load_adapters into one)")
    method = get_method(config.method)
    family = family_of(model)
    head_path, _ = find_head(model, family)
    sites = [] if method.layer is None else select_sites(model, family, method, config.targets, config.layers)
    for param in model.parameters():
        param.requires_grad_(False)

    wrappers = [_wrap(model, site, method, config) for site in sites]
    if method.link is not None:
        method.link(model, sites, wrappers, config)

    for name, param in model.named_parameters():
        if name.startswith(head_path + ".") and not _is_adapter_param(name):
            param.requires_grad_(config.train_head)
    for wrapper, site in zip(wrappers, sites):
        if site.role == "head":
            wrapper.base.requires_grad_(False)
    model.adapter_config = config
    model.adapter_head_path = head_path
    model.adapter_sites = sites
    return model


def _wrap(model: nn.Module, site, method, config: AdapterConfig) -> AdapterLinear:
    parent_name, _, child = site.name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    base = getattr(parent, child)
    wrapper = method.wrap(base, config, site.out_slice)
    wrapper.train(base.training)  # a new module defaults to train mode; follow the model's mode
    setattr(parent, child, wrapper)
    return wrapper


def _is_adapter_param(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in adapter_param_names()


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
    if not get_method(config.method).mergeable:
        raise ValueError(
            f"{config.method} cannot be merged into the base weights: its output is not linear in the input "
            "(SSMLoRA: a state chain and a per-token min-max normalisation). Keep the adapters at inference"
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
    """Hugging Face's own switch in its non-reentrant form; kept as a short name for the sweep and old code.

    Any way of checkpointing whole layers works on every adapter method (ssmlora.recompute): this, HF's
    `gradient_checkpointing_enable` with either `use_reentrant`, `transformers.Trainer(gradient_checkpointing=
    True)`, or `torch.utils.checkpoint` around one layer.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers 5 renamed the switch
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def model_fingerprint(model: nn.Module) -> dict:
    """What an adapter checkpoint must agree with to load into `model`."""
    cfg = model.config
    return {
        "model_type": cfg.model_type,
        "num_hidden_layers": num_layers(model),
        "hidden_size": getattr(cfg, "hidden_size", getattr(cfg, "n_embd", None)),
        "num_labels": cfg.num_labels,
    }
