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


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("full", "every entry trained and tested at every length, 3 seeds: the whole grid, sized for a GPU"),
)}
DEFAULT_PRESET = "full"


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
