"""Named presets of the sweep: sets of settings over the configuration tree's defaults, picked with `--preset`.

A preset fills in defaults; every flag given on the command line still wins over it. The preset a run used is
recorded in config.json and named on the console's first line. It is not part of the sweep's identity: the
settings it supplies are, so a preset and the same flags written out land in the same sweep folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Preset:
    name: str
    purpose: str
    settings: dict = field(default_factory=dict)  # flat setting names (SweepConfig.from_flat) -> values


# The CPU design (docs/tuning-notes.md, "The CPU default"): accuracy where training moves the model and test
# documents are cheap, cost curves once per method and length. Its budget and rates were selected on validation.
CPU = {
    "methods": ["lora", "ssmlora", "lora-at-ssmlora-lr", "lora-at-ssmlora-params"],
    "seeds": [0, 1, 2],
    "train_at": "shortest",
    "eval_lengths": ["4x"],
    "read_docs": 200,
    "n_test": 600,
    "eval_tokens": 600 * 512,
    "max_steps": 20,
    "tokens_per_step": 4096,
    "cost_methods": ["lora", "ssmlora"],
    "cost_steps": 4,
}

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("cpu", "accuracy trained at the shortest length (3 seeds, up to 600 test documents, the first 200 read "
                  "at 4x: C1 and C3) and cost cells for LoRA and SSMLoRA at every length; sized for a 2-core CPU",
           CPU),
    Preset("full", "every entry trained and tested at every length, 3 seeds: the whole grid (C1, C2), sized for a "
                   "GPU"),
)}
DEFAULT_PRESET = "cpu"


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
