"""The length sweep: `python experiments/run.py --max-len 4096`.

Trains every method at every length (powers of two from --min-len up to --max-len), one process per cell,
and writes <out>/<name>/{config.json,results.csv,cells/}. Rerunning the same command resumes: finished
cells are skipped. Exit code 0 when every cell is ok, 1 when any cell failed, 2 on bad input.

Several devices (README section 'Several GPUs and several machines'): `--devices N --strategy ddp [--num-nodes M] [--accelerator cpu|gpu]`
makes every cell N rank processes per node, spawned by the sweep; or start the ranks with
`torchrun --nproc-per-node N experiments/run.py --in-process ...` (or `srun ... --in-process`).
"""

from __future__ import annotations

import argparse
import sys
import typing
from dataclasses import fields

from ssmlora.sweep import SweepConfig, SweepError, any_failed, is_rank_zero, results_table, run_sweep

# Flags computed from others, or spelled differently from their field.
_DERIVED = {"lengths"}


def _csv(kind):
    return lambda s: [kind(x) for x in s.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--max-len", type=int, default=4096, help="longest context length")
    p.add_argument("--min-len", type=int, default=512, help="shortest context length")
    p.add_argument("--lengths", type=_csv(int), default=None, help="explicit lengths, e.g. 512,2048 (overrides)")
    p.add_argument("--out", default="lightning_logs", help="parent folder of sweep folders")
    p.add_argument("--name", default=None, help="sweep folder name (default: derived from the configuration)")
    p.add_argument("--retry-failed", action="store_true", help="rerun cells recorded as oom/failed")
    p.add_argument("--in-process", action="store_true",
                   help="run cells in this process (no memory isolation; for debugging and launchers like torchrun)")
    hints = typing.get_type_hints(SweepConfig)
    for f in fields(SweepConfig):
        if f.name in _DERIVED:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default_factory() if callable(f.default_factory) else f.default
        hint = str(hints[f.name])
        if hint.startswith("list"):
            kind = int if "int" in hint else str
            p.add_argument(flag, type=_csv(kind), default=default, help=f.metadata.get("help", ""))
        elif hints[f.name] is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=f.metadata.get("help"))
        else:
            kind = int if "int" in hint else float if "float" in hint else str
            p.add_argument(flag, type=kind, default=default, help=f.metadata.get("help", ""))
    return p


def lengths_from(args) -> list[int]:
    if args.lengths:
        return sorted(set(args.lengths))
    if args.min_len <= 0 or args.max_len < args.min_len:
        raise SweepError(f"--max-len ({args.max_len}) must be >= --min-len ({args.min_len}) > 0")
    out, L = [], args.min_len
    while L <= args.max_len:
        out.append(L)
        L *= 2
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        values = {f.name: getattr(args, f.name) for f in fields(SweepConfig) if f.name not in _DERIVED}
        cfg = SweepConfig(**values, lengths=lengths_from(args))
        folder, rows = run_sweep(cfg, out=args.out, name=args.name, retry_failed=args.retry_failed,
                                 in_process=args.in_process)
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished cells are in results.csv; rerun the same command to resume", file=sys.stderr)
        return 130
    if not is_rank_zero():  # torchrun / srun: the other ranks trained and scored; rank 0 reports
        return 1 if any_failed(rows) else 0
    print(results_table(rows))
    print(f"results: {folder / 'results.csv'}")
    try:
        from plots import make_report
    except ImportError:
        print("plots: not available yet (the plots package is not importable)")
    else:
        print(f"plots: {make_report(folder)}")
    return 1 if any_failed(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
