"""Where adapters go: module names per architecture family, mapped to roles.

Every adaptable projection is given a *role* (q, k, v, o, ffn-in, ffn-gate, ffn-out, head). Insertion schemes
(each method's `in_scheme`, ssmlora.methods) and SSMLoRA's state chains are defined on roles, so they read the
same for every family.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch.nn as nn

ROLES = ("q", "k", "v", "o", "ffn-in", "ffn-gate", "ffn-out", "head")
_LAYER_RE = re.compile(r"^(?P<prefix>.*?\.(?:layers|layer|h))\.(?P<idx>\d+)\.(?P<rel>.+)$")


@dataclass(frozen=True)
class Family:
    """Module naming of one architecture family (names relative to a transformer layer)."""

    name: str
    roles: dict[str, str]  # relative module name -> role
    heads: tuple[str, ...]  # candidate (head module, final head linear) paths, first match wins
    # Fused projections adapted part by part: relative module name -> the roles of its equal output parts, in
    # output order (ModernBERT's Wqkv: q, k, v; its GLU input Wi: ffn-in, ffn-gate). Wanting one part puts an
    # adapter on that part's output features; wanting every part adapts the whole projection (as PEFT does when
    # it targets the module), under its first role.
    fused: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # How a token may read the sequence: "causal" (decoders) or "bidirectional" (encoders); None = undeclared.
    # SSMLoRA's scan mode follows it when scan_direction is "auto".
    direction: str | None = None


LLAMA = Family(
    "llama",
    {
        "self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v", "self_attn.o_proj": "o",
        "mlp.up_proj": "ffn-in", "mlp.gate_proj": "ffn-gate", "mlp.down_proj": "ffn-out",
    },
    heads=("score",),
    direction="causal",
)
BERT = Family(
    "bert",
    {
        "attention.self.query": "q", "attention.self.key": "k", "attention.self.value": "v",
        "attention.output.dense": "o", "intermediate.dense": "ffn-in", "output.dense": "ffn-out",
    },
    heads=("classifier.out_proj", "classifier"),  # RoBERTa's head ends in out_proj, BERT's is one Linear
    direction="bidirectional",
)
GPT2 = Family(
    "gpt2",
    {"attn.c_attn": "q", "attn.c_proj": "o", "mlp.c_fc": "ffn-in", "mlp.c_proj": "ffn-out"},
    heads=("score",),  # c_attn computes q, k and v in one Conv1D; it is adapted whole and counts as q
    direction="causal",
)
MODERNBERT = Family(
    "modernbert",
    {"attn.Wo": "o", "mlp.Wo": "ffn-out"},
    heads=("classifier",),  # after the pretrained prediction head (`head`: dense, activation, norm), kept frozen
    fused={"attn.Wqkv": ("q", "k", "v"), "mlp.Wi": ("ffn-in", "ffn-gate")},
    direction="bidirectional",
)
FAMILIES = {
    "llama": LLAMA, "mistral": LLAMA, "qwen2": LLAMA, "qwen3": LLAMA,
    "bert": BERT, "roberta": BERT,
    "gpt2": GPT2,
    "modernbert": MODERNBERT,
}


def scan_direction(model_type: str, requested: str) -> str:
    """The scan direction for `requested` (auto | causal | bidirectional) on a `model_type`. Raises ValueError
    when `auto` meets a family that declares no direction, or for an unknown direction."""
    if requested != "auto":
        if requested not in ("causal", "bidirectional"):
            raise ValueError(f"unknown scan direction {requested!r}: choose auto, causal or bidirectional")
        return requested
    family = FAMILIES.get(model_type)
    if family is None or family.direction is None:
        raise ValueError(
            f"scan_direction auto cannot tell whether {model_type!r} reads its input causally (a decoder) or in "
            "both directions (an encoder): set scan_direction to causal or bidirectional"
        )
    return family.direction


@dataclass(frozen=True)
class Site:
    """One place an adapter goes."""

    name: str  # full module name inside the model
    role: str
    layer: int | None  # None for the head
    out_slice: tuple[int, int] | None = None  # (start, stop) output features of a fused projection; None: all


def is_projection(module: nn.Module) -> bool:
    """nn.Linear, or transformers' Conv1D (GPT-2; weight stored in x out)."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def layer_modules(model: nn.Module, sites: list["Site"]) -> dict[int, nn.Module]:
    """The transformer layer (index -> module) that holds each of `sites` (the head belongs to none)."""
    layers = {}
    for site in sites:
        match = _LAYER_RE.match(site.name)
        if site.layer is not None and match:
            layers[site.layer] = model.get_submodule(f"{match['prefix']}.{match['idx']}")
    return layers


def family_of(model: nn.Module) -> Family:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in FAMILIES:
        raise ValueError(
            f"unsupported architecture {model_type!r}: ssmlora knows {sorted(FAMILIES)}. "
            f"Its projection modules are {sorted(set(_relative_names(model)))}"
        )
    return FAMILIES[model_type]


def num_layers(model: nn.Module) -> int:
    return int(model.config.num_hidden_layers if hasattr(model.config, "num_hidden_layers") else model.config.n_layer)


def find_head(model: nn.Module, family: Family) -> tuple[str, str]:
    """(head module path, final head linear path). Raises if the model has no classification head."""
    names = dict(model.named_modules())
    for path in family.heads:
        if path in names and is_projection(names[path]):
            return path.split(".")[0], path
    raise ValueError(
        f"{type(model).__name__} has no classification head ({' or '.join(family.heads)}): load the backbone "
        "with AutoModelForSequenceClassification (and num_labels) before adapting it"
    )


def select_sites(model: nn.Module, family: Family, method, targets, layers) -> list[Site]:
    """The adapter sites of `method` (a registered `Method`) under `targets`, in forward (depth) order."""
    n = num_layers(model)
    if layers is not None:
        bad = [i for i in layers if not 0 <= i < n]
        if bad:
            raise ValueError(f"layer indices {bad} out of range: {type(model).__name__} has layers 0..{n - 1}")
    wanted_layers = set(range(n) if layers is None else layers)
    explicit = None if isinstance(targets, str) else set(targets)
    if explicit is not None:
        known = [*family.roles, *family.fused]
        unknown = sorted(t for t in explicit if t not in ROLES and not any(_names(rel, t) for rel in known))
        if unknown:
            raise ValueError(
                f"targets {unknown} match nothing in {model.config.model_type!r}: allowed are the roles "
                f"{list(ROLES)} or the module names {sorted(known)}"
            )

    def wanted(role: str, rel: str | None, layer: int | None) -> bool:
        if explicit is not None:
            return role in explicit or (rel is not None and any(_names(rel, t) for t in explicit))
        return method.in_scheme(role, layer, targets)

    sites = []
    for name, module in model.named_modules():
        match = _LAYER_RE.match(name)
        if not match or not is_projection(module) or int(match["idx"]) not in wanted_layers:
            continue
        layer, rel = int(match["idx"]), match["rel"]
        if rel in family.roles and wanted(family.roles[rel], rel, layer):
            sites.append(Site(name, family.roles[rel], layer))
        elif rel in family.fused:
            sites += _fused_sites(name, module, family.fused[rel], [r for r in family.fused[rel]
                                                                    if wanted(r, rel, layer)], layer)
    if wanted("head", None, None):
        sites.append(Site(find_head(model, family)[1], "head", None))
    if not sites:
        raise ValueError(
            f"{method.name} with targets={targets!r}, layers={layers!r} adapts nothing in "
            f"{model.config.model_type!r}; its projection modules are {sorted(set(_relative_names(model)))}"
        )
    return sites


def _fused_sites(name: str, module: nn.Module, roles: tuple[str, ...], wanted: list[str], layer: int) -> list[Site]:
    """The site(s) on a fused projection: the whole of it when every part is wanted, else the one wanted part."""
    if not wanted:
        return []
    if len(wanted) == len(roles):
        return [Site(name, roles[0], layer)]
    if len(wanted) > 1:
        raise ValueError(
            f"{name} fuses {', '.join(roles)} in one projection; one adapter can cover one part ({wanted[0]}) or all "
            f"of them, not {' and '.join(wanted)} apart: choose targets that want one part of it per layer "
            f"(the ssmlora scheme: q on even layers, v on odd ones) or every part (targets all for lora)"
        )
    width = module.out_features // len(roles)
    start = roles.index(wanted[0]) * width
    return [Site(name, wanted[0], layer, (start, start + width))]


def _names(rel: str, target: str) -> bool:
    """Does an explicit target name this relative module name? Suffix match on dots, as PEFT does."""
    return rel == target or rel.endswith("." + target)


def _relative_names(model: nn.Module) -> list[str]:
    out = []
    for name, module in model.named_modules():
        if is_projection(module):
            match = _LAYER_RE.match(name)
            out.append(match["rel"] if match else name)
    return out
