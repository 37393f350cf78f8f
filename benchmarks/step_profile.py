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

from torch.profiler import ProfilerActivity, profile

from ssmlora.sweep.config import SweepConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from docs_section import machine_line, write_docs_section  # noqa: E402
from step_floor import add_sweep_arguments, bare_steps, cell_model_and_data, default_sweep, endless  # noqa: E402

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
    module, dm = cell_model_and_data(cfg)
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
    add_sweep_arguments(parser)
    args = parser.parse_args(argv)
    sweep = default_sweep(args)
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
