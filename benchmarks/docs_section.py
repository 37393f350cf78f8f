"""`--write-docs` of the benchmarks: put a run's result into its own section of docs/benchmarks.md.

A section is the text between `<!-- begin: NAME -->` and `<!-- end: NAME -->`, NAME being the script's stem
(`adapter_overhead`, `gpu_check`); everything outside the markers is left as it is.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def write_docs_section(name: str, table: str, machine: str, argv: list[str] | None = None,
                       path: Path = DOCS) -> Path:
    """Replace section `name` of `path` with `table` (markdown), the machine line, the command and today's date.

    The command is `python benchmarks/<name>.py` with `argv` (default: this process's arguments), without
    `--write-docs`. Raises ValueError when the file lacks the section's markers.
    """
    args = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--write-docs"]
    command = " ".join(["python", f"benchmarks/{name}.py", *map(shlex.quote, args)])
    begin, end = f"<!-- begin: {name} -->", f"<!-- end: {name} -->"
    text = path.read_text()
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise ValueError(f"{path} has no section {begin} ... {end}: add the two markers first")
    body = (f"Machine: {machine}  \nCommand: `{command}`  \nDate: {datetime.date.today().isoformat()}\n\n"
            f"{table.strip()}\n")
    path.write_text(text[:start + len(begin)] + "\n" + body + text[stop:])
    return path


def machine_line() -> str:
    """The CPU model, logical cores, OS and torch version: what a benchmark's ratios were measured on."""
    import torch

    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    amx = ", AMX" if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)() else ""
    return f"{cpu}{amx}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}, torch {torch.__version__}"
