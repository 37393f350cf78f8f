"""The entry point of a spawned cell process. It imports only the standard library at module level: a spawned
child imports this module before anything runs, and the orphan watch must be running before the seconds spent
importing torch and Lightning, so a sweep killed meanwhile never leaves a cell process behind."""

from __future__ import annotations

import json
import os
import pickle
import threading
import time
from pathlib import Path

from results import RESULT_FILE, write_atomically


def run_child(cfg_blob: bytes, cell_dir: str, probe_dir: str | None, parent: int, env: dict | None = None) -> None:
    """Run one cell (or one rank of it) and leave its result file.

    `cfg_blob` is the pickled CellConfig, unpickled only after the orphan watch started (unpickling imports the
    Lightning side). One process writes `result.json`; rank r of several writes `rank<r>.json` (rank 0's holds
    the cell's reduced figures), and a rank whose cell failed exits with code 1, so the parent stops the other
    ranks at once instead of leaving them waiting in a collective.
    """
    if env:
        os.environ.update(env)  # before Lightning reads them: this process is one torchrun-style rank
    exit_when_orphaned(parent)
    from ssmlora.lab.forked import declare_fresh_process, exit_now  # standard library only

    declare_fresh_process()  # nothing has computed here yet: the cell may fork its memory pass
    from ssmlora.lab.cell import run_cell_safely  # heavy: deliberately after the watch started

    result = run_cell_safely(pickle.loads(cfg_blob), Path(cell_dir), probe_dir)
    name = f"rank{env['RANK']}.json" if env else RESULT_FILE
    write_atomically(Path(cell_dir) / name, json.dumps(result))
    if env:  # leave at once: exit-time teardown of a process group can wait forever on a departed peer
        exit_now(0 if result.get("status") == "ok" else 1)


def run_prep_child(cfg_blob: bytes, seeds: list[int], probe_dir: str, out: str, parent: int) -> None:
    """Run a sweep's preparation step for one length (ssmlora.lab.prep) and leave its figures, or its error, in
    the JSON file `out`."""
    exit_when_orphaned(parent)
    import traceback

    try:
        from ssmlora.lab.prep import prepare_length

        result = {"status": "ok", **prepare_length(pickle.loads(cfg_blob), seeds, probe_dir)}
    except Exception as err:  # noqa: BLE001 - reported to the sweep, which lets the cells build for themselves
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        result = {"status": f"failed: {type(err).__name__}: {first}", "error": traceback.format_exc()}
    write_atomically(out, json.dumps(result))


def run_calibration_child(settings: dict, out: str, parent: int) -> None:
    """Time the sweep's backbone for the estimate (ssmlora.sweep.estimate) and leave the seconds, or the error,
    in the JSON file `out`."""
    exit_when_orphaned(parent)
    try:
        from ssmlora.sweep.estimate import time_forwards

        result = {"seconds": time_forwards(**settings)}
    except Exception as err:  # noqa: BLE001 - reported to the sweep, which goes on without an estimate
        result = {"error": str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__}
    write_atomically(out, json.dumps(result))


def exit_when_orphaned(parent: int, poll_s: float = 2.0) -> None:
    """End this cell process as soon as the sweep that started it (pid `parent`, given by the sweep, since the
    sweep may already be gone when this starts) is gone: nobody would read its result, and it would hold the
    cores the next (resumed) sweep needs."""
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()
