"""A sweep folder's layout, named once, and the one way every file in it is written.

    <sweep>/config.json            the configuration tree, resolved values, environment
    <sweep>/config.yaml            every setting by its flag's name (`--config` runs the sweep again)
    <sweep>/results.csv            one row per finished cell (the results contract); results.bad.csv beside it
    <sweep>/report.md, plots/      the report and its figures
    <sweep>/cells/<tag>/           one cell: result.json, predictions.csv, predictions-L<eval>.csv,
                                   probe_predictions.csv, extrapolation.json, Lightning's logs
                                   (tensorboard/ with --logger tensorboard), adapter/ (--save-adapters)
    <sweep>/claims/                cell claims (results.claims)
    <sweep>/probe/                 cached frozen features of the linear probe
    <sweep>/tune/                  validation trials of --tune and their tuning.json
    <sweep>/extrapolation.csv, extrapolation_differences.csv, frontier.csv

`write_atomically` is how every one of these is written: a temp file beside the target (its name carries the
process id and a random suffix, so concurrent writers never share one), fsync, rename over the target, fsync the
folder. A reader sees the old file or the new one, never half of either, and a crash leaves no torn file.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

RESULTS_FILE = "results.csv"
CONFIG_FILE = "config.json"
SETTINGS_FILE = "config.yaml"  # every setting by its flag's name: `--config` runs the sweep again
REPORT_FILE = "report.md"
RESULT_FILE = "result.json"  # a cell's outcome, in its folder
EXTRAPOLATION_FILE = "extrapolation.csv"
FRONTIER_FILE = "frontier.csv"
PROBE_PREDICTIONS_FILE = "probe_predictions.csv"


def write_atomically(path: str | os.PathLike, content: str | bytes | Callable[[Path], None]) -> Path:
    """Replace `path` with `content`: text (UTF-8, newlines as given), bytes, or a function that writes the file
    at the temp path it is given (e.g. safetensors' save_file). Creates the folder. A new file gets mode 0o666
    less the umask (mkstemp's 0o600 hid results from colleagues); a replaced file keeps its own mode."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        if callable(content):
            content(tmp)
            fd = os.open(tmp, os.O_RDWR)
        else:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            data = content.encode("utf-8") if isinstance(content, str) else content
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        try:
            if path.exists():
                os.fchmod(fd, stat.S_IMODE(path.stat().st_mode))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)
    return path


def csv_text(header: list[str] | None, rows) -> str:
    """The text of a CSV file (the csv module's dialect: quoted where needed, \r\n line ends)."""
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    if header:
        writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (some filesystems cannot sync a folder; the rename is atomic anyway)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def cell_tag(variant: str, length, seed, role: str = "accuracy") -> str:
    """A cell's folder name: the --methods entry with ':' as '-', its length and seed, and `-cost` for a cost cell
    ('ssmlora:scan', 512, 0 -> 'ssmlora-scan-L512-s0'; 'lora', 4096, 0, 'cost' -> 'lora-L4096-s0-cost')."""
    return f"{variant.replace(':', '-')}-L{int(length)}-s{int(seed)}" + ("-cost" if role == "cost" else "")


def trial_tag(variant: str, length, seed, lr: float) -> str:
    """A --tune trial's folder name under tune/: its cell's tag and rate ('lora-L512-s0-lr0.0005')."""
    return f"{cell_tag(variant, length, seed)}-lr{lr:g}"


def predictions_file(eval_len: int | None = None) -> str:
    """A cell's per-document test outcomes: predictions.csv at its own length, predictions-L<eval>.csv read
    further."""
    return "predictions.csv" if eval_len is None else f"predictions-L{eval_len}.csv"


@dataclass(frozen=True)
class SweepFolder:
    """The paths of one sweep folder (see the module text); nothing is created until something is written."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def settings(self) -> Path:
        return self.root / SETTINGS_FILE

    @property
    def results(self) -> Path:
        return self.root / RESULTS_FILE

    @property
    def report(self) -> Path:
        return self.root / REPORT_FILE

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def claims(self) -> Path:
        return self.root / "claims"

    @property
    def probe(self) -> Path:
        return self.root / "probe"

    @property
    def tune(self) -> Path:
        return self.root / "tune"

    @property
    def extrapolation(self) -> Path:
        return self.root / EXTRAPOLATION_FILE

    @property
    def frontier(self) -> Path:
        return self.root / FRONTIER_FILE

    def cell(self, tag: str) -> Path:
        """The folder of the cell whose tag is `tag` (`cell_tag`)."""
        return self.root / "cells" / tag

    def cell_of(self, variant: str, length, seed) -> Path:
        return self.cell(cell_tag(variant, length, seed))

    def trial(self, tag: str) -> Path:
        """The folder of the --tune trial whose tag is `tag` (`trial_tag`)."""
        return self.tune / tag
