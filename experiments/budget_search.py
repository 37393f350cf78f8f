"""Search a training budget on the validation split, with the test split sealed.

Each budget is a set of sweep flags (tokens per step, schedule, warm-up, task, ...). For each, this runs

    python experiments/run.py --tune lr --tune-only --val-every N <common flags> <budget flags>

in its own sweep folder, so every `--methods` entry trains at every `--tune-grid` rate and is scored on the
validation split every N optimizer steps, from step 0 (the head as the linear probe left it) to `--max-steps`.
The test split is never opened. It then writes `budget_search.csv` and `budget_search.md`: per budget, length,
method and rate, the validation accuracy at step 0, the best and the last, the gain of the last over step 0,
and what the trial cost.

    python experiments/budget_search.py --out lightning_logs/budget --lengths 512 --methods lora --seeds 0 \\
        --max-steps 40 --val-every 10 --tune-grid lora=5e-4,2e-3 \\
        --budget "base=" --budget "tokens16k=--tokens-per-step 16384" --budget "constant=--schedule constant"

Every flag this script does not know goes to each budget's sweep (run `python experiments/run.py --help`);
rerunning resumes, as the sweep does. How the shipped budget was chosen: docs/tuning-notes.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import pandas as pd

SUMMARY_COLUMNS = ["budget", "task", "length", "series", "lr", "n_validation", "steps", "acc_step0", "acc_best",
                   "best_step", "acc_last", "gain_last", "loss_step0", "loss_last", "trial_s"]


def parse_budget(text: str) -> tuple[str, list[str]]:
    """`NAME=FLAGS` (FLAGS: sweep flags as on a command line, may be empty) -> (NAME, [flag, ...])."""
    name, sep, flags = text.partition("=")
    if not sep or not name.strip() or "/" in name:
        raise argparse.ArgumentTypeError(f"--budget {text!r}: expected NAME=FLAGS, e.g. \"tokens16k=--tokens-per-step "
                                         f"16384\" (NAME names a folder: no '/'; FLAGS may be empty)")
    return name.strip(), shlex.split(flags)


def summarise(folder: Path, budget: str) -> pd.DataFrame:
    """One row per tuning trial of a budget's sweep folder: its validation curve read at step 0, best, last, and
    the trial's wall time (training, its validations, the model load and probe fit; not the shared data prep)."""
    from plots.learning_curve import load_curves

    config = json.loads((folder / "config.json").read_text())
    trials = {(label, int(t["length"]), float(t["lr"])): t
              for label, ts in config["tuning"]["trials"].items() for t in ts}
    rows = []
    for (series, length, lr), run in load_curves(folder).groupby(["series", "length", "lr"]):
        run = run.sort_values("step")
        first, last = run.iloc[0], run.iloc[-1]
        best = run.loc[run["val_acc"].idxmax()]
        trial = trials.get((series, int(length), float(lr)), {})
        rows.append({
            "budget": budget, "task": config["config"]["data"]["task"], "length": int(length), "series": series,
            "lr": lr, "n_validation": trial.get("n_validation"), "steps": int(last["step"]),
            "acc_step0": first["val_acc"] if first["step"] == 0 else float("nan"), "acc_best": best["val_acc"],
            "best_step": int(best["step"]), "acc_last": last["val_acc"],
            "gain_last": last["val_acc"] - first["val_acc"] if first["step"] == 0 else float("nan"),
            "loss_step0": first["val_loss"] if first["step"] == 0 else float("nan"), "loss_last": last["val_loss"],
            "trial_s": trial.get("wall_s"),
        })
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def markdown(table: pd.DataFrame) -> str:
    header = ("| budget | task | L | method | lr | n val | steps | val acc step 0 | best (step) | last | last − step 0 "
              "| val loss step 0 → last | s / trial |\n|" + "---|" * 13)
    lines = [header]
    for r in table.itertuples():
        lines.append(f"| {r.budget} | {r.task} | {r.length} | {r.series} | {r.lr:g} | {r.n_validation} | {r.steps} "
                     f"| {r.acc_step0:.2f} | {r.acc_best:.2f} ({r.best_step}) | {r.acc_last:.2f} | {r.gain_last:+.2f} "
                     f"| {r.loss_step0:.3f} → {r.loss_last:.3f} | {r.trial_s:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Other flags go to every budget's "
                                     "sweep (experiments/run.py --help).")
    parser.add_argument("--budget", type=parse_budget, action="append", required=True, metavar="NAME=FLAGS",
                        help="one budget: a name and the sweep flags it sets; repeat for each budget")
    parser.add_argument("--out", default="lightning_logs/budget", help="parent folder of the budgets' sweep folders")
    parser.add_argument("--val-every", type=int, default=10, help="validate every N optimizer steps; >= 1")
    args, common = parser.parse_known_args(argv)
    if args.val_every < 1:
        parser.error(f"--val-every {args.val_every}: the search reads validation curves, so it needs N >= 1")
    for flag in ("--tune", "--tune-only", "--name", "--out", "--no-tune-only"):
        if flag in common:
            parser.error(f"{flag} is set by the search itself (each budget is a --tune lr --tune-only sweep); drop it")
    names = [name for name, _ in args.budget]
    if len(set(names)) != len(names):
        parser.error(f"--budget names must differ (each names a folder): {', '.join(names)}")

    from ssmlora.sweep.cli import main as sweep

    out = Path(args.out)
    tables = []
    for name, flags in args.budget:
        print(f"[budget {name}] {shlex.join(flags) or '(the sweep defaults)'}", flush=True)
        code = sweep([*common, *flags, "--tune", "lr", "--tune-only", "--val-every", str(args.val_every),
                      "--out", str(out), "--name", name])
        if code != 0:
            print(f"error: budget {name!r} stopped with exit {code}; the budgets before it are in {out}",
                  file=sys.stderr)
            return code
        tables.append(summarise(out / name, name))
    table = pd.concat(tables, ignore_index=True)
    table.to_csv(out / "budget_search.csv", index=False)
    (out / "budget_search.md").write_text(markdown(table))
    print(markdown(table))
    print(f"budget search: {out / 'budget_search.md'} (validation split only; the test split was never opened)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
