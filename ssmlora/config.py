"""`AdapterConfig`: the single source of every adapter hyperparameter.

It is saved beside the adapter weights (`adapter_config.json`), so a checkpoint always says how it was made.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

METHODS = ("lora", "ssmlora", "frozen")
SSM_MODES = ("depth", "carry", "scan")
SCALES = ("alpha/r", "alpha")
TARGET_SCHEMES = ("all", "qv")
NORMS = ("minmax", "smooth")  # the same tuple as ssmlora.ssm.NORMS, kept here so config imports no torch


@dataclass
class AdapterConfig:
    """How to adapt a frozen `*ForSequenceClassification` model: method, rank, insertion scheme, SSMLoRA options."""

    method: str = field(
        default="lora",
        metadata={"help": "lora | ssmlora | frozen (no adapters, only the classifier head trains: the cost floor)"},
    )
    r: int = field(default=8, metadata={"help": "adapter rank (paper: 8; rank sweeps over 1, 2, 4, 8, 16)"})
    alpha: float = field(default=16.0, metadata={"help": "scaling numerator (paper: 16)"})
    dropout: float = field(
        default=0.1,
        metadata={"help": "LoRA: dropout on the adapter input; SSMLoRA: dropout on the normalised state term"},
    )
    targets: str | list[str] = field(
        default="all",
        metadata={
            "help": "'all' = the method's insertion scheme (lora: q,k,v,o,FFN every layer; ssmlora: q even, "
            "v odd, o and FFN every layer, plus the head); 'qv' = the paper's rank-sweep scheme; or an explicit "
            "list of roles (q, k, v, o, ffn-in, ffn-gate, ffn-out, head) or module names (e.g. 'q_proj', "
            "'query'), adapted on every selected layer"
        },
    )
    layers: list[int] | None = field(
        default=None, metadata={"help": "layer indices to adapt (None = all layers); the head is not a layer"}
    )
    ssm_mode: str = field(
        default="depth",
        metadata={
            "help": "SSMLoRA time axis: depth (state flows through same-type adapters in depth order, reset "
            "every forward; the paper's text) | carry (state kept across forward passes, as the released "
            "code) | scan (recurrence over token positions; not implemented yet)"
        },
    )
    scale: str = field(
        default="alpha/r", metadata={"help": "adapter output scale: alpha/r (LoRA convention) | alpha (released code)"}
    )
    train_head: bool = field(default=True, metadata={"help": "train the classifier head fully (new, random weights)"})
    eps: float = field(default=1e-6, metadata={"help": "SSMLoRA min-max normalisation epsilon (norm='minmax' only)"})
    norm: str = field(
        default="minmax",
        metadata={
            "help": "SSMLoRA state normalisation, per token over its r features, R = max - min: minmax = "
            "(h - min) / (R + eps), the released code; its gradient at a flat state (every state at init) is "
            "1/eps, so once Wb != 0 the Wd gradients are ~1e4-1e5 times all others and gradient clipping "
            "starves the rest of the step | smooth = (h - min) / sqrt(R^2 + 1): min-max for R >> 1, only a "
            "shift for R << 1, output still in [0, 1), derivative bounded by 1 (see ssmlora/ssm.py)"
        },
    )
    freeze_adapted_head: bool = field(
        default=False,
        metadata={
            "help": "True: a head projection that carries an adapter is frozen and its adapter trains on top (the "
            "released code), so a head projection is either adapted or trained, never both; other head modules "
            "(RoBERTa's classifier.dense) and an unadapted head still follow train_head. False: the adapted head "
            "projection also trains fully when train_head. Parameter counts are unchanged in kind: adapter "
            "matrices count as adapter_params, trainable head weights as head_params"
        },
    )

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.ssm_mode not in SSM_MODES:
            raise ValueError(f"unknown ssm_mode {self.ssm_mode!r}: choose one of {', '.join(SSM_MODES)}")
        if self.ssm_mode == "scan":
            raise ValueError("ssm_mode 'scan' (a recurrence over token positions) is not implemented yet: use depth or carry")
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}: choose one of {', '.join(NORMS)}")
        if self.scale not in SCALES:
            raise ValueError(f"unknown scale {self.scale!r}: choose one of {', '.join(SCALES)}")
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r <= 0:
            raise ValueError(f"rank r must be a positive integer, got {self.r!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.targets, str):
            if self.targets not in TARGET_SCHEMES:
                raise ValueError(
                    f"unknown targets {self.targets!r}: use 'all', 'qv', or a list of roles/module names"
                )
        else:
            self.targets = list(self.targets)
            if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
                raise ValueError(f"targets list must hold non-empty module names, got {self.targets!r}")
        if self.layers is not None:
            self.layers = [int(i) for i in self.layers]
            if not self.layers:
                raise ValueError("layers=[] would adapt nothing: pass None for all layers or a list of indices")

    @classmethod
    def released_code(cls, **overrides) -> "AdapterConfig":
        """SSMLoRA as the authors' released code computes it: state carried across forward passes, output scale
        alpha (not alpha/r), eps 1e-8 in the exact min-max normalisation, dropout 0.1 on the state term, and a
        frozen classifier head whose adapter trains on top. `overrides` change single fields (e.g. r)."""
        settings = dict(
            method="ssmlora", ssm_mode="carry", scale="alpha", eps=1e-8, norm="minmax", dropout=0.1,
            train_head=False, freeze_adapted_head=True,
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
