"""What a sweep will cost on this machine, said before any cell runs: a cost model, calibrated here.

The calibration times one frozen forward pass of the sweep's own backbone, one sequence, at the sweep's shortest
length and at its longest read (at most 2048 tokens, so the calibration stays a few seconds), on the sweep's
device and precision, in a spawned process (so the sweep's own process, whose memory a cell may measure, stays
untouched). Those two times fix the cost of reading one document of L tokens,

    t(L) = a L + b L^2      (projections and MLP grow as L, attention's scores as L^2; b >= 0; b = 0 when the
                             sweep reads one length only),

and every part of a cell is counted in units of t(L), with constants fitted on a reference machine (a 2-core
CPU, MiniLM, bf16-mixed; the fit is in docs/tuning-notes.md, "What a verdict costs"):

    cell(L)  = SETUP_S + steps x KAPPA x batch(L) x t(L) + n_scored(L) x t(L) + n_read x sum over longer reads t(L')
               [+ validation passes, n_val x t(L) each]    (a cost cell scores nothing: n_scored = n_read = 0;
                                                            n_read = --read-docs, or n_scored)
    prep(L)  = BUILD_S x (1 + longer reads) + FEATURE_SHARE x (seeds x probe_examples + n_scored(L)) x t(L)
               (the features only when the length's first cell fits a probe head: not before cost cells)

SETUP_S is what a cell pays at 0 steps beyond its test documents (process start, backbone load, the probe
head's fit from cached features, the memory pass, Lightning's setup). KAPPA is a training sequence's cost in
forward passes of it (a backward costs about twice a forward, plus the optimizer and autocast's copies), and
FEATURE_SHARE the probe's feature extraction per document in forward passes (no head, no gradients). On another
machine the constants are scaled by the calibration, and on a GPU the fixed costs dominate and the estimate is
rough; the console says which it is.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from data_prep import get_task
from ssmlora.lab.cell import CellConfig

CALIBRATION_CAP = 2048  # the longer calibration length at most (unless the shortest is longer)
SETUP_S = 15.0  # a cell's fixed cost at 0 steps beyond its test documents, reference machine
KAPPA = 6.0  # a training sequence, forward + backward + optimizer share, in forward passes of it
FEATURE_SHARE = 0.7  # the probe's frozen features per document, in forward passes of it (reference machine)
BUILD_S = 10.0  # building one length's splits into a cold data cache (topic-mix: 9-16 s, docs/tasks.md)


@dataclass(frozen=True)
class Calibration:
    """Seconds of one frozen forward pass of one sequence at each of `lengths`, on `device` (cpu | gpu)."""

    lengths: tuple[int, ...]
    seconds: tuple[float, ...]
    device: str

    def per_document(self, length: int) -> float:
        """t(L) = a L + b L^2 through the two measured points (b clamped at 0 against timing noise); t(L) = a L
        through one."""
        (l1, l2), (t1, t2) = (self.lengths * 2)[-2:], (self.seconds * 2)[-2:]  # one length: both points there
        b = max(0.0, (t2 - t1 * l2 / l1) / (l2 * l2 - l1 * l2)) if l2 != l1 else 0.0
        a = max(0.0, (t1 - b * l1 * l1) / l1)
        return a * length + b * length * length

    def describe(self) -> str:
        said = " and ".join(f"{t:.3f} s at {L}" for L, t in zip(self.lengths, self.seconds))
        return f"a forward pass takes {said} tokens on {self.device}"


def calibration_lengths(lengths: list[int]) -> tuple[int, ...]:
    """(shortest, min(longest, max(shortest, CALIBRATION_CAP))) of the lengths a sweep reads; one when equal."""
    short = min(lengths)
    long = min(max(lengths), max(short, CALIBRATION_CAP))
    return (short,) if long == short else (short, long)


def time_forwards(model_name: str, precision: str, device_type: str, threads: int,
                  lengths: tuple[int, ...]) -> list[float]:
    """In a spawned child (ssmlora.sweep.child): the faster of two forward passes at each length, after one
    warm-up, of one sequence of filler tokens."""
    import torch

    from ssmlora.lab.backbone import load_backbone, resolve_model_path
    from ssmlora.lab.runtime import quiet_libraries

    quiet_libraries()
    torch.set_num_threads(threads)
    device = torch.device("cuda" if device_type == "gpu" else "cpu")
    model, _ = load_backbone(resolve_model_path(model_name), num_labels=2, reach=max(lengths))
    model.to(device).eval()
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    out = []
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        for length in lengths:
            ids = torch.full((1, length), 100, device=device)
            times = []
            for _ in range(3):
                start = time.perf_counter()
                model(input_ids=ids, attention_mask=torch.ones_like(ids))
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            out.append(min(times[1:]))
    return out


def scored(cell: CellConfig, split: str = "test") -> int:
    """Documents one evaluation of `cell` scores: eval_tokens // L (at least min_eval), at most the split."""
    sizes = dict(zip(("train", "validation", "test"), get_task(cell.data.task).default_sizes))
    built = getattr(cell.data, f"n_{split}") or sizes[split]
    return min(built, cell.data.eval_limit(cell.max_len))


def cell_seconds(cell: CellConfig, cal: Calibration) -> float:
    """The cost model's wall time of one cell (see the module's docstring)."""
    t = cal.per_document(cell.max_len)
    steps = cell.optim.max_steps
    if cell.optim.epochs:
        steps = cell.optim.epochs * math.ceil(get_task(cell.data.task).default_sizes[0] / cell.batch_plan()[0])
    train = steps * KAPPA * cell.batch_plan()[0] * t
    n = 0 if cell.role == "cost" else scored(cell, "validation" if cell.tuning else "test")
    read = min(n, cell.data.read_docs or n)
    reads = n * t + read * sum(cal.per_document(L) for L in cell.data.eval_lengths_for(cell.max_len))
    validations = (steps // cell.optim.val_every + 1) * scored(cell, "validation") * t if cell.optim.val_every else 0
    return SETUP_S + train + reads + validations


def prep_seconds(cell: CellConfig, seeds: list[int], cal: Calibration) -> float:
    """The cost model's wall time of one length's preparation step (ssmlora.lab.prep)."""
    builds = 1 + len(cell.data.eval_lengths_for(cell.max_len))
    features = len(seeds) * cell.optim.probe_examples + scored(cell) if cell.optim.head_init == "probe" else 0
    return BUILD_S * builds + FEATURE_SHARE * features * cal.per_document(cell.max_len)


@dataclass(frozen=True)
class Estimate:
    """Per-cell and per-length seconds of the cells still to run, and their total."""

    cells: dict[str, float]  # cell tag -> seconds
    prep: dict[int, float]  # length -> seconds of its preparation step
    calibration: Calibration

    @property
    def total_s(self) -> float:
        return sum(self.cells.values()) + sum(self.prep.values())

    def record(self) -> dict:
        """config.json's "estimate": the calibration, the model's constants and the seconds it predicts."""
        return {"total_s": round(self.total_s), "cells_s": {k: round(v) for k, v in self.cells.items()},
                "prep_s": {str(k): round(v) for k, v in self.prep.items()},
                "calibration": {"device": self.calibration.device,
                                "forward_s": dict(zip(map(str, self.calibration.lengths), self.calibration.seconds))},
                "model": {"setup_s": SETUP_S, "kappa": KAPPA, "feature_share": FEATURE_SHARE, "build_s": BUILD_S}}


def estimate(cells: list[CellConfig], seeds: list[int], cal: Calibration, prepares: bool = True) -> Estimate:
    """The cost of running `cells` (those without a row yet); `prepares`: each of their lengths gets a
    preparation step first (a sweep of cell processes does; `--in-process` builds inside the cells)."""
    firsts = {c.max_len: c for c in reversed(cells) if not c.tuning}
    prep = {L: prep_seconds(c, seeds, cal) for L, c in sorted(firsts.items())} if prepares else {}
    return Estimate({c.tag() if not c.tuning else f"tune/{c.tag()}@{c.lr:g}": cell_seconds(c, cal) for c in cells},
                    prep, cal)


def clock(seconds: float) -> str:
    """'2 h 41 min', '38 min', '40 s'."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


def table(cfg, est: Estimate) -> str:
    """`--dry-run`'s table: estimated minutes per entry and length (all its seeds; "-": no cell there), its cost
    cells on a row of their own, the preparation steps and the totals."""
    lengths = sorted(cfg.lengths)
    rows = [["minutes", *map(str, lengths), "seeds"]]
    trials = sum(v for k, v in est.cells.items() if k.startswith("tune/"))
    if trials:
        rows.append(["tuning trials (validation)", f"{trials / 60:.1f} in all", *[""] * len(lengths)])
    cells = cfg.cells()
    for role in ("accuracy", "cost"):
        for variant in cfg.variants:
            mine = [c for c in cells if c.label == variant.label and c.role == role]
            if mine:
                per_length = [sum(est.cells.get(c.tag(), 0.0) for c in mine if c.max_len == L) for L in lengths]
                seeds = sorted({c.seed for c in mine})
                rows.append([variant.label + (" (cost)" if role == "cost" else ""),
                             *[f"{m / 60:.1f}" if m else "-" for m in per_length], ",".join(map(str, seeds))])
    rows.append(["preparation (once per length)", *[f"{est.prep.get(L, 0.0) / 60:.1f}" for L in lengths], ""])
    totals = [sum(est.cells.get(c.tag(), 0.0) for c in cells if c.max_len == L) + est.prep.get(L, 0.0)
              for L in lengths]
    rows.append(["total", *[f"{m / 60:.1f}" for m in totals], ""])
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths))).rstrip()
                     for r in rows)
