"""One request at a time computes in a process; the others wait for it asleep, or wait on networks.

Worker threads exist so that a call waiting on a FHIR server or a key set does not hold up the calls
behind it. Computing, they only get in each other's way: they take turns on the interpreter lock, and
a thread that gives it up inside a database call (as SQLite and socket calls do) may wait a whole
switch interval (5 ms) to get it back, holding the store's write lock meanwhile. Under the gate a
request computes alone and opens the gate only while it waits on a network (``waiting``). The gate is
handed over in arrival order: a request back from its network wait queues behind those already
waiting, rather than losing the race to whichever thread runs on (it did, for 0.7 s at p99).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager


class _FifoLock:
    """A lock handed straight to the longest waiter on release (no barging)."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._busy = False
        self._waiters: deque[threading.Lock] = deque()

    def acquire(self) -> None:
        with self._mutex:
            if not self._busy:
                self._busy = True
                return
            waiter = threading.Lock()
            waiter.acquire()
            self._waiters.append(waiter)
        waiter.acquire()  # released by the holder, which hands the lock over still busy

    def release(self) -> None:
        with self._mutex:
            if self._waiters:
                self._waiters.popleft().release()
            else:
                self._busy = False


class ComputeGate:
    def __init__(self) -> None:
        self._lock = _FifoLock()
        self._held = threading.local()

    @contextmanager
    def computing(self) -> Iterator[None]:
        """Hold the gate (re-entrant within a thread: an inner ``computing`` is a no-op)."""
        if getattr(self._held, "yes", False):
            yield
            return
        self._lock.acquire()
        self._held.yes = True
        try:
            yield
        finally:
            self._held.yes = False
            self._lock.release()

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """Open the gate for others while this thread waits (a no-op outside ``computing``)."""
        if not getattr(self._held, "yes", False):
            yield
            return
        self._held.yes = False
        self._lock.release()
        try:
            yield
        finally:
            self._lock.acquire()
            self._held.yes = True


GATE = ComputeGate()
