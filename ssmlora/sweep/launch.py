"""One sweep cell in fresh spawned process(es): one per cell, or one per local rank under DDP/FSDP.

Why processes: on the CPU the only honest peak memory of a cell is the peak RSS of a process that ran nothing
else; a process also returns every byte to the OS between cells and contains crashes. Each rank
gets the torchrun environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT, TORCHELASTIC_RUN_ID), so
Lightning joins them without re-running `sys.argv`. A cell process ends itself when its sweep is gone.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import pickle
import signal
import tempfile
import time
from pathlib import Path

from results import RESULT_FILE, write_atomically
from ssmlora.lab.cell import CellConfig
from ssmlora.lab.runtime import RuntimeConfig
from ssmlora.sweep.child import run_calibration_child, run_child, run_prep_child
from ssmlora.sweep.estimate import Calibration, calibration_lengths


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rank_environments(runtime: RuntimeConfig, port_offset: int = 0) -> list[dict]:
    """The torchrun environment of each local rank of one cell on this node.

    One node: a free port on 127.0.0.1 per cell. Several nodes: MASTER_ADDR, NODE_RANK and MASTER_PORT come
    from the environment (the same on every node), the port shifted by the cell's index in the plan, so
    every node of a cell meets on the same fresh port.
    """
    local, world, nodes = runtime.devices, runtime.world_size, runtime.num_nodes
    node = int(os.environ.get("NODE_RANK", "0")) if nodes > 1 else 0
    addr = os.environ.get("MASTER_ADDR", "127.0.0.1") if nodes > 1 else "127.0.0.1"
    port = int(os.environ["MASTER_PORT"]) + port_offset if nodes > 1 else _free_port()
    run_id = f"ssmlora-{port}"
    return [{"RANK": str(node * local + r), "LOCAL_RANK": str(r), "GROUP_RANK": str(node), "NODE_RANK": str(node),
             "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(local), "MASTER_ADDR": addr, "MASTER_PORT": str(port),
             "TORCHELASTIC_RUN_ID": run_id} for r in range(local)]


def _stop(procs) -> None:
    # SIGKILL, not SIGTERM: Lightning turns SIGTERM into "stop training", after which the cell would still
    # score the test split; nothing of a stopped cell is kept, and a rank stuck in a collective ignores SIGTERM.
    for p in procs:
        if p.is_alive():
            p.kill()
    for p in procs:
        p.join()


def run_cell_in_process(cfg: CellConfig, cell_dir: Path, probe_dir: Path | None = None, port_offset: int = 0) -> dict:
    """Run one cell in fresh spawned process(es); a crash or kill becomes a `failed`/`oom` row.

    With several devices the cell is one process per local rank (see `rank_environments`); the first rank
    to fail stops the others.
    """
    cell_dir.mkdir(parents=True, exist_ok=True)
    for old in [cell_dir / RESULT_FILE, *cell_dir.glob("rank*.json")]:
        old.unlink(missing_ok=True)
    envs = rank_environments(cfg.runtime, port_offset) if cfg.runtime.distributed_strategy() else [None]
    ctx = mp.get_context("spawn")
    probe = str(probe_dir) if probe_dir is not None else None
    blob = pickle.dumps(cfg)
    procs = [ctx.Process(target=run_child, args=(blob, str(cell_dir), probe, os.getpid(), env)) for env in envs]
    start = time.perf_counter()
    for p in procs:
        p.start()
    try:
        from multiprocessing.connection import wait

        while True:
            alive = [p for p in procs if p.is_alive()]
            if not alive or any(p.exitcode not in (None, 0) for p in procs):
                break  # all done, or one rank failed: the others would wait for it in a collective forever
            wait([p.sentinel for p in alive], timeout=5)
    except BaseException:  # Ctrl-C / SIGTERM: stop the cell too, record nothing for it
        _stop(procs)
        raise
    _stop(procs)
    if envs[0] is None:
        files = [cell_dir / RESULT_FILE]
    else:  # rank 0's figures, unless another rank failed first
        files = [cell_dir / f"rank{env['RANK']}.json" for env in envs]
    results = [json.loads(f.read_text()) if f.exists() else None for f in files]
    bad = [r for r in results if r is not None and r.get("status") != "ok"]
    if results[0] is not None and not bad:
        result = results[0]
    elif bad:
        result = bad[0]
    else:
        codes = [p.exitcode for p in procs]
        if -signal.SIGKILL in codes:
            status = "oom"  # the kernel's OOM killer is what SIGKILLs a child while its parent lives on
        else:
            code = next((c for c in codes if c not in (0, None)), codes[0])
            status = f"failed: cell process exited with code {code}"
        result = {"status": status, "wall_s": time.perf_counter() - start}
    if envs[0] is not None and int(envs[0]["RANK"]) == 0:
        write_atomically(cell_dir / RESULT_FILE, json.dumps(result))
    return result


def prepare_in_process(cell: CellConfig, seeds: list[int], probe_dir: Path) -> dict:
    """A sweep's preparation step for `cell.max_len` (ssmlora.lab.prep) in a fresh spawned process, so that its
    peak RSS is its own and every cell process after it stays fresh. Returns its figures with `status` "ok", or
    a failed status with the error (the cells then build what they need themselves)."""
    probe_dir.mkdir(parents=True, exist_ok=True)
    out = probe_dir / f"prep-L{cell.max_len}.json"
    out.unlink(missing_ok=True)
    proc = mp.get_context("spawn").Process(target=run_prep_child,
                                           args=(pickle.dumps(cell), list(seeds), str(probe_dir), str(out),
                                                 os.getpid()))
    start = time.perf_counter()
    proc.start()
    try:
        proc.join()
    except BaseException:  # Ctrl-C / SIGTERM: the step goes with the sweep
        _stop([proc])
        raise
    if out.exists():
        return json.loads(out.read_text())
    how = "killed by the kernel (out of memory?)" if proc.exitcode == -signal.SIGKILL else f"exit code {proc.exitcode}"
    return {"status": f"failed: preparation process ended without a result ({how})",
            "prep_s": round(time.perf_counter() - start, 1)}


def calibrate_in_process(cell: CellConfig, lengths: list[int]) -> Calibration:
    """The estimate's calibration (ssmlora.sweep.estimate) in a fresh spawned process, so the sweep's own process,
    whose memory an in-process cell measures, stays untouched: `cell`'s backbone timed at the calibration
    lengths of `lengths` (every length the sweep reads), a few seconds, most of them the child's start and the
    model's load. RuntimeError with the child's error when it fails."""
    runtime, at = cell.runtime, calibration_lengths(lengths)
    settings = {"model_name": cell.model.model, "precision": runtime.precision, "device_type": runtime.device_type(),
                "threads": runtime.torch_threads(), "lengths": at}
    key = tuple(settings.items())
    if key in _CALIBRATIONS:  # a process running several sweeps (budget_search, a notebook) calibrates once
        return _CALIBRATIONS[key]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "calibration.json"
        proc = mp.get_context("spawn").Process(target=run_calibration_child, args=(settings, str(out), os.getpid()))
        proc.start()
        try:
            proc.join()
        except BaseException:  # Ctrl-C / SIGTERM: the calibration goes with the sweep
            proc.kill()
            raise
        result = json.loads(out.read_text()) if out.exists() else {"error": f"exit code {proc.exitcode}"}
    if "error" in result:
        raise RuntimeError(result["error"])
    _CALIBRATIONS[key] = Calibration(at, tuple(result["seconds"]), runtime.device_type())
    return _CALIBRATIONS[key]


_CALIBRATIONS: dict[tuple, Calibration] = {}  # per process: settings -> its calibration
