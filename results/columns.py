"""The columns of the sweep's tables: `results.csv` (one row per cell), `extrapolation.csv` and `frontier.csv`.

Each results column's kind (int, float, str, json), when it must be filled and what it means are declared once,
in :data:`COLUMNS`; the reader, the writer, the docs' column table and the plots all read them from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEMA_VERSION = 5
KINDS = ("int", "float", "str", "json")


@dataclass(frozen=True)
class Column:
    """One column of results.csv. ``need``: "always" (every row), "ok" (rows with status ok), "scored" (rows with
    status ok of a cell that scored test documents: role accuracy), "" (may be empty)."""

    name: str
    kind: str
    meaning: str
    need: str = ""
    fraction: bool = False


# The order is the file's column order.
COLUMNS: tuple[Column, ...] = (
    Column("schema_version", "int", f"version of this table's format ({SCHEMA_VERSION})", "always"),
    Column("sweep_hash", "str", "hex hash of the sweep's identity (its configuration, less grid and plumbing)",
           "always"),
    Column("task", "str", "task name from data_prep's registry", "always"),
    Column("model", "str", "backbone id or path", "always"),
    Column("method", "str", "lora | ssmlora | frozen (head only: the cost floor)", "always"),
    Column("ssm_mode", "str", "depth | carry | scan for ssmlora; empty otherwise"),
    Column("variant", "str", "the --methods entry that ran: a method (lora), METHOD:VARIANT (ssmlora:scan) or a "
                             "control (lora-at-ssmlora-lr); the series name of plots and report", "always"),
    Column("max_len", "int", "context length L in tokens", "always"),
    Column("seed", "int", "random seed of the cell", "always"),
    Column("role", "str", "accuracy: trained, tested (and read further with --eval-lengths) | cost: a cost cell "
                          "(--cost-methods): --cost-steps optimizer steps timed and the memory pass, nothing scored",
           "always"),
    Column("status", "str", "ok | oom | failed: <reason>", "always"),
    Column("accuracy", "float", "test accuracy, fraction", "scored", fraction=True),
    Column("macro_f1", "float", "test macro-F1, fraction", "scored", fraction=True),
    Column("majority_rate", "float", "majority-class rate of the test split, fraction", "scored", fraction=True),
    Column("n_test", "int", "number of test examples scored", "scored"),
    Column("adapter_params", "int", "trainable adapter parameters (head excluded)", "ok"),
    Column("head_params", "int", "trainable classifier-head parameters", "ok"),
    Column("trainable_params", "int", "all trainable parameters", "ok"),
    Column("peak_mem_mb", "float",
           "whole-process peak of the cell's process in MiB, every phase (CUDA: max allocated; CPU: peak RSS); "
           "compare training with train_peak_mb"),
    Column("peak_reserved_mb", "float", "CUDA: whole-process max reserved MiB; empty on CPU"),
    Column("mem_includes", "str", "what peak_mem_mb includes"),
    Column("real_tokens_per_s", "float", "non-padding training tokens per second, after warm-up, all devices"),
    Column("padded_tokens_per_s", "float", "training tokens per second including padding, after warm-up, all devices"),
    Column("samples_per_s", "float", "training sequences per second, after warm-up, all devices"),
    Column("step_time_s", "float", "median optimizer-step time after warm-up, seconds"),
    Column("flops_per_step", "float", "FLOPs of one optimizer step (torch.utils.flop_counter)"),
    Column("mfu", "float", "model FLOPs utilisation on a GPU of known peak; empty otherwise"),
    Column("train_steps", "int", "optimizer steps taken", "ok"),
    Column("effective_batch", "int", "sequences per optimizer step over all devices"),
    Column("wall_s", "float", "wall time of the whole cell (build, train, evaluate), seconds", "ok"),
    Column("attn_impl", "str", "attention kernel that ran: flash_attention_2 | sdpa | eager"),
    Column("precision", "str", "Lightning precision: 32 | bf16-mixed | 16-mixed"),
    Column("accelerator", "str", "cpu | gpu"),
    Column("devices", "str", "devices per node x nodes"),
    Column("accuracy_by_depth", "json", "needle only: JSON {depth-bin lower edge: accuracy}"),
    Column("lr", "float", "the adapter matrices' peak learning rate of the cell (empty: no adapters)"),
    Column("selected_on", "str", "where lr came from: default (registry or --lr) or val@L<length> (--tune lr)"),
    Column("probe_accuracy", "float", "the linear-probe head alone on the frozen model, same test documents "
                                      "(--head-init probe), fraction", fraction=True),
    Column("train_peak_mb", "float", "training phase alone, MiB (mem_basis: CUDA max allocated, weights included; "
                                     "CPU rise of RSS over the phase's start)"),
    Column("eval_peak_mb", "float", "test phase alone, MiB (same basis)"),
    Column("probe_peak_mb", "float", "linear-probe phase alone, MiB (same basis; ~0 when its features were cached)"),
    Column("build_peak_mb", "float", "data build (in its own process) and backbone load, rise of host RSS, MiB"),
    Column("train_reserved_mb", "float", "CUDA: max reserved during training, MiB; empty on CPU"),
    Column("eval_reserved_mb", "float", "CUDA: max reserved during the test, MiB; empty on CPU"),
    Column("mem_basis", "str", "cuda_max_allocated | cpu_rss_rise: what the phase columns measure"),
    Column("weights_frozen_mb", "float", "frozen parameters and buffers, MiB (counted from shapes)"),
    Column("weights_trainable_mb", "float", "trainable parameters (adapters + head), MiB"),
    Column("grads_mb", "float", "gradients of the trainable parameters, MiB"),
    Column("optimizer_mb", "float", "AdamW state (two moments + step), MiB"),
    Column("activations_mb", "float", "bytes saved for backward by one micro-batch, MiB (counted)"),
    Column("activations_mb_per_seq", "float", "saved for backward per sequence of length L, MiB (counted)"),
    Column("unexplained_mb", "float", "train_peak_mb minus the counted parts it contains"),
)
assert all(c.kind in KINDS and c.need in ("always", "ok", "scored", "") for c in COLUMNS)
RESULT_COLUMNS: list[tuple[str, str]] = [(c.name, c.meaning) for c in COLUMNS]
COLUMN_NAMES = [c.name for c in COLUMNS]
COLUMN_KINDS = {c.name: c.kind for c in COLUMNS}
NUMERIC_COLUMNS = tuple(c.name for c in COLUMNS if c.kind in ("int", "float"))
CELL_KEY = ("task", "model", "variant", "method", "ssm_mode", "max_len", "seed", "role")
ROLES = ("accuracy", "cost")
# Schema 1 had no version or hash column; recognising its header lets the error say what happened.
SCHEMA_1_NAMES = frozenset(COLUMN_NAMES) - {"schema_version", "sweep_hash"}

# ---------------------------------------------------------------- extrapolation.csv

# Long format, one row per (cell, eval length): the cell's test documents read up to eval_len tokens.
# eval_len == max_len is the cell's own test score. interval_*: Wilson 95 % interval of the accuracy.
EXTRAPOLATION_COLUMNS = ("method", "ssm_mode", "variant", "seed", "max_len", "eval_len", "accuracy", "n", "interval_low",
                         "interval_high", "majority_rate")


def wilson_interval(correct: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion `correct` / `n` (95 % by default; `correct` may be a mean
    count over seeds); (nan, nan) for n = 0."""
    if n <= 0:
        return math.nan, math.nan
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


# frontier.csv (`experiments/run.py --frontier`): one row per (method, gradient checkpointing). Column order.
FRONTIER_COLUMNS: tuple[tuple[str, str], ...] = (
    ("method", "adapter method"),
    ("gradient_checkpointing", "True | False"),
    ("fit_len", "longest L (multiple of 256) whose training step at micro-batch 1 fits the budget; 0: none"),
    ("mem_budget_mb", "the budget, MiB"),
    ("how", "measured (real attempts, bisection; CUDA) | predicted (from the counted activations and the probe "
            "steps, confirmed by a real step at fit_len; CPU)"),
    ("reach", "longest input the backbone takes; fit_len never exceeds it"),
    ("cap_hit", "True when fit_len is the reach: memory was not the limit"),
    ("step_peak_mb", "peak MiB of the real step at fit_len (CUDA: max allocated; CPU: weights + RSS rise)"),
    ("predicted_len", "the fitted prediction before any confirming step (0: none)"),
    ("exponent", "log-log slope of the counted saved-for-backward bytes over the warm-up and probe lengths"),
    ("fixed_mb", "weights, gradients and optimizer state, MiB (counted)"),
    ("attempts", "JSON {L: peak MiB or 'oom'} of every real step but the warm-up"),
    ("seconds", "wall time of this row's search"),
    ("model", "backbone"),
    ("attn_impl", "attention kernel"),
    ("precision", "Lightning precision of the steps"),
    ("device", "cpu | cuda"),
    ("note", "why fit_len stopped where it did, when not memory"),
)
