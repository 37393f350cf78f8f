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
