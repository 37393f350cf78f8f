"""Adapter checkpoints: `adapter_config.json` + `adapter_model.safetensors`, as PEFT names its files.

Two formats share those names. This library's (`format="ssmlora"`, the default) holds any method. PEFT's
(`format="peft"`, LoRA only; ssmlora.peft_format) is a folder `peft.PeftModel.from_pretrained` loads;
`load_adapters` reads either, telling them apart by the config's `peft_type`.

The safetensors file holds only what training changed: adapter matrices, the head (if trained) and, in
SSMLoRA's ``carry`` mode, the carried states. A carry-mode score depends on the state the evaluation started
from, so `ssm_state_snapshot` takes that state before scoring and `save_adapters(..., ssm_state=snapshot)`
stores exactly it; `load_adapters` restores it bit for bit. The JSON holds the `AdapterConfig` and a fingerprint of the
model it was trained on, so loading into another model fails with a message instead of a shape error.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from ssmlora.config import AdapterConfig
from ssmlora.inject import BUS_NAME, inject_adapters, model_fingerprint
from ssmlora.peft_format import CONFIG_NAME, WEIGHTS_NAME, is_peft_folder, load_peft, save_peft
from ssmlora.ssm import SSMStateBus

FORMATS = ("ssmlora", "peft")
FORMAT_VERSION = 1
_STATE_PREFIX = "ssm_state::"


def _carry_bus(model: nn.Module) -> SSMStateBus | None:
    config: AdapterConfig | None = getattr(model, "adapter_config", None)
    bus = getattr(model, BUS_NAME, None)
    if config is None or config.method != "ssmlora" or config.ssm_mode != "carry" or not isinstance(bus, SSMStateBus):
        return None
    return bus


def ssm_state_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the states SSMLoRA carries into the next forward pass (``carry`` mode; `{}` otherwise).

    Take it right before scoring: the scores then follow from the weights and this snapshot alone.
    Chains that hold no state yet (they start from zero) are absent.
    """
    bus = _carry_bus(model)
    if bus is None:
        return {}
    return {key: state.detach().clone() for key, state in bus.states().items() if state.numel()}


def load_ssm_state(model: nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
    """Make `snapshot` (from `ssm_state_snapshot`) the carried state of `model`; absent chains start from zero."""
    bus = _carry_bus(model)
    if bus is None:
        if snapshot:
            raise ValueError("this model carries no SSMLoRA state (not SSMLoRA in carry mode): cannot load one")
        return
    unknown = sorted(set(snapshot) - set(bus.keys))
    if unknown:
        raise ValueError(f"SSM state snapshot has chains {unknown[:5]} that this model does not have")
    device = next(model.parameters()).device
    bus.reset()
    bus.load_states({key: state.detach().clone().to(device) for key, state in snapshot.items()})


def save_adapters(
    model: nn.Module, directory: str | Path, ssm_state: dict[str, torch.Tensor] | None = None,
    format: str = "ssmlora",  # noqa: A002 - the word users know from PEFT and safetensors
) -> Path:
    """Write the trained adapter (and head) weights of `model` to `directory`.

    In ``carry`` mode the carried SSMLoRA states are written too: `ssm_state` (a `ssm_state_snapshot`, e.g. the
    one taken before the test score) if given, else the model's live state. `format="peft"` writes a LoRA as
    PEFT does (ssmlora.peft_format).
    """
    if format not in FORMATS:
        raise ValueError(f"format {format!r}: choose one of {', '.join(FORMATS)}")
    config: AdapterConfig | None = getattr(model, "adapter_config", None)
    if config is None:
        raise ValueError("this model has no adapters: call inject_adapters(model, config) first")
    if format == "peft":
        return save_peft(model, directory)
    bus = _carry_bus(model)
    if ssm_state is not None and bus is None and ssm_state:
        raise ValueError("ssm_state given, but this model carries no SSMLoRA state (not SSMLoRA in carry mode)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: p.detach().contiguous() for name, p in _saved_parameters(model).items()}
    if bus is not None:
        states = ssm_state_snapshot(model) if ssm_state is None else ssm_state
        unknown = sorted(set(states) - set(bus.keys))
        if unknown:
            raise ValueError(f"ssm_state has chains {unknown[:5]} that this model does not have")
        for key, state in states.items():
            tensors[_STATE_PREFIX + key] = state.detach().contiguous()
    save_file(tensors, directory / WEIGHTS_NAME, metadata={"format": "pt", "ssmlora_format": str(FORMAT_VERSION)})
    meta = {
        "format_version": FORMAT_VERSION,
        "adapter": config.to_dict(),
        "model": model_fingerprint(model),
        "adapted_modules": [site.name for site in model.adapter_sites],
    }
    (directory / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def _saved_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """What a checkpoint holds: every trainable parameter, plus the whole classifier head, which is new (not in
    the pretrained weights) even where it is frozen (an adapted head projection, or one fitted by a probe)."""
    head = model.adapter_head_path + "."
    return {name: p for name, p in model.named_parameters() if p.requires_grad or name.startswith(head)}


def load_adapters(model: nn.Module, directory: str | Path) -> nn.Module:
    """Load a `save_adapters` checkpoint, or a PEFT LoRA folder, into `model` (injecting its adapters first if it
    has none; a PEFT folder needs a fresh model)."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not config_path.exists() or not weights_path.exists():
        raise FileNotFoundError(f"{directory} is not an adapter checkpoint: it needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    if is_peft_folder(directory):
        return load_peft(model, directory)
    meta = json.loads(config_path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{config_path} has format_version {meta.get('format_version')!r}; this ssmlora reads {FORMAT_VERSION}"
        )
    saved = AdapterConfig.from_dict(meta["adapter"])
    fingerprint = model_fingerprint(model)
    diff = {k: (v, fingerprint.get(k)) for k, v in meta["model"].items() if fingerprint.get(k) != v}
    if diff:
        detail = ", ".join(f"{k}: saved {a!r} vs model {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"adapter checkpoint {directory} was trained on another model ({detail})")

    current: AdapterConfig | None = getattr(model, "adapter_config", None)
    if current is None:
        inject_adapters(model, saved)
    elif current != saved:
        changed = {k: (v, getattr(current, k)) for k, v in saved.to_dict().items() if getattr(current, k) != v}
        detail = ", ".join(f"{k}: saved {a!r} vs model {b!r}" for k, (a, b) in changed.items())
        raise ValueError(f"adapter checkpoint {directory} does not match this model's adapters ({detail})")

    tensors = load_file(weights_path)
    states = {k[len(_STATE_PREFIX):]: v for k, v in tensors.items() if k.startswith(_STATE_PREFIX)}
    weights = {k: v for k, v in tensors.items() if not k.startswith(_STATE_PREFIX)}
    params = _saved_parameters(model)
    expected = set(params)
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise ValueError(
            f"adapter checkpoint {directory} does not fit this model: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]} (saved from another insertion scheme or architecture?)"
        )
    for name, value in weights.items():
        if params[name].shape != value.shape:
            raise ValueError(
                f"adapter checkpoint {directory}: {name} has shape {tuple(value.shape)} but the model expects "
                f"{tuple(params[name].shape)} (another rank or model size?)"
            )
        params[name].data.copy_(value)
    if _carry_bus(model) is not None:
        load_ssm_state(model, states)  # replaces any live state: the model continues from the saved one
    return model
