"""Method variants: each `--methods` entry parsed once into a frozen `MethodVariant`, and the registered controls.

An entry is a registered adapter method (`lora`), a method with its variant setting (`ssmlora:scan`: the value
of the method's first identity field, ssmlora's `ssm_mode`), or a registered `Control`. The per-method options
`--lr` and `--tune-grid` are resolved here too, so the object that leaves this module carries everything that
tells the entry's cells apart from the others': its method, its adapter settings, its rate and its label. The
sweep, its validation, tuning, cells and result rows read the object and never split the entry string again.

Controls answer "is it the method, or its setting?" for a comparison between two methods:

- lr-matched: one method at the other's learning rate (`lora-at-ssmlora-lr`, `ssmlora-at-lora-lr`). A comparison of
  SSMLoRA with LoRA at their own rates mixes the method with a rate ten times apart; against the control, the
  rate is the same.
- parameter-matched: LoRA at the rank whose adapter parameter count is nearest SSMLoRA's (`lora-at-ssmlora-params`),
  so "equal accuracy with fewer parameters" has a LoRA of the same size beside it. The match is by rank, on the
  sweep's own model and scheme, and must come within `PARAMS_TOLERANCE`.

A control runs in the same sweep as the methods, so it pairs with them on the same documents and seeds.
Adding one is one `register_control` call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Callable

from ssmlora.config import AdapterConfig, ConfigValueError
from ssmlora.methods import get_method

EVERY_METHOD = "*"  # key of --lr / --tune-grid that serves every entry
PARAMS_TOLERANCE = 0.10  # a parameter-matched control's adapter parameters within 10 % of its target's


class VariantError(ValueError):
    """A --methods entry (or a --lr / --tune-grid key) that names no method or variant; one line, shown as is."""


@dataclass(frozen=True)
class MethodVariant:
    """One entry of --methods, resolved.

    `settings` are the AdapterConfig fields this entry sets over the sweep's adapter section; `lr` is the adapter
    matrices' peak rate before any `--tune lr` selection (None: the method has no adapter matrices), and
    `lr_source` says where it came from; `tune_grid` the values `--tune lr` tries (None: no grid applies)."""

    label: str
    method: str
    settings: tuple[tuple[str, object], ...] = ()
    lr: float | None = None
    lr_source: str = "registry"
    tune_grid: tuple[float, ...] | None = None
    rate_of: str = ""  # an lr-matched control: the entry whose rate (given, default or selected) it takes
    params_of: str = ""  # a parameter-matched control: the entry whose adapter parameter count it matches
    control: str = ""  # a control: what it holds fixed, with the resolved figures; empty for a method

    def adapter(self, base: AdapterConfig) -> AdapterConfig:
        """The sweep's adapter section with this entry's method and settings."""
        return replace(base, method=self.method, **dict(self.settings))

    @property
    def trains_adapters(self) -> bool:
        return get_method(self.method).layer is not None

    @property
    def matched_to(self) -> str:
        """A control's counterpart: the entry whose rate or parameter count it shares (empty for a method)."""
        return self.rate_of or self.params_of


def split_entry(entry: str) -> tuple[str, dict]:
    """'ssmlora:scan' -> ('ssmlora', {'ssm_mode': 'scan'}), 'lora' -> ('lora', {}). VariantError for an unknown
    method or a variant on a method that has none."""
    base, sep, variant = entry.partition(":")
    try:
        method = get_method(base)
    except ValueError as err:
        raise VariantError(str(err)) from None
    if not sep:
        return base, {}
    if not method.identity:
        raise VariantError(f"method {base!r} has no variants: write it as {base!r}")
    return base, {method.identity[0]: variant}


def check_key(option: str, key: str, adapter: AdapterConfig) -> None:
    """A key of a per-method option (--lr, --tune-grid): "*", a registered method, or METHOD:VARIANT with a
    variant the method allows (the rule of --methods)."""
    if key == EVERY_METHOD:
        return
    try:
        base, settings = split_entry(key)
        replace(adapter, method=base, **settings)
    except ConfigValueError as err:
        raise VariantError(f"{option} {key}=...: {err.name} {err.value!r} is not allowed: {err.allowed}") from None
    except VariantError as err:
        raise VariantError(f"{option} {key}=...: {err}") from None


def for_entry(values: dict, entry: str, method: str):
    """(value, key) a per-method option gives an entry: its own key ('ssmlora:scan'), else its method's
    ('ssmlora', which serves every variant), else "*"; (None, "") when none applies."""
    for key in (entry, method, EVERY_METHOD):
        if key in values:
            return values[key], key
    return None, ""


@dataclass(frozen=True)
class Control:
    """A registered control: `method`'s adapters at the rate `rate_of` resolves to (lr-matched), or at the rank
    whose adapter parameter count is nearest `params_of`'s (parameter-matched). `name` is its --methods entry."""

    name: str
    method: str
    description: str
    rate_of: str = ""
    params_of: str = ""


_CONTROLS: dict[str, Control] = {}


def register_control(control: Control, replace: bool = False) -> Control:
    """Add `control` to the registry (`replace=True` to redefine a name, e.g. in a test)."""
    if control.name in _CONTROLS and not replace:
        raise ValueError(f"control {control.name!r} is registered already")
    if bool(control.rate_of) == bool(control.params_of):
        raise ValueError(f"control {control.name!r}: give exactly one of rate_of and params_of")
    if not re.fullmatch(r"[A-Za-z0-9._+-]+", control.name):  # it names cell folders and claim files
        raise ValueError(f"control name {control.name!r} may hold only letters, digits and . _ + -")
    _CONTROLS[control.name] = control
    return control


def control_names() -> list[str]:
    return list(_CONTROLS)


register_control(Control("lora-at-ssmlora-lr", "lora", "LoRA at SSMLoRA's learning rate", rate_of="ssmlora"))
register_control(Control("ssmlora-at-lora-lr", "ssmlora", "SSMLoRA at LoRA's learning rate", rate_of="lora"))
register_control(Control("lora-at-ssmlora-params", "lora", "LoRA at the rank whose adapter parameters are nearest "
                         "SSMLoRA's", params_of="ssmlora"))

Counter = Callable[[AdapterConfig], int]  # adapter parameters an AdapterConfig puts on the sweep's model


def parse_variant(entry: str, adapter: AdapterConfig, lr: dict, tune_grid: dict,
                  count: Counter | None = None) -> MethodVariant:
    """One --methods entry against the sweep's adapter section and its --lr and --tune-grid maps; `count` sizes
    a parameter-matched control (needed only for one)."""
    if entry in _CONTROLS:
        return _parse_control(_CONTROLS[entry], adapter, lr, tune_grid, count)
    try:
        method, settings = split_entry(entry)
        replace(adapter, method=method, **settings)  # AdapterConfig checks the variant's value
    except ConfigValueError as err:
        raise VariantError(f"--methods {entry}: {err.name} {err.value!r} is not allowed: {err.allowed}") from None
    except VariantError as err:
        more = f"; or a control: {', '.join(_CONTROLS)}" if str(err).startswith("unknown method") else ""
        raise VariantError(f"--methods {entry}: {err}{more}") from None
    rate, source = None, "registry"
    if get_method(method).layer is not None:
        given, key = for_entry(lr, entry, method)
        rate, source = (given, f"--lr {key}") if given is not None else (get_method(method).defaults.get("lr"),
                                                                         "registry")
    grid, _ = for_entry(tune_grid, entry, method)
    return MethodVariant(entry, method, tuple(settings.items()), rate, source,
                         None if grid is None else tuple(grid))


def _parse_control(control: Control, adapter: AdapterConfig, lr: dict, tune_grid: dict,
                   count: Counter | None) -> MethodVariant:
    if control.rate_of:  # its rate is the other entry's by definition: only its own --lr key overrides it
        other = parse_variant(control.rate_of, adapter, lr, tune_grid, count)
        rate, source = (lr[control.name], f"--lr {control.name}") if control.name in lr else (
            other.lr, f"rate of {other.label} ({other.lr_source})")
        return MethodVariant(control.name, control.method, (), rate, source, None, rate_of=other.label,
                             control=f"{control.description}: {rate:g}")
    base = parse_variant(control.method, adapter, lr, tune_grid, count)
    target = parse_variant(control.params_of, adapter, lr, tune_grid, count)
    if count is None:
        raise VariantError(f"--methods {control.name}: a parameter-matched control needs the sweep's model to "
                           f"count parameters on")
    goal = count(target.adapter(adapter))
    r, got = _matching_rank(base.adapter(adapter), goal, count)
    off = got / goal - 1
    if abs(off) > PARAMS_TOLERANCE:
        raise VariantError(f"--methods {control.name}: no rank of {control.method} comes within "
                           f"{PARAMS_TOLERANCE:.0%} of {target.label}'s {goal:,} adapter parameters on this model "
                           f"(nearest: r={r}, {got:,}); drop the control or change --r / --targets")
    grid, _ = for_entry(tune_grid, control.name, control.method)
    rate, source = (lr[control.name], f"--lr {control.name}") if control.name in lr else (base.lr, base.lr_source)
    return MethodVariant(control.name, control.method, (*base.settings, ("r", r)), rate, source,
                         None if grid is None else tuple(grid), params_of=target.label,
                         control=f"{control.description}: rank {r}, {got:,} adapter parameters against "
                                 f"{target.label}'s {goal:,} ({off:+.1%})")


def _matching_rank(adapter: AdapterConfig, goal: int, count: Counter) -> tuple[int, int]:
    """(rank, adapter parameters) of the rank nearest `goal`: LoRA's count is linear in r, so the two ranks
    around the linear estimate are counted and the nearer kept."""
    per_rank = count(replace(adapter, r=1))
    estimate = max(1, goal // max(per_rank, 1))
    counted = {r: count(replace(adapter, r=r)) for r in (estimate, estimate + 1)}
    best = min(counted, key=lambda r: (abs(counted[r] - goal), r))
    return best, counted[best]


def parse_methods(entries: list[str], adapter: AdapterConfig, lr: dict, tune_grid: dict,
                  count: Counter | None = None) -> tuple[MethodVariant, ...]:
    """Every --methods entry, in order; the keys of --lr and --tune-grid are checked on the way."""
    for option, values in (("--lr", lr), ("--tune-grid", tune_grid)):
        for key in values:
            if key not in _CONTROLS:
                check_key(option, key, adapter)
    return tuple(parse_variant(e, adapter, lr, tune_grid, count) for e in entries)
