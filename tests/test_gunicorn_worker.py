"""The production worker (cds_service/gunicorn_worker.py): a kept-alive connection's next request served by
the thread that served the last one when it comes at once, else gthread's own hand-over."""

from __future__ import annotations

import contextlib
import http.client
import io
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from gunicorn.workers.gthread import ThreadWorker

from cds_service import gunicorn_worker
from cds_service.gunicorn_worker import LingeringThreadWorker
from tests.processes import GunicornProcess

ROOT = Path(__file__).resolve().parents[1]


def _pipe_calls(pid: int) -> tuple[int, int]:
    """The read and write system calls a process made so far (socket sends and receives not included),
    once they have stopped changing: gthread's hand-over of a connection comes after its answer was sent,
    so a client that has just read the answer may look before the worker wrote and read its wake-up byte.
    (Settles in 20-40 ms, well inside the lingering test's 200 ms.)"""
    def now() -> tuple[int, int]:
        counts = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
        return int(counts["syscr"]), int(counts["syscw"])

    last = now()
    for _ in range(50):
        time.sleep(0.02)
        if (current := now()) == last:
            return current
        last = current
    raise AssertionError(f"worker {pid} kept reading or writing for a second")


@pytest.mark.parametrize(("linger_ms", "hand_overs"), [("200", 0), ("0", 50)])
def test_a_kept_alive_connection_stays_with_its_thread_unless_turned_off(tmp_path: Path, linger_ms: str,
                                                                        hand_overs: int) -> None:
    """gthread hands the connection back to the main thread after every answer (a wake-up byte written to
    and read from a pipe each time); lingering, 50 requests in a row go by without one. (A long linger
    here, so that a busy test machine pausing this client for a few milliseconds changes nothing.)"""
    server = GunicornProcess({"CDS_DATABASE_URL": f"sqlite:///{tmp_path / 'g.sqlite3'}", "CDS_WORKERS": "1",
                              "CDS_KEEPALIVE_LINGER_MS": linger_ms}, ROOT)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        [worker] = server.workers()

        def ask() -> None:
            conn.request("GET", "/cds-services")
            answer = conn.getresponse()
            assert answer.status == 200 and answer.read() and not answer.will_close

        ask()
        before = _pipe_calls(worker)
        for _ in range(50):
            ask()
        reads, writes = (after - first for after, first in zip(_pipe_calls(worker), before, strict=True))
        assert (reads, writes) == (hand_overs, hand_overs)
    finally:
        conn.close()
        server.stop()


class _Served:
    """Stands in for gthread's handle: consumes what the client sent, answers 'keep alive' (or not), and
    leaves in the parser's buffer what ``read_ahead`` says (a pipelined request read with this one)."""

    def __init__(self, keep_alive: bool = True, read_ahead: tuple[bytes, ...] = ()) -> None:
        self.count = 0
        self.keep_alive = keep_alive
        self.read_ahead = list(read_ahead)

    def __call__(self, worker: Any, conn: Any) -> bool:
        self.count += 1
        conn.sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            conn.sock.recv(65536)
        conn.parser.unreader.buf = io.BytesIO(self.read_ahead.pop(0) if self.read_ahead else b"")
        return self.keep_alive


def _stand_in(monkeypatch: pytest.MonkeyPatch, served: _Served) -> None:
    monkeypatch.setattr(ThreadWorker, "handle", lambda worker, conn: served(worker, conn))


@pytest.fixture
def pair() -> Any:
    ours, client = socket.socketpair()
    yield ours, client
    ours.close()
    client.close()


def _worker(connections: int = 1, threads: int = 16, alive: bool = True) -> LingeringThreadWorker:
    worker = LingeringThreadWorker.__new__(LingeringThreadWorker)  # only what handle() reads
    worker.alive, worker.nr_conns, worker.cfg = alive, connections, SimpleNamespace(threads=threads)
    return worker


def _conn(sock: socket.socket) -> Any:
    return SimpleNamespace(sock=sock, parser=SimpleNamespace(unreader=SimpleNamespace(buf=io.BytesIO())))


def _send_after(client: socket.socket, seconds: float, times: int = 1) -> threading.Thread:
    def send() -> None:
        for _ in range(times):
            threading.Event().wait(seconds)
            client.sendall(b"GET / HTTP/1.1\r\n\r\n")
    thread = threading.Thread(target=send)
    thread.start()
    return thread


def test_requests_that_come_at_once_are_served_in_the_same_task(pair: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    ours, client = pair
    served = _Served()
    _stand_in(monkeypatch, served)
    monkeypatch.setattr(gunicorn_worker, "LINGER_MS", 200.0)  # generous: this machine may be busy
    sender = _send_after(client, 0.01, times=3)
    assert _worker().handle(_conn(ours)) is True  # then nothing more came: back to the poller, kept alive
    sender.join()
    assert served.count == 4


def test_a_request_that_comes_late_goes_back_to_the_poller(pair: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    ours, client = pair
    served = _Served()
    _stand_in(monkeypatch, served)
    monkeypatch.setattr(gunicorn_worker, "LINGER_MS", 5.0)
    sender = _send_after(client, 0.3)
    assert _worker().handle(_conn(ours)) is True
    sender.join()
    assert served.count == 1


@pytest.mark.parametrize("worker", [_worker(connections=17, threads=16), _worker(alive=False)],
                         ids=["more-connections-than-threads", "stopping"])
def test_no_lingering_when_connections_could_wait_for_a_thread_or_the_worker_stops(
        pair: Any, monkeypatch: pytest.MonkeyPatch, worker: LingeringThreadWorker) -> None:
    ours, _ = pair
    served = _Served(read_ahead=(b"GET / HTTP/1.1\r\n\r\n",))  # the next request is there already
    _stand_in(monkeypatch, served)
    worker.handle(_conn(ours))
    assert served.count == 1


def test_a_closed_connection_and_pipelined_bytes(pair: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    ours, client = pair
    closing = _Served(keep_alive=False)
    _stand_in(monkeypatch, closing)
    client.sendall(b"GET / HTTP/1.1\r\n\r\n")
    assert _worker().handle(_conn(ours)) is False and closing.count == 1  # closed: never served again
    served = _Served(read_ahead=(b"GET / HTTP/1.1\r\n\r\n",))  # read with the first, the socket quiet
    _stand_in(monkeypatch, served)
    assert _worker().handle(_conn(ours)) is True
    assert served.count == 2
