"""Every check of a sweep that needs no training, in one place: `validate` runs them all before any data is built.

A bad value gets one `SweepError` line naming the flag, the value and what is allowed; the CLI prints it and
exits with code 2.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import fields
from pathlib import Path

import torch

from data_prep import MAX_EXTENDED_LEN, MIN_LEN, HubUnavailableError, check_hub, get_task, resolve_model_path
from results import SCHEMA_VERSION, ResultsFormatError, SweepFolder, read_results, repair_results
from ssmlora.arch import scan_direction
from ssmlora.config import ConfigValueError, check_value
from ssmlora.lab.backbone import BackboneError, check_backbone
from ssmlora.lab.data import is_cached
from ssmlora.lab.runtime import external_launcher
from ssmlora.methods import get_method
from ssmlora.sweep.config import GRID, SECTIONS, TUNE_KNOBS, SweepConfig, flat_fields

LONGEST_FILE = "adapter/adapter_model.safetensors"  # the deepest path a cell writes below its folder


class SweepError(ValueError):
    """Bad input found before training; the message is shown to the user as is."""


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def value_error(err: ConfigValueError) -> SweepError:
    return SweepError(f"{flag(err.name)} {_show(err.value)}: {err.allowed}")


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def check_tuning(cfg: SweepConfig) -> None:
    """--tune, --tune-grid and --tune-len: a known knob, an increasing grid per tuned method, a validation split."""
    optim, tune = cfg.optim, cfg.tune
    if tune.tune not in TUNE_KNOBS:
        raise SweepError(f"--tune {tune.tune}: unknown knob; the tunable knob is lr")
    if not tune.tune:
        if tune.tune_only:
            raise SweepError("--tune-only without --tune: nothing to select; add --tune lr")
        return
    if optim.lr:
        raise SweepError(f"--lr {_show([f'{k}={v:g}' for k, v in optim.lr.items()])} with --tune lr: a tuned rate is "
                         f"selected on validation, not given; drop one of the two")
    for variant in cfg.variants:
        if not variant.trains_adapters or variant.rate_of:
            continue  # no adapter matrices, or a rate that is another entry's: nothing to tune
        method, grid = variant.label, variant.tune_grid
        if grid is None:
            raise SweepError(f"--tune-grid has no values for method {method}: add {method}=V1,V2,...")
        if not grid:
            raise SweepError(f"--tune-grid {method}= is empty: give at least one value, e.g. {method}=1e-4,3e-4")
        if any(b <= a for a, b in zip(grid, grid[1:])):
            raise SweepError(f"--tune-grid {method}={_show([f'{v:g}' for v in grid])}: values must strictly "
                             f"increase (sorted, no repeats)")
    for length in tune.tune_len:
        if length < MIN_LEN:
            raise SweepError(f"--tune-len {_show(tune.tune_len)}: {length} is below the task library's minimum of "
                             f"{MIN_LEN} tokens")
        if length > max(cfg.lengths):
            raise SweepError(f"--tune-len {_show(tune.tune_len)}: {length} is longer than the sweep's longest "
                             f"length {max(cfg.lengths)}; tune at lengths the sweep trains")
    if len(set(tune.tune_len)) != len(tune.tune_len):
        raise SweepError(f"--tune-len {_show(tune.tune_len)}: a length is given twice")
    try:
        task = get_task(cfg.data.task)
    except ValueError:
        return  # validate() reports the unknown task with the list of known ones
    if not (cfg.data.n_validation or task.default_sizes[1]):
        raise SweepError(f"--tune {tune.tune}: task {cfg.data.task} has no validation split, and selection may "
                         f"not read the test split; tune on a task with one")


def check_settings(cfg: SweepConfig) -> None:
    """Each field against the allowed values in its metadata, then the rules that span fields."""
    check_tuning(cfg)
    try:
        for name in GRID:
            check_value(name, getattr(cfg, name), next(f for f in fields(cfg) if f.name == name).metadata)
        for name, (section, f) in flat_fields().items():
            check_value(name, getattr(getattr(cfg, section), name), f.metadata)
    except ConfigValueError as err:
        raise value_error(err) from None
    for key, values in (("methods", cfg.methods), ("lengths", cfg.lengths), ("seeds", cfg.seeds)):
        if not values:
            raise SweepError(f"{flag(key)} is empty: give at least one value")
        if len(set(values)) != len(values):
            raise SweepError(f"{flag(key)} {_show(values)}: a value is repeated (each cell would run twice)")
    cells = {}
    for variant in cfg.variants:
        adapter = variant.adapter(cfg.adapter)
        key = (json.dumps(adapter.to_dict(), sort_keys=True, default=str), variant.lr, variant.rate_of)
        same = cells.setdefault(key, variant.label)
        if same != variant.label:
            mode = f"ssm_mode {adapter.ssm_mode}, " if cfg.row_identity(variant)["ssm_mode"] else ""
            rate = "no adapters" if variant.lr is None else f"r {adapter.r}, lr {variant.lr:g}"
            raise SweepError(f"--methods {same} and {variant.label} are the same cells ({mode}{rate}); keep one "
                             f"of them")
        if variant.trains_adapters and variant.lr is None:
            raise SweepError(f"--lr: method {variant.label!r} has no default learning rate: give --lr "
                             f"{variant.label}=VALUE")
    stray = [m for m in cfg.design.cost_methods if m not in [v.label for v in cfg.variants]]
    if stray:
        raise SweepError(f"--cost-methods {stray[0]} is not an entry of --methods ({','.join(cfg.methods)}): a cost "
                         f"cell measures an entry the sweep runs; add it to --methods or drop it here")
    if cfg.optim.max_steps <= 0 and cfg.optim.epochs <= 0:
        raise SweepError("--max-steps 0 and --epochs 0: give a positive number of steps or epochs")
    short = [L for L in cfg.lengths if L < MIN_LEN]
    if short:
        raise SweepError(f"--lengths {_show(cfg.lengths)}: {short[0]} is below the task library's minimum of "
                         f"{MIN_LEN} tokens")


def check_logger(cfg: SweepConfig) -> None:
    """--logger tensorboard needs a TensorBoard writer (Lightning takes tensorboard's, else tensorboardX's)."""
    import importlib.util

    if cfg.runtime.logger == "tensorboard" and not any(importlib.util.find_spec(m) for m in ("tensorboard",
                                                                                             "tensorboardX")):
        raise SweepError("--logger tensorboard needs TensorBoard, which is not installed: pip install -e "
                         "'.[tensorboard]' (or pip install tensorboard), or use --logger csv")


def check_devices(cfg: SweepConfig, in_process: bool = False, warn=None) -> None:
    """Devices, nodes, strategy and accelerator against this machine."""
    rt = cfg.runtime
    world = rt.world_size
    if rt.strategy in ("ddp", "fsdp") and world == 1:
        raise SweepError(f"--strategy {rt.strategy} needs more than one device in total (--devices 1 x "
                         f"--num-nodes 1 = 1); use --strategy auto for one device")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if rt.accelerator == "gpu" and gpus == 0:
        raise SweepError("--accelerator gpu, but this machine has no CUDA GPU (torch.cuda.is_available() is "
                         "False); use --accelerator cpu or auto")
    on_gpu = rt.uses_gpu()
    if rt.strategy == "fsdp" and not on_gpu:
        raise SweepError("--strategy fsdp runs on GPUs only (Lightning's FSDP needs CUDA): use --accelerator gpu, "
                         "or --strategy ddp on the CPU")
    if on_gpu and rt.devices > gpus:
        raise SweepError(f"--devices {rt.devices}, but this machine has {gpus} GPU(s)")
    cores = os.cpu_count() or 1
    if not on_gpu and rt.devices > cores and warn is not None:
        warn(f"warning: --devices {rt.devices} CPU processes on {cores} core(s): allowed (gloo), but slow")
    launcher = external_launcher()
    if launcher and world > 1:
        ranks = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "0")) or 0)
        if ranks != world:
            raise SweepError(f"{launcher} started {ranks} process(es), but --devices {rt.devices} x --num-nodes "
                             f"{rt.num_nodes} = {world}: make them agree")
        if not in_process:
            raise SweepError(f"under {launcher} every rank must run the sweep itself: add --in-process")
    elif world > 1 and in_process:
        raise SweepError("--in-process with more than one device needs an external launcher (torchrun or srun, "
                         "see docs/distributed.md); without --in-process the sweep launches the ranks itself")
    if world > 1 and rt.num_nodes > 1 and not launcher:
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK") if k not in os.environ]
        if missing:
            raise SweepError(f"--num-nodes {rt.num_nodes} without torchrun/srun needs {', '.join(missing)} set on "
                             f"every node (see docs/distributed.md)")


def check_folder(cfg: SweepConfig, folder: Path, repair: bool = False, warn=None) -> None:
    """The folder can be written, every path a cell will write fits the OS limits, and it holds no other sweep."""
    longest = max((c.tag() for c in cfg.cells()), key=len)
    deepest = SweepFolder(folder).cell(longest) / LONGEST_FILE
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"  # per process: torchrun's ranks probe at once
        probe.write_text("ok")
        probe.unlink()
        path_max, name_max = os.pathconf(folder, "PC_PATH_MAX"), os.pathconf(folder, "PC_NAME_MAX")
    except OSError as err:
        raise SweepError(f"cannot write to the output folder {folder}: {err.strerror or err}") from None
    if len(os.fsencode(deepest.resolve())) >= path_max or any(len(os.fsencode(p)) > name_max for p in deepest.parts):
        raise SweepError(f"--out {folder.parent}: the cells' files ({deepest}) would exceed the OS path limit of "
                         f"{path_max} bytes; use a shorter --out or --name")
    check_existing(cfg, folder, repair, warn)


def check_existing(cfg: SweepConfig, folder: Path, repair: bool = False, warn=None) -> None:
    """A folder holding another sweep's config, or rows that are unreadable or of another configuration, is an
    error, never overwritten. `repair` moves such rows to results.bad.csv instead, so their cells run again."""
    paths = SweepFolder(folder)
    cfg_path = paths.config
    if cfg_path.exists():
        try:
            old = json.loads(cfg_path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            raise SweepError(f"{cfg_path} is unreadable: move it away, or use another --name or --out") from None
        if old.get("schema_version") != SCHEMA_VERSION:
            raise SweepError(f"{folder} holds a sweep written by another version of ssmlora (schema "
                             f"{old.get('schema_version')}, this one writes {SCHEMA_VERSION}); use another --name "
                             f"or --out")
        mine = cfg.identity()
        protocol = (old.get("identity") or {}).get("memory_protocol", 1)
        if protocol != mine["memory_protocol"]:
            raise SweepError(f"{folder} holds a sweep whose memory figures were measured within the timed run, by "
                             f"an earlier ssmlora (memory protocol {protocol}); this one measures them in a pass of "
                             f"their own (protocol {mine['memory_protocol']}), so their rows cannot share a table. "
                             "Leave out --name to run in this version's own folder, or use another --name or --out")
        theirs = old.get("identity") or {}
        if theirs and "tune" not in theirs:
            raise SweepError(f"{folder} holds a sweep of an earlier ssmlora whose tuning settings sat in the optim "
                             "section (its identity hash differs from this version's); leave out --name to run in "
                             "this version's own folder, or use another --name or --out")
        if theirs != mine:
            changed = [flag(k) for s in SECTIONS for k in mine[s] if (theirs.get(s) or {}).get(k) != mine[s][k]]
            changed = ["the device (--accelerator)" if c == "--device" else c for c in changed]
            raise SweepError(f"{folder} holds a sweep with a different configuration (differs in: "
                             f"{', '.join(changed) or 'layout'}); use another --name or --out, or the original "
                             f"settings to resume it")
    res = paths.results
    if res.exists():
        try:
            if repair:
                bad = repair_results(res, sweep_hash=cfg.identity_hash())
                if bad and warn is not None:
                    warn(f"--repair: moved {len(bad)} bad row(s) of {res} to {res.with_name('results.bad.csv')}; "
                         f"their cells run again")
            read_results(res, sweep_hash=cfg.identity_hash())
        except ResultsFormatError as err:
            hint = "" if repair else "; or rerun with --repair to set the bad rows aside and rerun their cells"
            raise SweepError(f"{err}{hint}") from None


def check_scan_directions(cfg: SweepConfig, model_type: str) -> None:
    """Every scan-mode entry of --methods can tell its direction on this backbone."""
    for variant in cfg.variants:
        adapter = variant.adapter(cfg.adapter)
        if "ssm_mode" in get_method(adapter.method).identity and adapter.ssm_mode == "scan":
            try:
                scan_direction(model_type, adapter.scan_direction)
            except ValueError as err:
                raise SweepError(f"--methods {variant.label}: {err} (--scan-direction)") from None


def check_eval_lengths(cfg: SweepConfig) -> None:
    """--eval-lengths: well formed, not below any train length, within the backbone's and tokenizer's reach,
    and on a task whose documents do not depend on the length (so a longer read is the same document)."""
    if not cfg.data.eval_lengths:
        return
    try:
        longest = max(max(cfg.data.eval_lengths_for(L), default=L) for L in cfg.lengths)
    except ValueError as err:
        raise SweepError(f"--eval-lengths {_show(cfg.data.eval_lengths)}: {err}") from None
    if get_task(cfg.data.task).per_length:
        raise SweepError(f"--eval-lengths: task {cfg.data.task!r} builds other documents at every length, so a "
                         f"longer read would not be the same documents; use a task such as topic-mix")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            check_backbone(cfg.model.model, longest)
    except BackboneError as err:
        reason = str(err).split(" is beyond ", 1)[-1]
        raise SweepError(f"--eval-lengths {_show(cfg.data.eval_lengths)}: {longest} tokens is beyond {reason}") from None
    if longest > MAX_EXTENDED_LEN:
        raise SweepError(f"--eval-lengths {_show(cfg.data.eval_lengths)}: {longest} tokens is beyond the task "
                         f"library's maximum of {MAX_EXTENDED_LEN}")


def check_hub_data(cfg: SweepConfig) -> None:
    """A hub task not yet in the data cache at every length needs the dataset hub: ask now, in seconds, rather
    than let every cell fail on it."""
    if get_task(cfg.data.task).kind != "hub":
        return
    tokenizer = resolve_model_path(cfg.model.model)
    missing = [n for n in cfg.lengths if not is_cached(cfg.data, n, tokenizer)]
    if missing:
        try:
            check_hub(cfg.data.task)
        except HubUnavailableError as err:
            raise SweepError(f"{err}; its data is not cached at L = {', '.join(map(str, missing))}") from None


def validate(cfg: SweepConfig, out: Path, name: str | None, in_process: bool = False, repair: bool = False,
             warn=None) -> Path:
    """Every check that needs no training, cheapest first; returns the sweep folder (created)."""
    check_settings(cfg)
    try:
        get_task(cfg.data.task)
    except ValueError as err:  # UnknownTaskError lists the known tasks
        raise SweepError(str(err)) from None
    check_devices(cfg, in_process, warn)
    check_logger(cfg)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a config read can warn about fields this version ignores
            info = check_backbone(cfg.model.model, max(cfg.lengths))
    except BackboneError as err:
        raise SweepError(str(err)) from None
    check_scan_directions(cfg, info.model_type)
    check_eval_lengths(cfg)
    check_hub_data(cfg)
    folder = Path(out) / (name or cfg.slug())
    check_folder(cfg, folder, repair, warn)
    return folder
