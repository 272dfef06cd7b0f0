"""One request at a time computes in a process; the others wait for it asleep, or wait on networks.

Worker threads exist so that a call waiting on a FHIR server or a key set does not hold up the calls
behind it. Computing, they only get in each other's way: they take turns on the interpreter lock, and
a thread that gives it up inside a database call (as SQLite and socket calls do) may wait a whole
switch interval (5 ms) to get it back, holding the store's write lock meanwhile. Under the gate a
request computes alone and opens the gate only while it waits on a network (``waiting``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ComputeGate:
    def __init__(self) -> None:
        self._lock = threading.Lock()
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
