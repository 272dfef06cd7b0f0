"""Hostile input from outside, through the real HTTP interface: framing, JSON, strings the store cannot
keep, FHIR servers and key sources that hang, trickle and lie, slow clients; under the production
server (gunicorn) on SQLite and PostgreSQL. Nothing answers 5xx, no worker dies, and a valid caller
is answered within the documented budget while any one source misbehaves."""

from __future__ import annotations

import json
import select
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import cycle, islice
from pathlib import Path
from typing import Any

import pytest
import requests

from cds_service.store import make_engine, upgrade_schema
from tests.conftest import SIGN, LiveService, bundle, coverage, hook_request, service_request
from tests.hostile_server import HostileServer
from tests.processes import GunicornProcess
from tests.test_persistence import postgres_admin_url, postgres_url  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[1]
HOOK = f"/cds-services/{SIGN}"


def raw(base: str, payload: bytes, timeout: float = 10.0) -> int | None:
    """Send bytes as they are to the server; the status code it answers, or None if it closed first."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except OSError:
            pass
    if not data.startswith(b"HTTP/"):
        return None
    return int(data.split(b" ", 2)[1])


def post_bytes(path: str, body: bytes, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def nested(depth: int) -> str:
    """JSON nested ``depth`` levels (as text: the json module itself refuses to write it that deep)."""
    return '{"url": "http://x", "extension": [' * depth + '"leaf"' + "]}" * depth


def deep_order(depth: int) -> str:
    return json.dumps(with_order(extension=["DEEP"])).replace('"DEEP"', nested(depth))


def valid() -> dict[str, Any]:
    return hook_request(service_request("0530U", "2025-03-03"))


def with_order(**extra: Any) -> dict[str, Any]:
    return hook_request(service_request("0530U", "2025-03-03", **extra))


# Each builds one hostile request: (description, method, path, JSON body or raw bytes).
def hostile_requests(base: str) -> list[Callable[[], int | None]]:
    http = requests.Session()

    def js(body: Any, path: str = HOOK) -> Callable[[], int | None]:
        data = body if isinstance(body, str) else json.dumps(body)
        return lambda: http.post(base + path, data=data, headers={"Content-Type": "application/json"},
                                 timeout=20).status_code

    def get(path: str) -> Callable[[], int | None]:
        return lambda: http.get(base + path, timeout=20).status_code

    def rawly(payload: bytes) -> Callable[[], int | None]:
        return lambda: raw(base, payload)

    nul_coverage = hook_request(service_request("0530U", "2025-03-03"), coverages=(coverage("cov\x00-1"),))
    long_coverage = hook_request(service_request("0530U", "2025-03-03"), coverages=(coverage("c" * 5000),))
    return [
        lambda: js({**valid(), "hookInstance": "h\x00" + str(uuid.uuid4())})(),
        lambda: js({**valid(), "hookInstance": "h" * 5000})(),
        lambda: js({**nul_coverage, "hookInstance": str(uuid.uuid4())})(),
        lambda: js({**long_coverage, "hookInstance": str(uuid.uuid4())})(),
        lambda: js(with_order(note=[{"text": "a\x00b"}]))(),
        lambda: js(with_order(note=[{"text": "x"}], extension=[{"url": "http://x", "valueString": "k\x00"}]))(),
        lambda: js(deep_order(1000))(),
        lambda: js(deep_order(70))(),
        lambda: js({"feedback": [{"card": "c\x00", "outcome": "overridden",
                                  "outcomeTimestamp": "2026-11-25T10:00:00Z"}]}, HOOK + "/feedback")(),
        lambda: js({"feedback": [{"card": "c" * 5000, "outcome": "overridden",
                                  "outcomeTimestamp": "2026-11-25T10:00:00Z"}]}, HOOK + "/feedback")(),
        lambda: js(valid(), f"/cds-services/made-up-{uuid.uuid4().hex[:6]}")(),
        get("/coverage-assertions/a%00b"),
        get("/coverage-assertions/" + "x" * 5000),
        rawly(post_bytes(HOOK, b"{\"hook\": ", "")),  # truncated JSON
        rawly(b"POST " + HOOK.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nnot hex\r\n0\r\n\r\n"),
        rawly(b"POST " + HOOK.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 5000\r\nConnection: close\r\n\r\n{\"hook\":"),  # says 5000, sends 8, closes
        rawly(post_bytes(HOOK, b"\xff\xfe not utf-8")),
        rawly(post_bytes(HOOK, b"[1, 2", "Content-Type: text/plain\r\n")),
        lambda: js(valid())(),
    ]


@pytest.fixture(params=["sqlite", "postgresql"])
def production(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GunicornProcess]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'hostile.sqlite3'}"
    else:
        url = request.getfixturevalue("postgres_url")
        upgrade_schema(make_engine(url))
    server = GunicornProcess({"CDS_DATABASE_URL": url, "CDS_TODAY": "2026-11-25", "CDS_REQUEST_READ_SECONDS": "1",
                              "CDS_WORKERS": "2"}, ROOT)
    yield server
    server.stop()


def test_hostile_inputs_get_no_5xx_and_kill_no_worker(production: GunicornProcess) -> None:
    deadline = time.monotonic() + 10
    while len(workers := production.workers()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)  # readyz answers as soon as the first worker is up
    assert len(workers) == 2
    kinds = hostile_requests(production.base)
    total = 1520
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda f: f(), islice(cycle(kinds), total)))
    server_errors = [s for s in statuses if s is not None and s >= 500]
    assert not server_errors, (server_errors[:5], production.output()[-3000:])
    assert sum(1 for s in statuses if s == 200) >= total // len(kinds)  # the valid calls among them worked
    assert production.workers() == workers, production.output()[-3000:]  # no worker died or was replaced
    assert requests.post(production.base + HOOK, json=valid(), timeout=10).status_code == 200


def test_every_hostile_kind_gets_a_4xx(cds: LiveService) -> None:
    """The same requests one by one against the service, with the status each must get."""
    statuses = [kind() for kind in hostile_requests(cds.base)]
    assert statuses[:-1] == [400, 400, 400, 400, 400, 400, 400, 400, 400, 400, 404, 404, 404, 400, 400, 400, 400,
                             415], statuses
    assert statuses[-1] == 200


# ---------------------------------------------------------------- slow clients and misbehaving servers


def latencies(base: str, count: int, body: Callable[[], dict[str, Any]] = valid) -> list[float]:
    out = []
    for _ in range(count):
        start = time.monotonic()
        assert requests.post(base + HOOK, json=body(), timeout=30).status_code == 200
        out.append(time.monotonic() - start)
    return out


@pytest.fixture
def gunicorn_sqlite(tmp_path: Path) -> Iterator[Callable[..., GunicornProcess]]:
    started: list[GunicornProcess] = []

    def start(**env: str) -> GunicornProcess:
        server = GunicornProcess({"CDS_DATABASE_URL": f"sqlite:///{tmp_path / f'g{len(started)}.sqlite3'}",
                                  "CDS_TODAY": "2026-11-25", **env}, ROOT)
        started.append(server)
        return server

    yield start
    for s in started:
        s.stop()


def test_clients_trickling_bodies_do_not_stall_the_others(gunicorn_sqlite: Any) -> None:
    server = gunicorn_sqlite(CDS_REQUEST_READ_SECONDS="2")
    host, port = server.base.removeprefix("http://").split(":")
    answers: list[int | None] = []

    def trickle() -> None:
        with socket.create_connection((host, int(port)), timeout=15) as s:
            s.sendall(f"POST {HOOK} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      f"Content-Length: 1000\r\n\r\n".encode())
            data = b""
            try:
                for _ in range(40):
                    s.sendall(b" ")
                    time.sleep(0.25)
                    readable, _, _ = select.select([s], [], [], 0)
                    if readable:  # the server answered (and stopped reading): take its answer
                        data = s.recv(4096)
                        break
            except OSError:
                pass
            answers.append(int(data.split(b" ")[1]) if data.startswith(b"HTTP/") else None)

    threads = [threading.Thread(target=trickle) for _ in range(12)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # the tricklers hold their connections now
    waits = latencies(server.base, 15)
    for t in threads:
        t.join(20)
    assert max(waits) < 1.0, waits
    assert answers and all(a == 408 for a in answers), answers  # each got a 408 once its 2 s were up


def test_a_hanging_fhir_server_costs_only_its_own_callers(gunicorn_sqlite: Any) -> None:
    hanging = HostileServer(bundle(coverage()), mode="hang")
    try:
        server = gunicorn_sqlite(CDS_FHIR_SERVERS=hanging.base, CDS_FHIR_ALLOW_HTTP="true",
                                 CDS_FHIR_BUDGET_SECONDS="1.5")

        def fetching() -> int:
            body = hook_request(service_request("0530U", "2025-03-03"), coverages=None)
            body["fhirServer"] = hanging.base
            return requests.post(server.base + HOOK, json=body, timeout=30).status_code

        with ThreadPoolExecutor(max_workers=16) as pool:
            stalled = [pool.submit(fetching) for _ in range(16)]
            time.sleep(0.2)
            waits = latencies(server.base, 10)
            statuses = [f.result() for f in stalled]
        assert max(waits) < 0.5, waits
        assert set(statuses) == {400}  # no Coverage could be obtained (timed out, or the server is busy)
    finally:
        hanging.close()


@pytest.mark.parametrize("mode", ["trickle", "slow-headers", "short", "hang"])
def test_fhir_server_that_trickles_or_lies_keeps_the_budget(service_factory: Any, mode: str) -> None:
    server = HostileServer(bundle(coverage("fetched")), mode=mode, trickle_gap=0.45)
    try:
        svc = service_factory(FHIR_SERVERS=server.base, FHIR_ALLOW_HTTP=True, FHIR_BUDGET_SECONDS=1.0)
        body = hook_request(service_request("0530U", "2025-03-03"), coverages=None)
        body["fhirServer"] = server.base
        start = time.monotonic()
        answer = svc.call(body, expect=400)
        assert time.monotonic() - start < 1.0 + 0.3
        assert "failed" in answer["issue"][0]["diagnostics"]
    finally:
        server.close()


def test_a_hanging_key_source_under_the_production_server(gunicorn_sqlite: Any, tmp_path: Path) -> None:
    import jwt

    from tests.test_auth import EC_KEY, ISS, jwk

    source = HostileServer({"keys": [jwk(EC_KEY, "jku-ec")]}, mode="hang")
    try:
        issuers = tmp_path / "issuers.json"
        issuers.write_text(json.dumps({"issuers": [{"iss": ISS, "jwks": {"keys": [jwk(EC_KEY, "ec-1")]},
                                                    "jku": [source.url()]}]}))
        server = gunicorn_sqlite(CDS_TRUSTED_ISSUERS=str(issuers), CDS_JWKS_BUDGET_SECONDS="2")

        def bearer(kid: str, headers: dict[str, str] | None = None) -> dict[str, str]:
            now = int(time.time())
            claims = {"iss": ISS, "aud": server.base + HOOK, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4())}
            return {"Authorization": "Bearer " + jwt.encode(claims, EC_KEY, algorithm="ES384",
                                                            headers={"kid": kid, **(headers or {})})}

        def stalled() -> int:
            return requests.post(server.base + HOOK, json=valid(), headers=bearer("jku-ec", {"jku": source.url()}),
                                 timeout=30).status_code

        with ThreadPoolExecutor(max_workers=24) as pool:
            hanging = [pool.submit(stalled) for _ in range(24)]
            time.sleep(0.2)
            waits = []
            for _ in range(10):
                start = time.monotonic()
                assert requests.post(server.base + HOOK, json=valid(), headers=bearer("ec-1"),
                                     timeout=30).status_code == 200
                waits.append(time.monotonic() - start)
            assert {f.result() for f in hanging} == {401}
        assert statistics.median(waits) < 0.3 and max(waits) < 1.0, waits
    finally:
        source.close()


def test_metrics_take_labels_only_from_known_services(cds: LiveService) -> None:
    for i in range(5):
        cds.http.post(cds.url(f"/cds-services/made-up-{i}"), json={}, timeout=5)
    text = requests.get(cds.url("/metrics"), timeout=5).text
    assert "made-up" not in text and 'service="unknown"' in text
