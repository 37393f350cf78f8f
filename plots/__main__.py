"""Command line: ``python -m plots SWEEP`` and ``python -m plots compare SWEEP_A SWEEP_B [--out DIR]``.

Bad input (no folder, no or empty results.csv, an unreadable file, a header or row that breaks the results
contract of results) ends with a one-line ``error:`` message and exit status 2; a sweep without a
single successful cell gets its figures and report, then exit status 1.
"""

from __future__ import annotations

import argparse
import sys

from plots.source import SweepError, read_sweep_files


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "compare":
        return _compare(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m plots",
                                     description="Draw a sweep's figures and write its report.md "
                                                 "(or: python -m plots compare SWEEP_A SWEEP_B [--out DIR]).")
    parser.add_argument("sweep", help="sweep folder holding results.csv and config.json, e.g. lightning_logs/default")
    args = parser.parse_args(argv)
    path, rows, config = _or_exit(read_sweep_files, args.sweep)  # fails fast, before matplotlib loads
    from plots.data import Sweep, results_frame
    from plots.report import write_report

    sweep = Sweep(path=path, config=config, table=results_frame(rows))
    paths = write_report(sweep)
    print(f"wrote {len(paths) - 1} figure files to {sweep.path / 'plots'} and {sweep.path / 'report.md'}")
    if sweep.ok.empty:
        print(f"error: no successful cell in {sweep.path / 'results.csv'} ({len(sweep.table)} cells failed or ran "
              f"out of memory); the figures show the failures", file=sys.stderr)
        return 1
    return 0


def _compare(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m plots compare",
                                     description="Overlay two sweeps (e.g. CPU vs GPU, two backbones).")
    parser.add_argument("sweep_a")
    parser.add_argument("sweep_b")
    parser.add_argument("--out", default=None, help="output folder (default: <parent of A>/compare_<A>_vs_<B>)")
    args = parser.parse_args(argv)
    for sweep in (args.sweep_a, args.sweep_b):
        _or_exit(read_sweep_files, sweep)
    from plots.compare import compare_sweeps

    paths = compare_sweeps(args.sweep_a, args.sweep_b, args.out)
    print(f"wrote {len(paths)} files to {paths[0].parent}")
    return 0


def _or_exit(function, *args):
    """Call ``function``; turn the expected bad-input errors into a one-line message and exit status 2."""
    from results import ResultsFormatError

    try:
        return function(*args)
    except (FileNotFoundError, ResultsFormatError, SweepError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as exc:  # unreadable (permissions, a folder named results.csv): still one line, no traceback
        print(f"error: cannot read {exc.filename or args[0]}: {exc.strerror or exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    sys.exit(main())
