"""Where does a cell's training step spend its time? torch.profiler over bare steps of the default cell.

The step is `step_floor.bare_steps` (the cell's work without Lightning, which `step_floor.py` shows costs
nothing measurable on top). Per (method, L), after one untimed step, `--steps` steps run under the profiler; the
operators' own CPU time is summed into groups (attention, matrix products, casts, normalisation, the optimizer,
the rest) and the largest operators are listed. The profiler's own overhead inflates small operators, so the
shares, not the absolute times, are the result.

    python benchmarks/step_profile.py                      # lora and ssmlora at 512 and 4096
    python benchmarks/step_profile.py --lengths 512 --methods lora --top 20
    python benchmarks/step_profile.py --write-docs         # also into docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from ssmlora.lab.cell import build_cell
from ssmlora.lab.data import TaskDataModule
from ssmlora.lab.module import AdapterClassifier
from ssmlora.lab.runtime import quiet_libraries
from ssmlora.sweep.config import SweepConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from docs_section import machine_line, write_docs_section  # noqa: E402
from step_floor import bare_steps, endless  # noqa: E402

# Operator name fragments per group, first match wins; everything else is "other".
GROUPS = [
    ("attention", ("scaled_dot_product", "flash_attention", "softmax", "_efficient_attention")),
    ("matrix products", ("addmm", "aten::mm", "bmm", "matmul", "linear", "baddbmm")),
    ("casts and copies", ("_to_copy", "copy_", "aten::to", "contiguous", "clone")),
    ("normalisation", ("layer_norm", "rms_norm")),
    ("optimizer and clipping", ("adamw", "_foreach", "lerp", "addcmul", "addcdiv", "norm", "clamp")),
    ("elementwise", ("gelu", "add", "mul", "div", "sub", "dropout", "where", "tanh", "exp", "cumsum", "cumprod",
                     "sigmoid", "silu", "neg", "pow", "sqrt", "rsqrt", "min", "max")),
]


def group_of(name: str) -> str:
    for group, parts in GROUPS:
        if any(p in name for p in parts):
            return group
    return "other"


def profile_cell(sweep: SweepConfig, method: str, length: int, steps: int, top: int) -> list[str]:
    cfg = sweep.cell(method, length, 0)
    data, labels, pad_id, model, _ = build_cell(cfg)
    module = AdapterClassifier(model, len(labels), cfg.optim, lr=cfg.lr, max_steps=cfg.optim.max_steps)
    dm = TaskDataModule(data, cfg.batch_plan()[1], cfg.seed, pad_id)
    dm.setup("fit")
    batches = endless(dm)
    bare_steps(cfg, module, batches, 0)  # warm: AdamW's state, kernel choices
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        bare_steps(cfg, module, batches, steps - 1)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    shares: dict[str, float] = defaultdict(float)
    for e in events:
        shares[group_of(e.key)] += e.self_cpu_time_total / total
    out = [f"### {method} at L = {length} ({steps} steps, {total / 1e6 / steps:.2f} s of operator time per step)",
           "", "| group | share of operator CPU time |", "|---|---|"]
    out += [f"| {g} | {shares[g]:.1%} |" for g in sorted(shares, key=shares.get, reverse=True)]
    out += ["", "| operator | group | share | calls per step |", "|---|---|---|---|"]
    for e in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]:
        out.append(f"| `{e.key}` | {group_of(e.key)} | {e.self_cpu_time_total / total:.1%} | {e.count // steps} |")
    return out + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="lora,ssmlora")
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 4096])
    parser.add_argument("--steps", type=int, default=2, help="profiled optimizer steps")
    parser.add_argument("--top", type=int, default=12, help="operators listed")
    parser.add_argument("--model", default=None, help="backbone (default: the sweep's)")
    parser.add_argument("--cache-dir", default=None, help="data cache (default: the sweep's)")
    parser.add_argument("--tokens-per-step", type=int, default=None, help="(default: the sweep's)")
    parser.add_argument("--write-docs", action="store_true", help="also write the result into docs/benchmarks.md")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("model", args.model), ("cache_dir", args.cache_dir),
                                   ("tokens_per_step", args.tokens_per_step)) if v is not None}
    sweep = SweepConfig.from_flat(**overrides)
    quiet_libraries(sweep.runtime.verbose)
    torch.set_num_threads(sweep.runtime.torch_threads())
    print(machine_line(), flush=True)
    lines: list[str] = []
    for length in args.lengths:
        for method in args.methods.split(","):
            block = profile_cell(sweep, method, length, args.steps, args.top)
            lines += block
            print("\n".join(block), flush=True)
    if args.write_docs:
        print(f"wrote {write_docs_section('step_profile', chr(10).join(lines), machine_line())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
