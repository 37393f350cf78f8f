"""`python experiments/run.py` (or `ssmlora-sweep`): the length sweep from the command line.

Trains every method at every length (powers of two from --min-len up to --max-len, or --lengths), one process
per cell, and writes <out>/<name>/{config.json,results.csv,cells/,plots/,report.md}. Rerunning the same command
resumes: finished cells are skipped. Exit code 0 when every cell is ok, 1 when any cell failed, 2 on bad input,
130 when interrupted. Every setting has one flag, generated from the configuration tree (docs/sweep.md).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import typing

from plots import make_report
from plots.learning_curve import learning_curve_figure, load_curves
from plots.report import tuning_lines
from plots.style import save_figure
from results import SweepFolder
from ssmlora.config import ConfigValueError
from ssmlora.lab.memory import parse_size
from ssmlora.lab.runtime import is_rank_zero
from ssmlora.sweep.variants import VariantError
from ssmlora.sweep.config import GRID, SweepConfig, flat_fields, section_type
from ssmlora.sweep.config_file import ConfigFileError, read_config_file
from ssmlora.sweep.estimate import clock, estimate, table
from ssmlora.sweep.launch import calibrate_in_process
from ssmlora.sweep.presets import DEFAULT_PRESET, PRESETS, get_preset
from ssmlora.sweep.runner import any_failed, pending_cells, results_table, run_sweep, stop_on_sigterm
from ssmlora.sweep.tune import TuningError
from ssmlora.sweep.validate import SweepError, flag, validate, value_error


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" only where the help text does not already say what the default means."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, argparse.SUPPRESS) or action.default == {}:
            return text
        shown = ",".join(map(str, action.default)) if isinstance(action.default, list) else "%(default)s"
        return f"{text} (default: {shown})"


def _allowed(rules) -> str:
    """The allowed values of a field, from its metadata, for its help text."""
    if "choices" in rules:
        if all(str(c) in rules.get("help", "") for c in rules["choices"]):
            return ""  # the help text already explains each choice
        return "one of " + " | ".join(map(str, rules["choices"]))
    symbols = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    return " and ".join(f"{symbols[k]} {rules[k]:g}" for k in symbols if k in rules)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # one line, not argparse's usage block
        self.exit(2, f"error: {message} (see --help)\n")


def _csv(kind):
    def parse(text: str) -> list:
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {kind.__name__}") from None
    return parse


def _lr_map(text: str) -> dict[str, float]:
    """`5e-4` (every method) or `lora=5e-4,ssmlora=5e-5`."""
    try:
        if "=" not in text:
            return {"*": float(text)}
        pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
        return {method.strip(): float(value) for method, value in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number or METHOD=NUMBER,...") from None


def _grid_entry(text: str) -> tuple[str, list[float]]:
    """One --tune-grid argument: `lora=1e-4,3e-4,1e-3` or `1e-4,3e-4` (every method, key "*")."""
    method, _, values = text.rpartition("=")
    try:
        return method.strip() or "*", [float(v) for v in values.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give METHOD=V1,V2,... or V1,V2,...") from None


class _GridAction(argparse.Action):
    """Collects --tune-grid's arguments into {method: [values]}; a method given twice keeps its last list."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, dict(values))


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _targets(text: str):
    return text if text in ("all", "qv") else _csv(str)(text)


def _argument(p: argparse.ArgumentParser, name: str, hint, default, rules) -> None:
    kind = str(hint)
    allowed = _allowed(rules)
    help_text = rules.get("help", "") + (f"; {allowed}" if allowed and allowed not in rules.get("help", "") else "")
    if hint is bool:
        p.add_argument(flag(name), action=argparse.BooleanOptionalAction, default=default, help=help_text)
        return
    if "dict" in kind and "list" in kind:
        p.add_argument(flag(name), type=_grid_entry, nargs="+", action=_GridAction, default=default,
                       metavar="METHOD=V1,V2", help=help_text)
        return
    if "dict" in kind:
        parse = _lr_map
    elif name == "targets":
        parse = _targets
    elif kind.startswith("list") or "list[int]" in kind:
        parse = _csv(int if "int" in kind else str)
    else:
        parse = int if "int" in kind else float if "float" in kind else str
    p.add_argument(flag(name), type=parse, default=default, metavar=name.upper(), help=help_text)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python experiments/run.py", description=__doc__.split("\n\n")[0],
                formatter_class=_HelpFormatter)
    p.add_argument("--max-len", type=int, default=4096, help="longest context length L, tokens")
    p.add_argument("--min-len", type=int, default=512, help="shortest context length L, tokens (lengths double)")
    p.add_argument("--lengths", type=_csv(int), default=None, help="explicit lengths in tokens, e.g. 512,2048 "
                                                                  "(instead of --min-len/--max-len)")
    p.add_argument("--out", default="lightning_logs", help="parent folder of sweep folders")
    p.add_argument("--name", default=None, help="sweep folder name (default: task-model-<config hash>)")
    p.add_argument("--retry-failed", action="store_true", help="rerun cells recorded as oom/failed")
    p.add_argument("--repair", action="store_true",
                   help="move unreadable rows of results.csv (or rows of another configuration) to results.bad.csv "
                        "and rerun their cells, instead of refusing the folder")
    p.add_argument("--in-process", action="store_true",
                   help="run cells in this process (no memory isolation; for torchrun/srun and debugging)")
    p.add_argument("--frontier", action="store_true",
                   help="instead of the sweep: per method, with and without gradient checkpointing, the longest L "
                        "(multiple of 256) whose training step at micro-batch 1 fits --mem-budget; writes "
                        "frontier.csv into the sweep folder (docs/sweep.md)")
    p.add_argument("--mem-budget", type=_size, default=None, metavar="SIZE",
                   help="memory budget of --frontier, binary units: 8GiB, 8GB, 8 GiB, 8192MiB, 8g")
    p.add_argument("--dry-run", action="store_true",
                   help="validate everything, print the cell count and the estimated minutes per entry and length, "
                        "train nothing")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="settings from a YAML or JSON file, by the flags' names (max_steps: 40, methods: [lora, "
                        "ssmlora]); flags given beside it win; every sweep folder holds a config.yaml that runs "
                        "it again")
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=list(PRESETS),
                   help="named defaults of the grid, under any flag given: "
                        + "; ".join(f"{p.name}: {p.purpose}" for p in PRESETS.values()))
    top = typing.get_type_hints(SweepConfig)
    for name in GRID:
        if name != "lengths":
            f = SweepConfig.__dataclass_fields__[name]
            _argument(p, name, top[name], f.default_factory(), f.metadata)
    for name, (section, f) in flat_fields().items():
        hints = typing.get_type_hints(section_type(section))
        default = f.default_factory() if callable(f.default_factory) else f.default
        _argument(p, name, hints[name], default, f.metadata)
    _say_preset_defaults(p)
    return p


def _shown(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "none"
    return "none" if value in (None, "") else str(value)


def _say_preset_defaults(p: argparse.ArgumentParser) -> None:
    """--help gives the default a plain run uses: a setting a preset changes shows each preset's value."""
    for action in p._actions:
        if any(preset.settings.get(action.dest, action.default) != action.default for preset in PRESETS.values()):
            said = re.search(r" \(default: ([^)]*)\)", action.help)  # the tree's default in words: the task's
            tree = said.group(1) if said else _shown(action.default)
            text = action.help.replace(said.group(0), "") if said else action.help
            values = ", ".join(f"{_shown(preset.settings[action.dest]) if action.dest in preset.settings else tree}"
                               f" under --preset {name}" for name, preset in PRESETS.items())
            action.help = f"{text} (default: {values})"


def given_flags(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The settings written on the command line (argparse fills a default only where the namespace has none)."""
    unset = object()
    namespace = argparse.Namespace(**{a.dest: unset for a in parser._actions if a.dest != "help"})
    parser.parse_args(argv, namespace)
    return {name for name, value in vars(namespace).items() if value is not unset}


def _preset_cost_entries(preset_entries: list[str], methods: list[str]) -> list[str]:
    """A preset's cost methods over the --methods given: each keeps the entries of its method, variants included
    (`ssmlora` -> `ssmlora:depth`, `ssmlora:scan`), so a preset never names an entry the grid does not run."""
    return [e for e in methods if any(e == m or e.startswith(m + ":") for m in preset_entries)]


def lengths_from(args) -> list[int]:
    if args.lengths:
        return sorted(set(args.lengths))
    if args.min_len <= 0 or args.max_len < args.min_len:
        raise SweepError(f"--max-len {args.max_len} and --min-len {args.min_len}: need max-len >= min-len > 0")
    out, length = [], args.min_len
    while length <= args.max_len:
        out.append(length)
        length *= 2
    return out


def config_from_args(args) -> SweepConfig:
    values = {name: getattr(args, name) for name in [*GRID, *flat_fields()] if name != "lengths"}
    try:
        return SweepConfig.from_flat(**values, lengths=lengths_from(args))
    except ConfigValueError as err:
        raise value_error(err) from None
    except VariantError as err:
        raise SweepError(str(err)) from None


def parse_args(argv: list[str] | None = None, preset: str | None = None) -> argparse.Namespace:
    """The command line over its --config file over the defaults of its --preset (or of `preset`, which
    overrides both the flag and the file's choice)."""
    parser = build_parser()
    first, given = parser.parse_known_args(argv)[0], given_flags(parser, argv)
    from_file = {}
    if first.config:
        try:
            from_file = read_config_file(first.config, parser)
        except ConfigFileError as err:
            parser.error(str(err))
        if given & {"min_len", "max_len"} and "lengths" not in given:
            from_file.pop("lengths", None)  # lengths written out in the file give way to --min-len/--max-len
    chosen = preset or (first.preset if "preset" in given else from_file.get("preset", DEFAULT_PRESET))
    parser.set_defaults(**get_preset(chosen).settings)
    parser.set_defaults(**from_file)
    args = parser.parse_args(argv)
    args.preset = chosen
    given |= set(from_file)
    if "cost_methods" in get_preset(chosen).settings and "methods" in given and "cost_methods" not in given:
        args.cost_methods = _preset_cost_entries(args.cost_methods, args.methods)
    return args


def plan_run(cfg: SweepConfig, folder, args, argv: list[str] | None) -> tuple[dict, list[str]]:
    """Before any cell: calibrate here, estimate what is left to run; return config.json's "plan" and the lines
    the console opens with (the preset, cell count and estimate; on a CUDA device under a smaller preset, what
    `--preset full` would add). A calibration that fails (a model whose weights do not load) leaves the run
    without an estimate, said on the first line; the cells then record their own failures."""
    preset = get_preset(args.preset)
    pending = pending_cells(cfg, folder, args.retry_failed)
    cells = cfg.cells()
    total, trials = len(cells), sum(c.tuning for c in pending)
    plan = {"preset": preset.name, "purpose": preset.purpose, "settings": preset.settings, "cells": total,
            "to_run": len(pending) - trials, "trials_to_run": trials}
    head = (f"preset {preset.name}: {total} cells, {len(pending) - trials} to run"
            + (f" after {trials} tuning trials" if trials else ""))
    first = cfg.cell(cfg.variants[0], min(cfg.lengths), cfg.seeds[0])
    try:
        reads = [L for c in cells for L in (c.max_len, *c.data.eval_lengths_for(c.max_len))]
        cal = calibrate_in_process(first, reads)
    except Exception as err:  # noqa: BLE001 - the estimate is advice; the run goes on without it
        return plan, [f"{head}, no estimate (the calibration failed: {str(err)[:160]})"]
    est = estimate(pending, cfg.seeds, cal, prepares=not args.in_process)
    plan["estimate"] = est.record()
    lines = [f"{head}, estimated {clock(est.total_s)} on this machine (cost model calibrated here: "
             f"{cal.describe()}; docs/sweep.md#presets-and-the-estimate)"]
    if preset.name != "full":  # what the whole grid would add: the report's C2 row and a GPU user need it
        full = config_from_args(parse_args(argv, "full"))
        mine = {c.tag() for c in cells}
        extra = [c for c in full.cells() if c.tag() not in mine]
        more = estimate(extra, full.seeds, cal, prepares=not args.in_process)
        plan["full"] = {"cells": len(extra), "estimate_s": round(more.total_s), "device": cal.device}
        if cal.device == "gpu":
            lines.append(f"this machine has a CUDA device: --preset full would add {len(extra)} cells (every entry "
                         f"trained at every length; C2 needs them), about {clock(more.total_s)} here")
    if args.dry_run:
        lines.append(table(cfg, estimate(cells, cfg.seeds, cal, not args.in_process)))
    return plan, lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = config_from_args(args)
        if args.frontier or args.mem_budget is not None:
            return frontier_main(cfg, args)
        folder = validate(cfg, args.out, args.name, args.in_process, repair=args.repair)
        stop_on_sigterm(args.in_process)
        plan, lines = plan_run(cfg, folder, args, argv)
        print("\n".join(lines), flush=True)
        if args.dry_run:
            print(f"sweep folder: {folder}")
            return 0
        folder, rows = run_sweep(cfg, out=args.out, name=args.name, retry_failed=args.retry_failed,
                                 in_process=args.in_process, repair=args.repair, plan=plan)
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TuningError as err:  # not bad input: the trials ran and failed
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished cells are in results.csv; rerun the same command to resume", file=sys.stderr)
        return 130
    if not is_rank_zero():  # torchrun / srun: the other ranks trained and scored; rank 0 reports
        return 1 if any_failed(rows) else 0
    paths = SweepFolder(folder)
    if cfg.tune.tune_only:
        print("\n".join(tuning_lines(json.loads(paths.config.read_text()))))
        print(f"tuning: {paths.tune / 'tuning.json'} (--tune-only: no sweep cell trained, test split unread)")
        curves = load_curves(folder)
        if len(curves):  # --val-every: the trials' validation curves
            about = f"{cfg.data.task}, tuning trials (seed {cfg.seeds[0]}), validation split only"
            written = save_figure(learning_curve_figure(curves, about), paths.tune, "learning_curve")
            print(f"learning curves: {written[0]}")
        return 0
    print(results_table(rows))
    print(f"results: {paths.results}")
    written = make_report(folder)
    print(f"plots: {len(written)} files in {paths.plots}, report: {paths.report}")
    return 1 if any_failed(rows) else 0


def frontier_main(cfg: SweepConfig, args) -> int:
    """--frontier: find, write frontier.csv, draw its figure and (re)write the report."""
    from ssmlora.sweep.frontier import run_frontier

    if not args.frontier:
        raise SweepError("--mem-budget is the budget of --frontier: add --frontier, or drop --mem-budget")
    if args.mem_budget is None:
        raise SweepError("--frontier needs --mem-budget SIZE (e.g. 8GiB): the memory a training step may use")
    folder, _ = run_frontier(cfg, args.mem_budget, out=args.out, name=args.name)
    from plots.report import write_frontier_outputs

    for path in write_frontier_outputs(folder):
        print(f"wrote {path}")
    return 0
