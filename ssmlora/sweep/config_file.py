"""A sweep from a file: `--config FILE` (YAML or JSON) takes every setting by its flag's name, and every sweep
folder holds a `config.yaml` that, given back, runs the same sweep.

A file's value goes through the flag's own parser, written as the command line would write it (a list as
`a,b`, a rate map as `lora=5e-4,ssmlora=5e-5`), so a file and the flags accept and refuse the same things. Keys
may use dashes or underscores (`max-steps`, `max_steps`). The order of precedence is preset < file < flags given:
the file's values become the parser's defaults, over the preset's, and the command line still wins.

`config.yaml` writes every setting of the sweep out, the grid included, so it names the same identity whatever
preset or defaults a later version has: the round trip gives the same folder hash.
"""

from __future__ import annotations

import argparse
import difflib
import json
from pathlib import Path

import yaml

from ssmlora.sweep.config import GRID, SweepConfig, flat_fields

HEADER = ("# The settings of this sweep. `python experiments/run.py --config config.yaml` runs it again (the same\n"
          "# folder hash); a flag given beside --config wins over the file.\n")


class ConfigFileError(ValueError):
    """A --config file that cannot be read, or that names an unknown setting or a bad value."""


def read_config_file(path: str | Path, parser: argparse.ArgumentParser) -> dict:
    """{flag destination: parsed value} from a YAML or JSON file, each value parsed as its flag would parse it."""
    path = Path(path)
    try:
        text = path.read_text()
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except OSError as err:
        raise ConfigFileError(f"--config {path}: cannot read it ({err.strerror})") from None
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ConfigFileError(f"--config {path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} "
                              f"({str(err).splitlines()[0]})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigFileError(f"--config {path}: expected a mapping of settings (max_steps: 40), got "
                              f"{type(values).__name__}")
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    out = {}
    for key, value in values.items():
        dest = str(key).replace("-", "_")
        if dest not in actions:
            near = difflib.get_close_matches(dest, actions, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigFileError(f"--config {path}: unknown setting {key!r}{hint}; the settings are the flags' "
                                  "names (python experiments/run.py --help)")
        try:
            out[dest] = _parse(actions[dest], value)
        except (argparse.ArgumentTypeError, ValueError, TypeError) as err:
            raise ConfigFileError(f"--config {path}: {key}: {err}") from None
    return out


def _parse(action: argparse.Action, value):
    """`value` from the file, through the flag's own parser."""
    if value is None:
        return None
    if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):  # on/off flags
        if not isinstance(value, bool):
            raise TypeError(f"give true or false, not {value!r}")
        return value
    if action.nargs == "+":  # --tune-grid: {method: [values]} or [values] for every method
        items = value.items() if isinstance(value, dict) else [("*", value)]
        return dict(action.type(f"{k}={_text(v)}") for k, v in items)
    if value == {}:
        return {}  # an empty rate map: every method at its registry default
    parsed = action.type(_text(value)) if action.type else value
    if action.choices is not None and parsed not in action.choices:
        raise ValueError(f"{value!r} is not one of {', '.join(map(str, action.choices))}")
    return parsed


def _text(value) -> str:
    """A file's value as the command line writes it."""
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def config_yaml(cfg: SweepConfig, grid: dict | None = None) -> str:
    """Every setting of `cfg` by its flag's name (the grid from `grid` when given: every value a resumed folder
    holds), as YAML a later `--config` reads back to the same identity."""
    values = {name: getattr(cfg, name) for name in GRID}
    values.update(grid or {})
    values.update({name: getattr(getattr(cfg, section), name) for name, (section, _) in flat_fields().items()})
    plain = json.loads(json.dumps(values))  # tuples become lists, as the file reads back
    return HEADER + yaml.safe_dump(plain, sort_keys=False, default_flow_style=None, width=120)
