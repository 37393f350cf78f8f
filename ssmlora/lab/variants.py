"""Method variants: each `--methods` entry parsed once into a frozen `MethodVariant`.

An entry is a registered adapter method (`lora`), a method with its variant setting (`ssmlora:scan`: the value
of the method's first identity field, ssmlora's `ssm_mode`), or, from step 2 on, a registered control. The
per-method options `--lr` and `--tune-grid` are resolved here too, so the object that leaves this module carries
everything that tells the entry's cells apart from the others': its method, its adapter settings, its rate and
its label. The sweep, its validation, tuning, cells and result rows read the object and never split the entry
string again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ssmlora.config import AdapterConfig, ConfigValueError
from ssmlora.methods import get_method

EVERY_METHOD = "*"  # key of --lr / --tune-grid that serves every entry


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

    def adapter(self, base: AdapterConfig) -> AdapterConfig:
        """The sweep's adapter section with this entry's method and settings."""
        return replace(base, method=self.method, **dict(self.settings))

    @property
    def trains_adapters(self) -> bool:
        return get_method(self.method).layer is not None

    def tag(self) -> str:
        """The label as a folder-name part ('ssmlora:scan' -> 'ssmlora-scan')."""
        return self.label.replace(":", "-")


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


def parse_variant(entry: str, adapter: AdapterConfig, lr: dict, tune_grid: dict) -> MethodVariant:
    """One --methods entry against the sweep's adapter section and its --lr and --tune-grid maps."""
    try:
        method, settings = split_entry(entry)
        replace(adapter, method=method, **settings)  # AdapterConfig checks the variant's value
    except ConfigValueError as err:
        raise VariantError(f"--methods {entry}: {err.name} {err.value!r} is not allowed: {err.allowed}") from None
    except VariantError as err:
        raise VariantError(f"--methods {entry}: {err}") from None
    rate, source = None, "registry"
    if get_method(method).layer is not None:
        given, key = for_entry(lr, entry, method)
        rate, source = (given, f"--lr {key}") if given is not None else (get_method(method).defaults.get("lr"),
                                                                         "registry")
    grid, _ = for_entry(tune_grid, entry, method)
    return MethodVariant(entry, method, tuple(settings.items()), rate, source,
                         None if grid is None else tuple(grid))


def parse_methods(entries: list[str], adapter: AdapterConfig, lr: dict, tune_grid: dict) -> tuple[MethodVariant, ...]:
    """Every --methods entry, in order; the keys of --lr and --tune-grid are checked on the way."""
    for option, values in (("--lr", lr), ("--tune-grid", tune_grid)):
        for key in values:
            check_key(option, key, adapter)
    return tuple(parse_variant(e, adapter, lr, tune_grid) for e in entries)
