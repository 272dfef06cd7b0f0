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


def test_the_gate_is_handed_over_in_arrival_order() -> None:
    gate = ComputeGate()
    order: list[int] = []
    started = threading.Event()

    def holder() -> None:
        with gate.computing():
            started.set()
            time.sleep(0.3)  # the others queue up meanwhile, one after another

    def queued(n: int) -> None:
        with gate.computing():
            order.append(n)

    first = threading.Thread(target=holder)
    first.start()
    assert started.wait(5)
    threads = []
    for n in range(6):
        t = threading.Thread(target=queued, args=(n,))
        t.start()
        threads.append(t)
        time.sleep(0.02)  # arrival order: 0, 1, 2, ...
    for t in [first, *threads]:
        t.join(5)
    assert order == list(range(6))


def test_a_thread_that_computes_again_at_once_does_not_starve_a_waiter() -> None:
    """The request back from a network wait must not lose the gate, time after time, to a thread that
    leaves it and takes it again straight away."""
    gate = ComputeGate()
    rounds_before_waiter: list[int] = []
    rounds = 0
    waiter_ready = threading.Event()

    def busy() -> None:
        nonlocal rounds
        for _ in range(200):
            with gate.computing():
                rounds += 1
                if rounds == 5:
                    waiter_ready.set()
                deadline = time.perf_counter() + 0.001
                while time.perf_counter() < deadline:
                    pass

    def waiter() -> None:
        assert waiter_ready.wait(5)
        start = rounds
        with gate.computing():
            rounds_before_waiter.append(rounds - start)

    threads = [threading.Thread(target=busy), threading.Thread(target=waiter)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert rounds_before_waiter and rounds_before_waiter[0] <= 2, rounds_before_waiter
