"""Run a function in a forked child process and bring back its result or its error.

Used for a cell's memory pass (ssmlora.lab.cell.measure_memory): glibc's measurement setting cannot be undone
inside a process, so it lives in a child that exits. A child may compute only if its parent has run no parallel
torch kernel yet: GNU OpenMP's worker threads do not survive a fork, and such a child hangs in its first one. So a
process says it is fresh (`declare_fresh_process`, from its entry point, before any torch work) and may then fork
once (`can_fork`); a sweep's cell process does, an interactive session or a test process does not.
"""

from __future__ import annotations

import multiprocessing.util
import os
import pickle
import sys
import traceback
from typing import Any, Callable


_FRESH_PID: int | None = None


def declare_fresh_process() -> None:
    """This process has run no parallel torch kernel: it may fork one computing child (`run_forked`)."""
    global _FRESH_PID
    _FRESH_PID = os.getpid()


def can_fork() -> bool:
    """Whether `run_forked` may run a computing child here: fork exists and this process declared itself fresh
    and has not forked since (a forked child is not fresh either: the pid differs)."""
    return hasattr(os, "fork") and _FRESH_PID == os.getpid()


def exit_now(code: int) -> None:
    """Leave this process at once (`os._exit`), skipping the interpreter's teardown, which a forked child must not
    run (it would replay its parent's exit handlers) and which a departed process-group peer can block forever.

    Two pieces of teardown still run. The standard streams are flushed. Multiprocessing's finalizers of this
    process run: a named semaphore made here (tqdm's write lock, under the spawn start method) is unlinked and
    unregistered from the resource tracker, which otherwise warns of "leaked semaphore objects" when the sweep
    ends. Each finalizer runs only in the process that made it, so a forked child never touches its parent's.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    multiprocessing.util._run_finalizers(0)  # noqa: SLF001 - the one hook for what `os._exit` skips
    os._exit(code)


class ForkedChildError(RuntimeError):
    """The child raised (its type, message and traceback are in the message) or died."""


def run_forked(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` in a forked child. Returns its (picklable) result; a MemoryError or torch.OutOfMemoryError in
    the child is raised here as MemoryError, any other error or a child that dies as ForkedChildError. After it,
    this process is no longer fresh: it computes next."""
    global _FRESH_PID
    if not can_fork():
        raise RuntimeError("run_forked needs a process that declared itself fresh (declare_fresh_process) and has "
                           "not forked since: a forked child computing after its parent ran OpenMP kernels hangs")
    _FRESH_PID = None
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's code
        os.close(read)
        try:
            payload = ("ok", fn(*args))
        except BaseException as err:  # noqa: BLE001 - everything goes back to the parent
            oom = isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError"
            payload = ("error", (type(err).__name__, str(err), traceback.format_exc(), oom))
        try:
            with os.fdopen(write, "wb") as out:
                pickle.dump(payload, out)
        finally:
            exit_now(0)
    os.close(write)
    with os.fdopen(read, "rb") as inp:
        data = inp.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        how = (f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
               else f"exit code {os.WEXITSTATUS(status)}")
        raise ForkedChildError(f"the forked child running {fn.__name__} died ({how}) without a result; a kill by "
                               "signal 9 is most often the kernel's out-of-memory killer")
    kind, value = pickle.loads(data)
    if kind == "ok":
        return value
    name, message, trace, oom = value
    if oom:
        raise MemoryError(f"{fn.__name__} ran out of memory: {message}")
    raise ForkedChildError(f"{fn.__name__} failed in its forked child: {name}: {message}\n{trace}")
