"""`run_forked`: a function in a forked child, its result or its error back in the parent, and the rule that only
a process declared fresh (no parallel torch kernel run yet) forks a computing child, once."""

import os
import signal

import pytest

from ssmlora.lab import forked
from ssmlora.lab.forked import ForkedChildError, can_fork, declare_fresh_process, run_forked


@pytest.fixture(autouse=True)
def not_fresh(monkeypatch):
    monkeypatch.setattr(forked, "_FRESH_PID", None)  # this test process has run torch kernels


def _pid_and_sum(values):
    return os.getpid(), sum(values)


def _raise(kind):
    raise kind("what went wrong")


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def test_result_comes_back_from_another_process_and_the_permit_is_used_up():
    assert not can_fork()
    with pytest.raises(RuntimeError, match="declare_fresh_process"):
        run_forked(_pid_and_sum, [1, 2])
    declare_fresh_process()
    assert can_fork()
    pid, total = run_forked(_pid_and_sum, [1, 2, 3])
    assert total == 6 and pid != os.getpid()
    assert not can_fork()  # this process computes next: no second computing child
    with pytest.raises(RuntimeError, match="has not forked since"):
        run_forked(_pid_and_sum, [1])


def test_an_error_in_the_child_is_raised_with_its_type_message_and_traceback():
    declare_fresh_process()
    with pytest.raises(ForkedChildError, match=r"_raise failed in its forked child: ValueError: what went wrong"
                                               r"(.|\n)*Traceback"):
        run_forked(_raise, ValueError)


def test_running_out_of_memory_in_the_child_is_a_memory_error_here():
    declare_fresh_process()
    with pytest.raises(MemoryError, match="_raise ran out of memory: what went wrong"):
        run_forked(_raise, MemoryError)


def test_a_child_that_dies_is_reported_with_its_signal():
    declare_fresh_process()
    with pytest.raises(ForkedChildError, match="died \\(killed by signal 9\\).*out-of-memory killer"):
        run_forked(_die)


_SEMAPHORE_SCRIPT = """
import multiprocessing as mp
from ssmlora.lab.forked import declare_fresh_process, run_forked

HELD = []

def keep_a_named_semaphore():
    HELD.append(mp.get_context().RLock())  # what tqdm does on first use; named under the spawn start method
    return HELD[-1]._semlock.name

if __name__ == "__main__":
    mp.set_start_method("spawn", force=True)  # as in a sweep's cell process
    parents = mp.get_context().Lock()  # made before the fork: the child must leave it alone
    declare_fresh_process()
    print(run_forked(keep_a_named_semaphore))
    with parents:
        pass
"""


def test_a_child_leaves_no_semaphore_behind_and_its_parents_intact(tmp_path):
    """`os._exit` skips multiprocessing's finalizers; without them the resource tracker warns of leaked semaphores
    when the sweep ends. The run waits for the tracker too: it holds the captured stderr open until it exits."""
    import subprocess
    import sys

    script = tmp_path / "semaphores.py"
    script.write_text(_SEMAPHORE_SCRIPT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("/mp-")  # the child did make a named semaphore
    assert "leaked semaphore" not in done.stderr and "resource_tracker" not in done.stderr, done.stderr
