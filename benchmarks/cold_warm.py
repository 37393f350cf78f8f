"""Does a cell's training memory depend on what ran before it in its process? The default sweep's cell, cold
and then warm, side by side.

Per (method, L): the cell runs in a fresh process on an empty data and probe cache (cold: the data set is built,
the probe's features extracted), then again in another fresh process on the filled caches (warm). Both use the
sweep's backbone, precision, micro-batching and learning rates; fewer steps and test documents than the sweep,
which change neither the training step nor its memory. Prints `train_peak_mb` (rise of RSS over the training
phase's start) both ways and cold/warm. Target: within 3 %. The tokenizer runs on the cell's own thread
(TOKENIZERS_PARALLELISM=false), the case that used to leave a cold cell 14 MiB higher.

    python benchmarks/cold_warm.py                         # lora and ssmlora at 512 and 4096
    python benchmarks/cold_warm.py --lengths 512 --write-docs
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from ssmlora.sweep.config import SweepConfig
from ssmlora.sweep.launch import run_cell_in_process

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from docs_section import machine_line, write_docs_section  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="lora,ssmlora")
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 4096])
    parser.add_argument("--max-steps", type=int, default=4, help="optimizer steps per cell (the sweep: 15)")
    parser.add_argument("--n-test", type=int, default=16, help="test documents built (scored: all of them)")
    parser.add_argument("--write-docs", action="store_true", help="also write the result into docs/benchmarks.md")
    args = parser.parse_args(argv)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    print(machine_line(), flush=True)
    lines = ["| method | L | cold MiB | warm MiB | cold/warm | data build MiB (cold, own process) |",
             "|---|---|---|---|---|---|"]
    worst, warm_rows = 0.0, {}
    for length in args.lengths:
        for method in args.methods.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                cfg = SweepConfig.from_flat(cache_dir=str(Path(tmp) / "data"), max_steps=args.max_steps,
                                            n_test=args.n_test)
                cell, start = cfg.cell(method, length, 0), time.perf_counter()
                cold = run_cell_in_process(cell, Path(tmp) / "cold", Path(tmp) / "probe")
                warm = run_cell_in_process(cell, Path(tmp) / "warm", Path(tmp) / "probe")
            if cold["status"] != "ok" or warm["status"] != "ok":
                print(f"{method} at {length}: {cold.get('error') or warm.get('error')}", file=sys.stderr)
                return 1
            warm_rows[method, length] = warm
            c, w = cold["train_peak_mb"], warm["train_peak_mb"]
            worst = max(worst, abs(c / w - 1))
            lines.append(f"| {method} | {length} | {c:.1f} | {w:.1f} | {c / w:.3f} | "
                         f"{cold['phases'].get('data_build_rise_mb', float('nan')):.0f} |")
            print(lines[-1] + f"  ({time.perf_counter() - start:.0f} s; warm: counted {counted(warm):.1f}, "
                  f"remainder {warm['unexplained_mb']:.1f} MiB)", flush=True)
    lines.append(f"\nLargest cold/warm difference: {worst:.1%} (target: within 3 %: {'met' if worst <= 0.03 else 'MISSED'})")
    lines += method_gap(warm_rows, args.methods.split(","), args.lengths)
    print("\n".join(lines))
    if args.write_docs:
        print(f"wrote {write_docs_section('cold_warm', chr(10).join(lines), machine_line())}")
    return 0 if worst <= 0.03 else 1


def counted(row: dict) -> float:
    """What the count says a cell's adapters hold in its training rise: gradients, AdamW state, saved
    activations (the frozen weights are resident before training and are not part of it)."""
    return row["grads_mb"] + row["optimizer_mb"] + row["activations_mb"]


def method_gap(rows: dict, methods: list[str], lengths: list[int]) -> list[str]:
    """Per L, the first method's warm training peak minus each other's, beside the same difference of `counted`
    and of the remainders."""
    base = methods[0]
    out = ["", f"Warm cells, {base} minus each other method (MiB):", "",
           "| L | other | train peak difference | counted difference | remainder difference |", "|---|---|---|---|---|"]
    for length in lengths:
        for other in methods[1:]:
            a, b = rows[base, length], rows[other, length]
            out.append(f"| {length} | {other} | {a['train_peak_mb'] - b['train_peak_mb']:+.1f} | "
                       f"{counted(a) - counted(b):+.1f} | {a['unexplained_mb'] - b['unexplained_mb']:+.1f} |")
    return out


if __name__ == "__main__":
    sys.exit(main())
