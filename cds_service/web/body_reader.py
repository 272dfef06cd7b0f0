"""Read each request body whole, within a deadline, before the app sees it.

A client that trickles its body (a byte every few seconds) would otherwise hold a server thread
for as long as it likes. Here the body is read up front while a watchdog holds the deadline: when
it passes, the watchdog shuts the socket's read side, the blocked read returns, and the client gets
a 408 OperationOutcome. The app then reads the body from memory. (Slow *headers* are the reverse
proxy's to bound: see README, Security.)
"""

from __future__ import annotations

import contextlib
import heapq
import io
import itertools
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from cds_service.compute_gate import GATE
from cds_service.observability import hook_instance
from cds_service.web.wire import FHIR_JSON, outcome

StartResponse = Callable[..., Any]
BODY = "cds_service.body"  # the environ key of the body read whole


class _Watchdog:
    """One thread per process that shuts the read side of sockets whose deadline passed."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, socket.socket]] = []
        self._cancelled: set[int] = set()
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._wakes_at = math.inf  # when the watchdog thread wakes next unless notified
        self._idle_wait = math.inf  # how long it sleeps with nothing armed: the shortest deadline ever armed

    def arm(self, sock: socket.socket, seconds: float) -> int:
        token = next(self._seq)
        deadline = time.monotonic() + seconds
        with self._cond:
            self._ensure_thread()
            self._idle_wait = min(self._idle_wait, seconds)
            # Wake the watchdog only when it would otherwise sleep past this deadline: it sleeps till an
            # earlier deadline (often long disarmed), or with nothing armed for the shortest time ever armed,
            # so a deadline armed for as long is never earlier and it sees to it then. (Woken whenever the
            # heap was empty, it was woken for most requests, each paying a thread switch: with one request
            # computing at a time, bodies read at once and disarmed heads dropped, the heap is mostly empty.)
            if deadline < self._wakes_at:
                self._wakes_at = deadline
                self._cond.notify()
            heapq.heappush(self._heap, (deadline, token, sock))
        return token

    def disarm(self, token: int) -> None:
        with self._cond:
            self._cancelled.add(token)
            # Drop what is done from the front now: the heap holds about the requests in flight, rather than
            # the watchdog popping the last few seconds' requests in one burst when it next wakes.
            while self._heap and self._heap[0][1] in self._cancelled:
                self._cancelled.discard(heapq.heappop(self._heap)[1])

    def _ensure_thread(self) -> None:
        if self._thread is None or self._pid != os.getpid():  # a forked worker starts its own
            self._heap, self._cancelled, self._pid, self._wakes_at = [], set(), os.getpid(), math.inf
            self._idle_wait = math.inf
            self._thread = threading.Thread(target=self._run, name="body-read-watchdog", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][1] in self._cancelled:
                    self._cancelled.discard(heapq.heappop(self._heap)[1])
                if not self._heap:
                    self._wakes_at = time.monotonic() + self._idle_wait
                    self._cond.wait(None if self._idle_wait == math.inf else self._idle_wait)
                    continue
                deadline, _, sock = self._heap[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._wakes_at = deadline
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                with contextlib.suppress(OSError):  # already closed: nothing to wake
                    sock.shutdown(socket.SHUT_RD)  # wakes the blocked read with end-of-file


WATCHDOG = _Watchdog()


class BodyReader:
    """WSGI middleware: the body read whole within ``seconds``, or a 408; unreadable framing, a 400."""

    def __init__(self, app: Callable[..., Iterable[bytes]], seconds: float, max_bytes: int) -> None:
        self.app = app
        self.seconds = seconds
        self.max_bytes = max_bytes

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        # Every request starts with no hook instance: a server thread's last hook call must not stamp
        # this request's log lines (records reads, errors) with its own.
        hook_instance.set(None)
        if environ.get("REQUEST_METHOD") not in ("POST", "PUT", "PATCH"):
            with GATE.computing():
                return self.app(environ, start_response)
        length = environ.get("CONTENT_LENGTH")
        try:
            expected = int(length) if length else None
        except ValueError:
            return _problem(start_response, 400, "Content-Length is not a number")
        if expected is not None and expected > self.max_bytes:
            return self.app(environ, start_response)  # Flask answers 413 without reading it
        sock = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
        started = time.monotonic()  # before arming: the watchdog's deadline is never before started + seconds
        token = WATCHDOG.arm(sock, self.seconds) if isinstance(sock, socket.socket) else None
        try:
            body = _read(environ["wsgi.input"], expected, self.max_bytes + 1)
        except Exception:  # malformed chunked framing, a reset: whatever the server raises, it is the client's
            body = None
        finally:
            if token is not None:
                WATCHDOG.disarm(token)
        if body is None or (expected is not None and len(body) < expected):
            if time.monotonic() - started >= self.seconds:
                return _problem(start_response, 408, f"The request body was not received within {self.seconds:g} s")
            return _problem(start_response, 400, "The request body could not be read (incomplete or malformed framing)")
        if len(body) > self.max_bytes:
            return _problem(start_response, 413, f"Request body larger than {self.max_bytes} bytes")
        environ[BODY] = body  # the app's own reader takes it from here; others read wsgi.input
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        environ["wsgi.input_terminated"] = True
        with GATE.computing():  # the body is in memory: from here on the request only computes
            return self.app(environ, start_response)


def _read(stream: Any, expected: int | None, limit: int) -> bytes:
    if expected is not None:
        return bytes(stream.read(expected))
    chunks, size = [], 0
    while chunk := stream.read(65536):
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)


def _problem(start_response: StartResponse, status: int, message: str) -> list[bytes]:
    """Refused before the app saw it: the connection closes, as the rest of its body may still be coming."""
    body = outcome(status, message)
    start_response(f"{status} {HTTPStatus(status).phrase}",
                   [*FHIR_JSON, ("Content-Length", str(len(body))), ("Connection", "close")])
    return [body]
