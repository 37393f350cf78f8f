"""Cell claims: at most one live process runs a given cell of a sweep folder.

Several sweep processes may point at one folder: by accident (the same command started twice), or on purpose
as N workers of one grid (N processes on a machine, or a SLURM job array). Before a worker runs a cell it
calls :func:`claim_cell`; it gets a held :class:`Claim`, or None when another live process holds that cell,
and then moves on to the next cell::

    claim = claim_cell(folder, cell.tag())
    if claim is None:
        print(f"{cell.tag()}: {describe_holder(folder, cell.tag())}, skipped")
    else:
        with claim:
            if claim.note:
                print(claim.note)          # a crashed worker's cell, now run again
            ...run the cell, then update_results(...)

How: ``<folder>/claims/<tag>.lock`` is held with ``filelock.FileLock``, which on Linux is ``flock(2)``: the
kernel drops the lock when its holder exits in any way, SIGKILL and the OOM killer included, so a crashed
worker never blocks a cell. Beside it, ``<tag>.holder.json`` names the holder (pid, host, start time, SLURM job
when there is one). A clean release removes that file before unlocking, so a claim that finds one was left by
a holder that died holding it: :attr:`Claim.stale_from` names that holder. The ``.lock`` files stay: deleting
a lock file while another process may be opening it would let two processes lock two different inodes.

Shared filesystems: flock is exact among processes of one machine, on any local filesystem. Across machines
it is only as good as the filesystem's lock support. Linux NFS clients emulate flock with POSIX byte-range
locks, which reach the server on NFSv4 (and on NFSv3 with lockd running; a ``nolock`` mount makes them local
to each client, so two nodes can then both hold a claim); a dead node's locks are freed after the server's
lease time (about 90 s on NFSv4). Lustre needs the ``flock`` mount option (``localflock`` is per node only);
BeeGFS needs global file locks enabled (``tuneUseGlobalFileLocks``); GPFS/Spectrum Scale supports it
cluster-wide. Where flock is missing altogether (ENOSYS), filelock warns and falls back to a marker-file lock,
which a SIGKILLed holder does not release. So for a SLURM array on a shared filesystem either (a) check that
claims exclude across nodes (run ``python -m results.claims hold FOLDER test 60`` on one node and ``... try
FOLDER test`` on another: it must print "held by ..."), or (b) give each array task a disjoint share of the
cells (e.g. cell index modulo ``SLURM_ARRAY_TASK_COUNT``), so claims only guard against accidents. Appending
rows (``results.update_results``) locks ``results.csv.lock`` the same way and has the same needs.

A claim belongs to the process (not the thread) that made it; a child started by fork inherits the lock with
the descriptor (spawned and exec'd children do not), which keeps the cell claimed while that child lives.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from results.folder import write_atomically

CLAIMS_DIR = "claims"
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+-]{0,199}")


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a claim."""

    pid: int
    host: str
    started: str  # UTC, ISO 8601
    job: str = ""  # SLURM job (array job_task) when under SLURM

    @classmethod
    def this_process(cls) -> Holder:
        env = os.environ
        job = (f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '')}" if "SLURM_ARRAY_JOB_ID" in env
               else env.get("SLURM_JOB_ID", ""))
        return cls(os.getpid(), socket.gethostname(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), job)

    def alive(self) -> bool | None:
        """Whether the process still runs: True/False on this host, None (unknown) for another host."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # another user's process: it exists
        return True

    def describe(self) -> str:
        if self.pid == 0:
            return "an unknown process (its holder file was unreadable)"
        job = f", SLURM job {self.job}" if self.job else ""
        return f"pid {self.pid} on {self.host}{job}, since {self.started}"


class Claim:
    """A held claim on one cell; release it with :meth:`release` or by leaving its ``with`` block.

    ``stale_from``: the holder that died holding this cell (its result is missing or partial), else None.
    ``note``: a line saying so, for the log, else None.
    """

    def __init__(self, folder: Path, tag: str, lock: FileLock, holder: Holder, stale_from: Holder | None):
        self.folder, self.tag, self.holder, self.stale_from = folder, tag, holder, stale_from
        self._lock = lock

    @property
    def held(self) -> bool:
        return self._lock.is_locked

    @property
    def note(self) -> str | None:
        if self.stale_from is None:
            return None
        return (f"cell {self.tag}: taking over a stale claim of {self.stale_from.describe()}, which ended "
                f"without releasing it")

    def release(self) -> None:
        """Give the cell up (idempotent). The holder file goes first, so only a crash ever leaves one behind."""
        if not self._lock.is_locked:
            return
        try:
            if _read_holder(_holder_path(self.folder, self.tag)) == self.holder:
                _holder_path(self.folder, self.tag).unlink(missing_ok=True)
        finally:
            self._lock.release(force=True)

    def __del__(self) -> None:
        # filelock frees the flock of a dropped lock anyway; the holder file must go with it, or the next
        # claimer would report a live process as a crashed one
        with contextlib.suppress(Exception):
            self.release()

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"Claim({self.tag!r} in {self.folder}, {'held' if self.held else 'released'})"


def claim_cell(folder: str | os.PathLike, tag: str) -> Claim | None:
    """Claim cell ``tag`` (a file-name-safe id such as ``Cell.tag()``) of the sweep in ``folder``.

    Returns a held :class:`Claim` at once, or None when another process (or another claim of this one)
    holds it; :func:`current_holder` then says who. Never waits.
    """
    folder = Path(folder)
    if not _TAG.fullmatch(tag):
        raise ValueError(f"claim tag {tag!r} must be a file name: letters, digits and . _ = + -")
    (folder / CLAIMS_DIR).mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / CLAIMS_DIR / f"{tag}.lock", timeout=0, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        return None
    try:
        path = _holder_path(folder, tag)
        stale_from = _read_holder(path)
        if path.exists() and stale_from is None:  # left half-written by a holder that died writing it
            stale_from = Holder(0, "?", "?")
        holder = Holder.this_process()
        write_atomically(path, json.dumps(asdict(holder)))  # readers never see half a file
    except BaseException:
        lock.release(force=True)
        raise
    return Claim(folder, tag, lock, holder, stale_from)


def current_holder(folder: str | os.PathLike, tag: str) -> Holder | None:
    """Who holds (or, after a crash, last held) cell ``tag``, from its holder file; None when there is none.

    Only a refused :func:`claim_cell` makes this "who holds it": the file can name a dead holder whose claim
    nobody has taken over yet, or (for an instant) the previous holder while a new one is starting.
    """
    return _read_holder(_holder_path(Path(folder), tag))


def describe_holder(folder: str | os.PathLike, tag: str) -> str:
    """'held by pid N on HOST, since T' for a refused claim, for the log."""
    holder = current_holder(folder, tag)
    return f"held by {holder.describe()}" if holder else "held by a process that is just starting"


def _holder_path(folder: Path, tag: str) -> Path:
    return folder / CLAIMS_DIR / f"{tag}.holder.json"


def _read_holder(path: Path) -> Holder | None:
    try:
        data = json.loads(path.read_text())
        return Holder(int(data["pid"]), str(data["host"]), str(data["started"]), str(data.get("job", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def main(argv: list[str] | None = None) -> int:
    """``python -m results.claims hold FOLDER TAG SECONDS`` | ``try FOLDER TAG``: check claims across machines."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 3 or argv[0] not in ("hold", "try") or (argv[0] == "hold") != (len(argv) == 4):
        print("usage: python -m results.claims hold FOLDER TAG SECONDS | try FOLDER TAG", file=sys.stderr)
        return 2
    claim = claim_cell(argv[1], argv[2])
    if claim is None:
        print(f"{argv[2]}: {describe_holder(argv[1], argv[2])}")
        return 1
    with claim:
        print(claim.note or f"{argv[2]}: claimed by {claim.holder.describe()}", flush=True)
        if argv[0] == "hold":
            time.sleep(float(argv[3]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
