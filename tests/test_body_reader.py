"""The body reader: bodies it refuses before the app sees them, and its watchdog (deadlines held, and cheap
for the requests that finish in time)."""

from __future__ import annotations

import io
import json
import socket
import time
from typing import Any

import pytest

from cds_service.web.body_reader import BodyReader, _Watchdog


class _Stalled(io.RawIOBase):
    """A request body whose sender stops: each read waits, then finds the connection gone."""

    def read(self, size: int = -1) -> bytes:
        time.sleep(0.06)
        return b""


@pytest.mark.parametrize(("environ", "status", "code", "words"), [
    ({"CONTENT_LENGTH": "ten", "wsgi.input": io.BytesIO(b"{}")}, "400 Bad Request", "invalid", "not a number"),
    ({"CONTENT_LENGTH": "10", "wsgi.input": io.BytesIO(b"{}")}, "400 Bad Request", "invalid", "could not be read"),
    ({"CONTENT_LENGTH": "10", "wsgi.input": _Stalled()}, "408 Request Timeout", "timeout", "within 0.05 s"),
    ({"wsgi.input": io.BytesIO(b"x" * 300)}, "413 ", "too-long", "larger than 200 bytes"),
])
def test_a_body_refused_before_the_app_is_an_operation_outcome_and_closes_the_connection(
        environ: dict[str, Any], status: str, code: str, words: str) -> None:
    answered: list[Any] = []
    reader = BodyReader(lambda environ, start_response: pytest.fail("the app was called"), 0.05, 200)
    [body] = reader({"REQUEST_METHOD": "POST", **environ}, lambda *args: answered.append(args))
    [(status_line, headers)] = answered
    issue = json.loads(body)["issue"]
    assert status_line.startswith(status) and ("Connection", "close") in headers
    assert ("Content-Type", "application/fhir+json") in headers and ("Content-Length", str(len(body))) in headers
    assert [(i["severity"], i["code"]) for i in issue] == [("error", code)] and words in issue[0]["diagnostics"]


def _counting_wakes() -> tuple[_Watchdog, list[int]]:
    """A watchdog and how often its thread has been notified so far (a one-element list)."""
    watchdog, wakes = _Watchdog(), [0]
    notify = watchdog._cond.notify

    def counted(n: int = 1) -> None:
        wakes[0] += 1
        notify(n)

    watchdog._cond.notify = counted  # type: ignore[method-assign]
    return watchdog, wakes


def test_a_passed_deadline_ends_the_blocked_read() -> None:
    watchdog = _Watchdog()
    ours, theirs = socket.socketpair()
    with ours, theirs:
        watchdog.arm(ours, 5.0)  # the watchdog now sleeps till this one's deadline ...
        early = socket.socketpair()
        with early[0], early[1]:
            started = time.monotonic()
            watchdog.arm(early[0], 0.2)  # ... and is woken for an earlier one
            early[0].settimeout(5)
            assert early[0].recv(10) == b""  # end-of-file: the read side was shut
            assert 0.15 < time.monotonic() - started < 2.0


def test_requests_done_in_time_neither_wake_the_watchdog_nor_pile_up() -> None:
    watchdog, wakes = _counting_wakes()
    ours, theirs = socket.socketpair()
    with ours, theirs:
        in_flight = [watchdog.arm(ours, 5.0) for _ in range(4)]
        for _ in range(2000):  # each request finishes, the next arrives: 4 in flight throughout
            watchdog.disarm(in_flight.pop(0))
            in_flight.append(watchdog.arm(ours, 5.0))
        assert wakes[0] <= 2, wakes  # once for the first deadline; every later one is later still
        assert len(watchdog._heap) == 4 and len(watchdog._cancelled) <= 4


def test_requests_read_one_at_a_time_do_not_wake_the_watchdog_each_time() -> None:
    """The usual case in a worker: one request computes at a time and its body is read at once, so
    nothing is armed when the next one arms. Woken whenever the heap was empty, the watchdog was woken
    for each of them (a thread switch per request)."""
    watchdog, wakes = _counting_wakes()
    ours, theirs = socket.socketpair()
    with ours, theirs:
        for _ in range(100):
            watchdog.disarm(watchdog.arm(ours, 5.0))
            time.sleep(0.002)  # between requests the watchdog thread runs, and sleeps with nothing armed
        assert wakes[0] <= 2, wakes
        assert not watchdog._heap
