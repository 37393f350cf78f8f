"""How close does a sweep cell's training step come to a bare PyTorch step of the same work?

Per (method, L), in one process and on one model: the cell's step (Lightning's Trainer as the cell makes it, with
the cell's callbacks, logger and precision plugin, fed by the cell's data module) and a bare step (the same
model, adapters, micro-batch, accumulation, autocast, clipping, AdamW and schedule, in a plain loop over the same
loader). The two are timed in alternating blocks, the order flipped every round, so a slow spell of the machine
hits both. The first step of every block is left out: it builds AdamW's state (and, in the cell, counts FLOPs).
Prints the median step of each, their ratio and the FLOP rate. Target: cell / bare <= 1.15 at every L.

    python benchmarks/step_floor.py                                  # lora and ssmlora at 512 ... 4096
    python benchmarks/step_floor.py --lengths 512 --rounds 1 --steps 2
    python benchmarks/step_floor.py --write-docs                     # also into docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger

from ssmlora.lab.cell import CellConfig, build_cell
from ssmlora.lab.trainer import make_trainer
from ssmlora.lab.data import TaskDataModule
from ssmlora.lab.module import AdapterClassifier
from ssmlora.lab.profilers import ThroughputCallback
from ssmlora.lab.progress import StepProgressBar
from ssmlora.lab.runtime import quiet_libraries
from ssmlora.sweep.config import SweepConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from docs_section import machine_line, write_docs_section  # noqa: E402

TARGET = 1.15


class StepClock(L.Callback):
    """Wall time from the end of one optimizer step to the end of the next: everything the Trainer does per step
    (fetching and moving the batches, hooks, callbacks, logging, the step itself), timed as the bare loop is.
    The cell's own ThroughputCallback starts its clock after the first batch is fetched, so it is not used here."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self._step = 0

    def on_train_batch_end(self, trainer, *_) -> None:
        if trainer.global_step != self._step:  # an optimizer step just finished
            self._step = trainer.global_step
            self.ends.append(time.perf_counter())

    def step_times(self) -> list[float]:
        return [b - a for a, b in zip(self.ends, self.ends[1:])]


def cell_steps(cfg: CellConfig, module: AdapterClassifier, dm: TaskDataModule, steps: int, workdir: Path) -> tuple[
        list[float], float | None]:
    """`steps` timed optimizer steps of the cell's own Trainer (with the cell's callbacks and logger), after one
    untimed one. Returns (seconds per step, FLOPs per step)."""
    speed, clock = ThroughputCallback(warmup_steps=1), StepClock()
    trainer = make_trainer(cfg, steps + 1, [speed, StepProgressBar(), clock],
                           logger=CSVLogger(str(workdir), name="", version=""), default_root_dir=str(workdir))
    module.train()
    trainer.fit(module, datamodule=dm)
    return clock.step_times(), speed.summary()["flops_per_step"]


def bare_steps(cfg: CellConfig, module: AdapterClassifier, batches, steps: int) -> list[float]:
    """`steps` timed optimizer steps of a plain loop doing the cell's work, after one untimed one: per micro-batch
    a forward under the cell's autocast and a backward of the loss divided by the accumulation (as Lightning
    scales it); per step the gradients set to None first, as Lightning does, then the cell's gradient clipping,
    AdamW and schedule step."""
    _, micro, accumulate = cfg.batch_plan()
    optimizers = module.configure_optimizers()
    opt, sched = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
    params = [p for p in module.parameters() if p.requires_grad]
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.runtime.precision == "bf16-mixed")
    module.train()
    times = []
    last = time.perf_counter()
    for step in range(steps + 1):
        opt.zero_grad(set_to_none=True)  # as Lightning does, before the step's first backward
        for _ in range(accumulate):
            batch = next(batches)
            with autocast:
                logits = module(batch)
                loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"]) / accumulate
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        opt.step()
        sched.step()
        now = time.perf_counter()
        if step:
            times.append(now - last)
        last = now
    return times


def endless(dm: TaskDataModule):
    """The cell's training batches, epoch after epoch."""
    while True:
        yield from dm.train_dataloader()


def compare(cfg: CellConfig, steps: int, rounds: int, workdir: Path) -> dict:
    """Interleaved timing of both steps for one cell configuration."""
    module, dm = cell_model_and_data(cfg)
    batches = endless(dm)
    cell, bare, flops = [], [], None
    for r in range(rounds):
        for kind in (("cell", "bare") if r % 2 == 0 else ("bare", "cell")):
            L.seed_everything(cfg.seed, verbose=False)
            if kind == "cell":
                times, flops = cell_steps(cfg, module, dm, steps, workdir / f"round{r}")
                cell += times
            else:
                bare += bare_steps(cfg, module, batches, steps)
    c, b = statistics.median(cell), statistics.median(bare)
    return {"cell_s": c, "bare_s": b, "ratio": c / b, "flops": flops, "n": (len(cell), len(bare))}


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """The sweep settings a step benchmark may change (tests point them at a tiny backbone), and --write-docs."""
    parser.add_argument("--model", default=None, help="backbone (default: the sweep's)")
    parser.add_argument("--cache-dir", default=None, help="data cache (default: the sweep's)")
    parser.add_argument("--tokens-per-step", type=int, default=None, help="(default: the sweep's)")
    parser.add_argument("--write-docs", action="store_true", help="also write the result into docs/benchmarks.md")


def default_sweep(args: argparse.Namespace) -> SweepConfig:
    """The default sweep with `add_sweep_arguments`' changes; sets this process up as a cell's is (quiet
    libraries, the cell's thread count) and prints the machine line."""
    overrides = {k: v for k, v in (("model", args.model), ("cache_dir", args.cache_dir),
                                   ("tokens_per_step", args.tokens_per_step)) if v is not None}
    sweep = SweepConfig.from_flat(**overrides)
    quiet_libraries(sweep.runtime.verbose)
    torch.set_num_threads(sweep.runtime.torch_threads())
    print(machine_line(), flush=True)
    return sweep


def cell_model_and_data(cfg: CellConfig) -> tuple[AdapterClassifier, TaskDataModule]:
    """The cell's adapted model in its LightningModule and its data module, set up for training."""
    data, labels, pad_id, model, _ = build_cell(cfg)
    module = AdapterClassifier(model, len(labels), cfg.optim, lr=cfg.lr, max_steps=cfg.optim.max_steps)
    dm = TaskDataModule(data, cfg.batch_plan()[1], cfg.seed, pad_id)
    dm.setup("fit")
    return module, dm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="lora,ssmlora")
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per block")
    parser.add_argument("--rounds", type=int, default=2, help="blocks of each kind, alternating")
    add_sweep_arguments(parser)
    args = parser.parse_args(argv)
    sweep = default_sweep(args)
    lines = ["| method | L | micro-batch x accumulation | cell step s | bare step s | cell / bare | "
             "cell GFLOP/s | bare GFLOP/s |", "|---|---|---|---|---|---|---|---|"]
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for length in args.lengths:
            for method in args.methods.split(","):
                cfg = sweep.cell(method, length, 0)
                got = compare(cfg, args.steps, args.rounds, Path(tmp) / f"{method}-{length}")
                worst = max(worst, got["ratio"])
                _, micro, accumulate = cfg.batch_plan()
                rate = (lambda s: f"{got['flops'] / s / 1e9:.0f}") if got["flops"] else (lambda s: "-")
                lines.append(f"| {method} | {length} | {micro} x {accumulate} | {got['cell_s']:.4g} | "
                             f"{got['bare_s']:.4g} | {got['ratio']:.3f} | {rate(got['cell_s'])} | "
                             f"{rate(got['bare_s'])} |")
                print(lines[-1], flush=True)
    lines.append(f"\nMedians of {args.rounds} x {args.steps} steps each. Largest cell / bare: {worst:.3f} (target: "
                 f"at most {TARGET}: {'met' if worst <= TARGET else 'MISSED'})")
    print("\n".join(lines))
    if args.write_docs:
        print(f"wrote {write_docs_section('step_floor', chr(10).join(lines), machine_line())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
