"""ssmlora: LoRA and SSMLoRA (arXiv 2502.04958) adapters and a long-context experiment suite.

Layers, from the ground up (each imports only those before it):
- `data_prep` and `results` (separate packages, no torch): the long-document tasks; the sweep folder's layout and
  files (the results contract, cell claims, atomic writes);
- `ssmlora` itself, the adapter library: config, methods (the registry), lora, ssm, scan, arch, inject,
  serialization, params; torch and transformers only;
- `ssmlora.lab`: the Lightning side: backbone loading, data module, LightningModule, profilers, probe, one cell;
- `ssmlora.sweep`: the sweep: its config tree, validation, cell processes, orchestration, CLI;
- `experiments/run.py` and `plots/` (which reads only `results`).

The public names load lazily, so `import ssmlora` stays light.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "AdapterConfig": "ssmlora.config",
    "Method": "ssmlora.methods",
    "get_method": "ssmlora.methods",
    "method_names": "ssmlora.methods",
    "register_method": "ssmlora.methods",
    "LoRALinear": "ssmlora.lora",
    "SSMLoRALinear": "ssmlora.ssm",
    "SSMStateBus": "ssmlora.ssm",
    "ScanLoRALinear": "ssmlora.scan",
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
