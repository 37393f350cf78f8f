"""`SweepConfig`: the one configuration tree of a sweep.

It holds the grid (methods, lengths, seeds), the sections each cell reads: `model` (ModelConfig), `adapter`
(the adapter library's AdapterConfig, whose `method` the grid supplies), `optim` (OptimConfig), `data`
(DataConfig) and `runtime` (RuntimeConfig), and the two the sweep alone reads: `tune` (TuneConfig, the
selection on validation before the cells) and `design` (DesignConfig, which cells the grid holds). Every
setting has its default, help and allowed values in exactly one field of one section; the command line is
generated from the tree (one flag per field, named after it).

`methods` holds the entries as given; construction parses them once into `variants` (ssmlora.sweep.variants),
which is what everything downstream reads.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from data_prep import get_task
from ssmlora.config import AdapterConfig
from ssmlora.lab.backbone import ModelConfig
from ssmlora.lab.cell import CellConfig
from ssmlora.lab.cell_memory import MEMORY_PROTOCOL
from ssmlora.lab.data import DataConfig
from ssmlora.lab.module import OptimConfig
from ssmlora.lab.runtime import RuntimeConfig, batch_plan
from ssmlora.methods import get_method
from ssmlora.sweep.variants import MethodVariant, VariantError, control_names, parse_methods
from ssmlora.params import adapter_parameters

SECTIONS = ("model", "adapter", "optim", "tune", "design", "data", "runtime")
TRAIN_AT = ("every", "shortest")
TUNE_KNOBS = ("", "lr")
# Two rates a decade apart per method, one at each method's usual rate (LoRA's are ~10x SSMLoRA's in the paper's
# setting): the grid the registry defaults were selected from.
DEFAULT_TUNE_GRID = {"*": [5e-5, 5e-4]}
GRID = ("methods", "lengths", "seeds")
NOT_FLAT = {("adapter", "method")}  # the grid's `methods` supplies it per cell
# The two methods and the controls that tell their difference from their rates and sizes (ssmlora.sweep.variants)
DEFAULT_METHODS = ("lora", "ssmlora", "lora-at-ssmlora-lr", "ssmlora-at-lora-lr", "lora-at-ssmlora-params")


@dataclass
class TuneConfig:
    """Selection on the validation split before the sweep's cells run (ssmlora.sweep.tune); cells never read it."""

    tune: str = field(default="", metadata={
        "help": "select a knob on the validation split before the sweep: lr (each method's adapter learning "
                "rate over --tune-grid, at each --tune-len, first seed); empty: no tuning", "choices": TUNE_KNOBS})
    tune_grid: dict[str, list[float]] = field(default_factory=lambda: dict(DEFAULT_TUNE_GRID), metadata={
        "help": "values tried per method, increasing: METHOD=V1,V2,... (one argument per method) or V1,V2,... "
                "for every method; METHOD:VARIANT=... overrides METHOD's list for that variant", "gt": 0})
    tune_len: list[int] = field(default_factory=list, metadata={
        "help": "context lengths of the tuning trials, comma-separated, one choice per length; a cell uses the "
                "nearest tuned length's choice (empty: the sweep's shortest)", "ge": 0, "integer": True})
    tune_only: bool = field(default=False, metadata={
        "help": "stop after --tune's selection: write tune/tuning.json and train no sweep cell (the test split is "
                "never opened)"})

    # --tune-grid is resolved per --methods entry, once, by ssmlora.sweep.variants.
    NOT_IDENTITY = ("tune_only",)  # whether the sweep goes on after selecting, not what either computes


@dataclass
class DesignConfig:
    """Which cells the grid holds: where the accuracy cells train, and the cost cells beside them.

    A cost of training (memory, step time, throughput) does not depend on the seed or on a control's rate, and
    a few steps measure it; an accuracy needs trained weights and many test documents. So a design may train the
    accuracy cells at the shortest length only (C1 there, and C3 from their longer reads) and measure the cost
    curve once per method and length in cost cells."""

    train_at: str = field(default="every", metadata={
        "help": "every: each entry trains and tests at every length (C1 and C2 at each); shortest: the accuracy "
                "cells train and test at the shortest length only and read further with --eval-lengths (C1 and "
                "C3; C2 needs every)", "choices": TRAIN_AT})
    cost_methods: list[str] = field(default_factory=list, metadata={
        "help": "entries of --methods that also get a cost cell at every length: the first seed, --cost-steps "
                "optimizer steps timed, the memory pass, no probe and nothing scored; the cost figures then come "
                "from the cost cells alone (empty: from the accuracy cells)"})
    cost_steps: int = field(default=3, metadata={
        "help": "optimizer steps of a cost cell: the first is warm-up, the others are timed", "ge": 2,
                "integer": True})


@dataclass
class SweepConfig:
    """Everything that defines a sweep: the grid and the settings every cell shares."""

    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS), metadata={
        "help": "grid: adapter methods from the registry, comma-separated (lora, ssmlora, frozen or your own); "
        "METHOD:VARIANT sets the method's variant for that entry alone, e.g. ssmlora:depth,ssmlora:scan "
        "(ssmlora's variant is its ssm_mode; plain ssmlora uses --ssm-mode); or a registered control: "
        f"{', '.join(control_names())} (docs/adapters.md)"})
    lengths: list[int] = field(default_factory=lambda: [512, 1024, 2048, 4096], metadata={
        "help": "grid: context lengths L in tokens"})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={
        "help": "grid: seeds, comma-separated; a seed varies adapter init, dropout, batch order and the probe's "
                "documents, never the data: every seed scores the same test documents (crossed)",
        "ge": 0, "integer": True})
    model: ModelConfig = field(default_factory=ModelConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    design: DesignConfig = field(default_factory=DesignConfig)
    data: DataConfig = field(default_factory=DataConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self) -> None:
        # Not a dataclass field: derived from `methods` and the sections, so asdict() and config.json hold the
        # entries once, as given. Raises VariantError for an entry (or --lr / --tune-grid key) that names nothing.
        self.variants: tuple[MethodVariant, ...] = parse_methods(self.methods, self.adapter, self.optim.lr,
                                                                 self.tune.tune_grid, self.count_adapter_parameters)

    def variant(self, entry: MethodVariant | str) -> MethodVariant:
        """The grid's variant of a --methods entry; an entry outside the grid is parsed against this sweep's
        settings (benchmarks run single methods of the default sweep)."""
        if isinstance(entry, MethodVariant):
            return entry
        found = [v for v in self.variants if v.label == entry]
        return found[0] if found else parse_methods([entry], self.adapter, self.optim.lr, self.tune.tune_grid,
                                                    self.count_adapter_parameters)[0]

    def count_adapter_parameters(self, adapter: AdapterConfig) -> int:
        """Adapter parameters `adapter` puts on this sweep's model with its task's head (meta device, no
        weights read); sizes the parameter-matched control."""
        try:
            num_labels = len(get_task(self.data.task).labels)
        except ValueError:
            num_labels = 2  # an unknown task: validate() names it; the head's size barely moves the count
        try:
            return adapter_parameters(self.model.model, adapter, num_labels)
        except ValueError as err:
            raise VariantError(f"cannot count adapter parameters on --model {self.model.model}: {err}") from None

    @classmethod
    def from_flat(cls, **values) -> "SweepConfig":
        """Build from flat names (the CLI's flags without dashes): `SweepConfig.from_flat(r=4, max_steps=2)`.
        May raise ConfigValueError (from AdapterConfig's own checks) or TypeError for an unknown name."""
        routes = flat_fields()
        unknown = sorted(set(values) - set(routes) - set(GRID))
        if unknown:
            raise TypeError(f"unknown settings {unknown}: see `python experiments/run.py --help`")
        parts: dict[str, dict] = {s: {} for s in SECTIONS}
        for name, value in values.items():
            if name not in GRID:
                parts[routes[name][0]][name] = value
        grid = {k: values[k] for k in GRID if k in values}
        return cls(**grid, **{s: section_type(s)(**parts[s]) for s in SECTIONS})

    def flat(self) -> dict:
        """Every setting by its flat name (the inverse of `from_flat`)."""
        return {**{k: getattr(self, k) for k in GRID},
                **{name: getattr(getattr(self, s), name) for name, (s, _) in flat_fields().items()}}

    def identity(self) -> dict:
        """What makes two sweeps' rows comparable: every setting but the grid and plumbing (paths, threads)."""
        out = {}
        for s in SECTIONS:
            section = getattr(self, s)
            skip = set(getattr(section, "NOT_IDENTITY", ())) | {f for sec, f in NOT_FLAT if sec == s}
            out[s] = {k: v for k, v in asdict(section).items() if k not in skip}
        out["runtime"]["device"] = self.runtime.device_type()  # `auto` on a CPU and on a GPU are two sweeps
        out["memory_protocol"] = MEMORY_PROTOCOL
        return json.loads(json.dumps(out))  # tuples become lists, as they read back from config.json

    def identity_hash(self) -> str:
        """sha1 of the identity: stamped on every result row, so a row is reused only by its own configuration."""
        return hashlib.sha1(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()

    def slug(self) -> str:
        """Readable folder name plus the identity hash: same configuration -> same folder."""
        model = Path(self.model.model.rstrip("/")).name.replace("/", "_") or "model"
        return f"{self.data.task}-{model}-{self.identity_hash()[:8]}"

    def cell(self, entry: MethodVariant | str, length: int, seed: int, role: str = "accuracy") -> CellConfig:
        """The configuration of one cell of the grid (`entry`: a variant, or its label, e.g. ssmlora:scan).

        A cost cell trains --cost-steps steps from a zero head (the probe would only set the head's values, which
        do not change what a step costs) and reads nothing further. A parameter-matched control is not read
        further either: its claim, C1, is decided where it trained."""
        variant = self.variant(entry)
        optim, data = self.optim, self.data
        if role == "cost":
            optim = replace(optim, max_steps=self.design.cost_steps, epochs=0, val_every=0, head_init="random")
        if role == "cost" or variant.params_of:
            data = replace(data, eval_lengths=[])
        return CellConfig(adapter=variant.adapter(self.adapter), max_len=length, seed=seed, lr=variant.lr,
                          model=self.model, optim=optim, data=data, runtime=self.runtime, label=variant.label,
                          role=role)

    def cells(self) -> list[CellConfig]:
        """The accuracy cells, short lengths first, so a sweep cut short still has complete curves at the cheap end
        (with --train-at shortest, at the shortest length alone); then the cost cells, short lengths first."""
        lengths = sorted(self.lengths)
        trained = lengths[:1] if self.design.train_at == "shortest" else lengths
        accuracy = [self.cell(v, L, s) for L in trained for s in self.seeds for v in self.variants]
        costed = [v for v in self.variants if v.label in self.design.cost_methods]
        return accuracy + [self.cell(v, L, self.seeds[0], "cost") for L in lengths for v in costed]

    def effective_batch(self, length: int) -> int:
        return batch_plan(self.optim.tokens_per_step, self.runtime, length)[0]

    def row_identity(self, entry: MethodVariant | str) -> dict:
        """The entry's identity settings as result columns (e.g. ssmlora's ssm_mode); empty for the others."""
        variant = self.variant(entry)
        keys = get_method(variant.method).identity
        return {"ssm_mode": variant.adapter(self.adapter).ssm_mode if "ssm_mode" in keys else ""}


def section_type(section: str) -> type:
    return _SECTION_TYPES[section]


_SECTION_TYPES = {"model": ModelConfig, "adapter": AdapterConfig, "optim": OptimConfig, "tune": TuneConfig,
                  "design": DesignConfig, "data": DataConfig, "runtime": RuntimeConfig}


def flat_fields() -> dict[str, tuple[str, object]]:
    """{flat name: (section, dataclass field)} for every settable field of the tree (names are unique)."""
    routes: dict[str, tuple[str, object]] = {}
    for s in SECTIONS:
        for f in fields(_SECTION_TYPES[s]):
            if (s, f.name) in NOT_FLAT:
                continue
            if f.name in routes or f.name in GRID:
                raise AssertionError(f"setting {f.name!r} is declared twice (in {routes[f.name][0]} and {s})")
            routes[f.name] = (s, f)
    return routes
