"""`AdapterConfig`: the single source of every adapter hyperparameter.

It is saved beside the adapter weights (`adapter_config.json`), so a checkpoint always says how it was made.
Each field's allowed values sit in its metadata (`choices`, `gt`, `ge`, `lt`, `le`) beside its default and help;
`check_fields` enforces them, here and for the experiment's own configs, so a rule is written once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from ssmlora.methods import get_method

SSM_MODES = ("depth", "carry", "scan")
SCAN_DIRECTIONS = ("auto", "causal", "bidirectional")
SCALES = ("alpha/r", "alpha")
TARGET_SCHEMES = ("all", "qv")
NORMS = ("minmax", "smooth")  # the same tuple as ssmlora.ssm.NORMS, kept here so config imports no torch


class ConfigValueError(ValueError):
    """A setting outside its allowed values. `name`, `value` and `allowed` let a CLI name its own flag."""

    def __init__(self, name: str, value, allowed: str) -> None:
        self.name, self.value, self.allowed = name, value, allowed
        super().__init__(f"{name} = {value!r} is not allowed: {allowed}")


_BOUNDS = {"gt": (">", lambda v, b: v > b), "ge": (">=", lambda v, b: v >= b),
           "lt": ("<", lambda v, b: v < b), "le": ("<=", lambda v, b: v <= b)}


def check_value(name: str, value, rules) -> None:
    """Check one value (each element of a list, each value of a dict) against a field's metadata rules."""
    if value is None:
        return
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
    items = [x for item in items for x in (item if isinstance(item, (list, tuple)) else [item])]  # dict of lists
    for item in items:
        if "choices" in rules and item not in rules["choices"]:
            raise ConfigValueError(name, item, f"choose one of {', '.join(map(str, rules['choices']))}")
        bounds = [(sym, test, rules[key]) for key, (sym, test) in _BOUNDS.items() if key in rules]
        if bounds:
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                raise ConfigValueError(name, item, "must be a number")
            if rules.get("integer") and not float(item).is_integer():
                raise ConfigValueError(name, item, "must be a whole number")
            for sym, test, bound in bounds:
                if not test(item, bound):
                    allowed = " and ".join(f"{s} {b:g}" for s, _, b in bounds)
                    raise ConfigValueError(name, item, f"must be {allowed}")


def check_fields(config) -> None:
    """Every field of a dataclass instance against the rules in its metadata. Raises ConfigValueError."""
    for f in fields(config):
        check_value(f.name, getattr(config, f.name), f.metadata)


@dataclass
class AdapterConfig:
    """How to adapt a frozen `*ForSequenceClassification` model (docs/adapters.md)."""

    method: str = field(
        default="lora",
        metadata={"help": "a registered method (ssmlora.methods): lora | ssmlora | frozen (no adapters, only the "
                  "classifier head trains: the cost floor)"},
    )
    r: int = field(default=8, metadata={"help": "adapter rank (paper: 8; rank sweeps over 1, 2, 4, 8, 16)",
                                        "ge": 1, "integer": True})
    alpha: float = field(default=16.0, metadata={"help": "scaling numerator (paper: 16)", "gt": 0})
    dropout: float = field(
        default=0.0,
        metadata={"help": "LoRA: dropout on the adapter input; SSMLoRA: on the normalised state term (0, as PEFT's "
                  "default; the paper used 0.1)", "ge": 0, "lt": 1},
    )
    targets: str | list[str] = field(
        default="all",
        metadata={
            "help": "all = the method's insertion scheme (lora: q,k,v,o,FFN every layer; ssmlora: q even, v odd, "
            "o and FFN every layer, plus the head); qv = the paper's rank-sweep scheme; or a list of roles (q, k, "
            "v, o, ffn-in, ffn-gate, ffn-out, head) or module names (e.g. q_proj, query) adapted on every layer"
        },
    )
    layers: list[int] | None = field(
        default=None, metadata={"help": "layer indices to adapt (default: all layers); the head is not a layer",
                                "ge": 0, "integer": True}
    )
    ssm_mode: str = field(
        default="depth",
        metadata={
            "help": "SSMLoRA time axis: depth (state flows through same-type adapters in depth order, reset every "
            "forward; the paper's text) | carry (state kept across forward passes, as the released code) | scan "
            "(state runs over the token positions of each sequence inside every adapted projection; see "
            "scan_direction)",
            "choices": SSM_MODES,
        },
    )
    scan_direction: str = field(
        default="auto",
        metadata={
            "help": "ssm_mode=scan only: auto (causal for decoder families such as llama and gpt2, bidirectional "
            "for encoders such as bert and roberta; an error for a family that declares neither) | causal (state "
            "from earlier tokens only) | bidirectional (sum of a forward and a backward scan)",
            "choices": SCAN_DIRECTIONS,
        },
    )
    scale: str = field(default="alpha/r", metadata={"help": "adapter output scale: alpha/r (LoRA convention) | "
                                                            "alpha (released code)", "choices": SCALES})
    train_head: bool = field(default=True, metadata={"help": "train the classifier head's weights; a head projection "
                                                       "that carries an adapter stays frozen, its adapter trains"})
    eps: float = field(default=1e-6, metadata={"help": "SSMLoRA min-max normalisation epsilon (norm='minmax' only)",
                                               "gt": 0})
    norm: str = field(
        default="smooth",
        metadata={
            "help": "SSMLoRA state normalisation, per token over its r features, R = max - min: minmax = "
            "(h - min) / (R + eps), the released code; its gradient at a flat state (every state at init) is "
            "1/eps, so once Wb != 0 the Wd gradients are ~1e4-1e5 times all others and gradient clipping "
            "starves the rest of the step | smooth = (h - min) / sqrt(R^2 + 1): min-max for R >> 1, only a "
            "shift for R << 1, output still in [0, 1), derivative bounded by 1 (see ssmlora/ssm.py)",
            "choices": NORMS,
        },
    )

    def __post_init__(self) -> None:
        get_method(self.method)  # unknown names raise, listing the registered ones
        if isinstance(self.targets, str):
            if self.targets not in TARGET_SCHEMES:
                raise ConfigValueError("targets", self.targets, "use all, qv, or a list of roles / module names")
        else:
            self.targets = list(self.targets)
            if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
                raise ConfigValueError("targets", self.targets, "a list must hold non-empty module names")
        if self.layers is not None:
            self.layers = [int(i) for i in self.layers]
            if not self.layers:
                raise ConfigValueError("layers", [], "an empty list adapts nothing: give None for all layers")
        check_fields(self)

    @classmethod
    def released_code(cls, **overrides) -> "AdapterConfig":
        """SSMLoRA as the authors' released code computes it: state carried across forward passes, output scale
        alpha (not alpha/r), eps 1e-8 in the exact min-max normalisation, dropout 0.1 on the state term, and
        no head weights trained outside the adapters. `overrides` change single fields (e.g. r)."""
        settings = dict(
            method="ssmlora", ssm_mode="carry", scale="alpha", eps=1e-8, norm="minmax", dropout=0.1,
            train_head=False,
        )
        return cls(**{**settings, **overrides})

    @property
    def scaling(self) -> float:
        return self.alpha / self.r if self.scale == "alpha/r" else float(self.alpha)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "AdapterConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"adapter config has unknown fields {unknown}: written by another version of ssmlora?")
        return cls(**data)
