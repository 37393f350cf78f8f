"""ssmlora: LoRA and SSMLoRA (arXiv 2502.04958) adapters and a long-context experiment suite.

The public names load lazily, so light modules (`ssmlora.results`, used by `plots`) import without torch.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "AdapterConfig": "ssmlora.config",
    "LoRALinear": "ssmlora.lora",
    "SSMLoRALinear": "ssmlora.ssm",
    "SSMStateBus": "ssmlora.ssm",
    "count_parameters": "ssmlora.inject",
    "enable_gradient_checkpointing": "ssmlora.inject",
    "inject_adapters": "ssmlora.inject",
    "merge_adapters": "ssmlora.inject",
    "reset_ssm_state": "ssmlora.inject",
    "load_adapters": "ssmlora.serialization",
    "save_adapters": "ssmlora.serialization",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ssmlora' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
