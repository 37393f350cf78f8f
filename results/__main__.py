"""``python -m results check|repair PATH``: list a results.csv's bad lines; repair also moves them away."""

from __future__ import annotations

import sys
from pathlib import Path

from results.reading import ResultsFormatError, bad_path, split_results
from results.writing import repair_results


def main(argv: list[str] | None = None) -> int:
    """``python -m results check|repair PATH``: list the bad lines; repair also moves them away."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2 or argv[0] not in ("check", "repair"):
        print("usage: python -m results check|repair PATH/results.csv", file=sys.stderr)
        return 2
    path = Path(argv[1])
    try:
        bad = repair_results(path) if argv[0] == "repair" else split_results(path)[1]
    except (FileNotFoundError, ResultsFormatError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for entry in bad:
        print(f"{path}, {entry}")
    verb = "moved to " + str(bad_path(path)) if argv[0] == "repair" else "found"
    print(f"{len(bad)} bad line(s) {verb}" if bad else f"{path}: every row is valid")
    return 1 if bad and argv[0] == "check" else 0


if __name__ == "__main__":
    sys.exit(main())
