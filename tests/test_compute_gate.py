"""The compute gate: one thread computes at a time; a thread waiting on a network lets the others in.
(That a hanging FHIR server or key source then costs only its own callers is shown over real HTTP in
tests/test_hostile.py.)"""

from __future__ import annotations

import threading
import time

from cds_service.compute_gate import ComputeGate


def test_one_thread_computes_at_a_time() -> None:
    gate = ComputeGate()
    inside, most = 0, 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal inside, most
        with gate.computing():
            with lock:
                inside += 1
                most = max(most, inside)
            time.sleep(0.01)
            with lock:
                inside -= 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert most == 1


def test_waiting_opens_the_gate_and_takes_it_back() -> None:
    gate = ComputeGate()
    waiting, other_ran, back = threading.Event(), threading.Event(), threading.Event()

    def slow_caller() -> None:
        with gate.computing():
            with gate.waiting():
                waiting.set()
                assert other_ran.wait(5)  # another thread computed while this one waited
            back.set()

    def other() -> None:
        assert waiting.wait(5)
        with gate.computing():
            other_ran.set()

    threads = [threading.Thread(target=slow_caller), threading.Thread(target=other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert other_ran.is_set() and back.is_set()


def test_nested_computing_and_waiting_outside_are_no_ops() -> None:
    gate = ComputeGate()
    with gate.waiting():  # not computing: nothing to open
        pass
    with gate.computing(), gate.computing():  # re-entrant within a thread
        pass
    with gate.computing():  # and released afterwards
        pass
