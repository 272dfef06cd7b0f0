"""Everyday use over real HTTP: health, readiness, metrics, JSON logs, policy pages and the production
server (gunicorn). The OpenAPI document has its own tests (test_openapi.py)."""

from __future__ import annotations

import contextlib
import http.client
import importlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import create_engine

from cds_service.observability import HookInstanceFilter, JsonFormatter
from tests.conftest import (
    SIGN,
    LiveService,
    hook_request,
    service_request,
)
from tests.processes import GUNICORN, GunicornProcess, free_port, wait_until_answers

ROOT = Path(__file__).resolve().parents[1]


def test_healthz(cds: LiveService) -> None:
    resp = requests.get(cds.url("/healthz"), timeout=5)
    assert resp.status_code == 200 and resp.json() == {"status": "alive"}


def test_readyz_ready_then_database_gone(cds: LiveService) -> None:
    ready = requests.get(cds.url("/readyz"), timeout=5)
    assert ready.status_code == 200 and ready.json()["artifacts"] == cds.pipeline.knowledge.artifact_digest
    cds.pipeline.store.engine = create_engine("postgresql+psycopg://postgres@127.0.0.1:9/none",
                                            connect_args={"connect_timeout": 1})
    down = requests.get(cds.url("/readyz"), timeout=10)
    assert down.status_code == 503 and "database unreachable" in down.json()["issue"][0]["diagnostics"]


def metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        named = line.startswith((name + "{", name + " "))
        if named and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_requests_decisions_and_failures(cds: LiveService) -> None:
    before = requests.get(cds.url("/metrics"), timeout=5).text
    cds.call(hook_request(service_request("0530U", "2025-03-03")))
    cds.call(hook_request(service_request("0530U", "2026-08-03")))
    cds.http.post(cds.url(f"/cds-services/{SIGN}"), json={"hook": "order-sign"}, timeout=5)
    after = requests.get(cds.url("/metrics"), timeout=5).text

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("cds_requests_total", endpoint="call_service", service=SIGN, status="200") == 2
    assert delta("cds_requests_total", endpoint="call_service", service=SIGN, status="400") == 1
    assert delta("cds_decisions_total", outcome="investigational-code-list") == 1
    assert delta("cds_decisions_total", outcome="policy-retired-delegated") == 1
    assert delta("cds_request_seconds_count", endpoint="call_service", service=SIGN) == 3


def test_a_retried_call_counts_its_decision_once(cds: LiveService) -> None:
    before = requests.get(cds.url("/metrics"), timeout=5).text
    request = hook_request(service_request("0530U", "2025-03-03"))
    first = cds.call(request)
    assert cds.call(request) == first  # the EHR retried: answered from the record
    after = requests.get(cds.url("/metrics"), timeout=5).text
    outcome = {"outcome": "investigational-code-list"}
    assert metric(after, "cds_decisions_total", **outcome) - metric(before, "cds_decisions_total", **outcome) == 1


def test_a_label_set_is_looked_up_once() -> None:
    """prometheus_client's labels() checks and locks on each call; the per-request series are kept."""
    from cds_service.observability import LATENCY, REQUESTS, decision_counter, request_series

    counter, histogram = request_series("call_service", SIGN, "200")
    assert request_series("call_service", SIGN, "200") == (counter, histogram)
    assert counter is REQUESTS.labels("call_service", SIGN, "200") and histogram is LATENCY.labels("call_service", SIGN)
    assert decision_counter("investigational-code-list") is decision_counter("investigational-code-list")


def test_fhir_fetch_errors_and_auth_failures_are_counted(service_factory: Any, tmp_path: Path) -> None:
    svc = service_factory(FHIR_SERVERS="http://127.0.0.1:9/fhir", FHIR_ALLOW_HTTP=True, FHIR_BUDGET_SECONDS=0.5)
    before = requests.get(svc.url("/metrics"), timeout=5).text
    body = hook_request(service_request(), coverages=None)
    body["fhirServer"] = "http://127.0.0.1:9/fhir"
    svc.call(body, expect=400)  # no Coverage could be obtained (CRD hook-13)
    issuers = tmp_path / "i.json"
    from tests.test_auth import EC_KEY, jwk

    issuers.write_text(json.dumps({"issuers": [{"iss": "x", "jwks": {"keys": [jwk(EC_KEY, "k")]}}]}))
    secured = service_factory(TRUSTED_ISSUERS=str(issuers))
    assert secured.http.post(secured.url(f"/cds-services/{SIGN}"), json={}, timeout=5).status_code == 401
    after = requests.get(svc.url("/metrics"), timeout=5).text
    assert metric(after, "cds_fhir_fetch_errors_total", reason="connection") > \
        metric(before, "cds_fhir_fetch_errors_total", reason="connection")
    assert metric(after, "cds_auth_failures_total") >= metric(before, "cds_auth_failures_total") + 1


def test_json_log_lines_carry_the_hook_instance(cds: LiveService) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(HookInstanceFilter())
    logger = logging.getLogger("cds_service")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        body = hook_request(service_request(), coverages=None)
        body["fhirServer"] = "https://not-allowed.example/fhir"  # logs a warning inside the call
        cds.call(body, expect=400)
        assert requests.get(cds.url("/cds-services"), timeout=5).status_code == 200  # no line of its own
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) >= 2
    assert all(line["hookInstance"] == body["hookInstance"] for line in lines)
    [request_line] = [line for line in lines if line["logger"] == "cds_service.requests"]
    assert request_line["status"] == 400 and request_line["service"] == SIGN and request_line["latency_ms"] > 0


# ---------------------------------------------------------------- policy pages


def test_main_policy_page(cds: LiveService) -> None:
    page = requests.get(cds.url("/policies/mp-2-267"), timeout=5)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    html = page.text
    for expected in ("MP 2.267", "Retired", "2026-07-01", "0530U", "2025-01-01", "81277", "2023-10-06",
                     "EviCore", "fepblue.org", "/policies/mp-2-241"):
        assert expected in html, expected


def test_alternative_policy_pages(cds: LiveService) -> None:
    for number in ("2.235", "2.241", "2.259", "2.277", "2.280", "2.315", "2.316", "2.364"):
        page = requests.get(cds.url(f"/policies/mp-{number.replace('.', '-')}"), timeout=5)
        assert page.status_code == 200 and f"MP {number}" in page.text
    nsclc = requests.get(cds.url("/policies/mp-2-241"), timeout=5).text
    assert "C34" in nsclc and "own words" in nsclc
    assert requests.get(cds.url("/policies/mp-9-999"), timeout=5).status_code == 404


def test_cards_link_the_policy_page_of_the_public_base_url_or_the_url_called(service_factory: Any) -> None:
    svc = service_factory(PUBLIC_BASE_URL="https://cds.payer.example/")
    card = svc.call(hook_request(service_request("0530U", "2025-03-03")))["cards"][0]
    assert card["links"][0]["url"] == "https://cds.payer.example/policies/mp-2-267"
    plain = service_factory()
    card = plain.call(hook_request(service_request("0530U", "2025-03-03")))["cards"][0]
    assert card["links"][0]["url"] == plain.url("/policies/mp-2-267")
    assert requests.get(card["links"][0]["url"], timeout=5).status_code == 200


# ---------------------------------------------------------------- production server


@pytest.mark.parametrize("access_log", [None, "true"])
def test_gunicorn_serves_the_app_and_logs_one_json_format(tmp_path: Path, access_log: str | None) -> None:
    """One JSON format for every line; the service's own line per hook call, gunicorn's access line
    only when CDS_ACCESS_LOG=true (it repeats the service's)."""
    port = free_port()
    env = {**os.environ, "CDS_DATABASE_URL": f"sqlite:///{tmp_path / 'g.sqlite3'}", "CDS_BIND": f"127.0.0.1:{port}",
           "CDS_WORKERS": "2"}
    env.pop("CDS_ACCESS_LOG", None)
    if access_log:
        env["CDS_ACCESS_LOG"] = access_log
    out, err = (tmp_path / "out.log").open("wb"), (tmp_path / "err.log").open("wb")
    proc = subprocess.Popen(GUNICORN, cwd=ROOT, env=env, stdout=out, stderr=err)
    try:
        wait_until_answers(f"http://127.0.0.1:{port}/readyz", proc)
        body = hook_request(service_request("0530U", "2025-03-03"))
        answer = requests.post(f"http://127.0.0.1:{port}/cds-services/{SIGN}", json=body, timeout=10)
        assert answer.status_code == 200 and answer.json()["cards"][0]["indicator"] == "warning"
    finally:
        proc.terminate()
        proc.wait(15)
        out.close()
        err.close()
    lines = [json.loads(line) for f in ("out.log", "err.log") for line in (tmp_path / f).read_text().splitlines()]
    assert all({"time", "level", "logger", "message"} <= set(entry) for entry in lines)  # every line, one format
    loggers = {entry["logger"] for entry in lines}
    assert {"gunicorn.error", "cds_service.requests"} <= loggers, loggers
    assert ("gunicorn.access" in loggers) == bool(access_log), loggers
    if access_log:
        access = next(e for e in lines if e["logger"] == "gunicorn.access" and SIGN in e["message"])
        assert access["status"] == 200 and access["latency_ms"] > 0
    app = next(e for e in lines if e["logger"] == "cds_service.requests" and SIGN in e["message"])
    assert app["hookInstance"] == body["hookInstance"]


def test_gunicorn_refuses_unauthenticated_public_bind() -> None:
    env = {**os.environ, "CDS_BIND": f"0.0.0.0:{free_port()}"}
    env.pop("CDS_ALLOW_UNAUTHENTICATED", None)
    env.pop("CDS_TRUSTED_ISSUERS", None)
    out = subprocess.run(GUNICORN,
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "refusing to serve without client authentication" in out.stderr


@pytest.mark.parametrize(("setting", "message"), [
    ("CDS_WORKERS=two", "error: CDS_WORKERS='two' is not a whole number of 1 or more"),
    ("CDS_THREADS=0", "error: CDS_THREADS='0' is not a whole number of 1 or more"),
    ("CDS_TIMEOUT=-5", "error: CDS_TIMEOUT='-5' is not a whole number of 0 or more"),
    ("CDS_KEEPALIVE_LINGER_MS=nan", "error: CDS_KEEPALIVE_LINGER_MS='nan' is not a number of 0 or more"),
    ("CDS_MODE=crd-ish", "error: setting MODE: 'crd-ish' is not crd or sandbox"),
    ("CDS_MAX_CONTENT_LENGTH=1MB", "error: setting MAX_CONTENT_LENGTH: '1MB' is not a valid int"),
])
def test_gunicorn_stops_on_a_bad_setting_naming_it(tmp_path: Path, setting: str, message: str) -> None:
    """An operator's typo ends the start with one line that names the setting, not a traceback."""
    name, value = setting.split("=")
    env = {**os.environ, "CDS_BIND": f"127.0.0.1:{free_port()}", "CDS_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
           name: value}
    out = subprocess.run(GUNICORN, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and out.stderr.strip().splitlines()[-1] == message, out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "x.db").exists()


def _sockets(pid: int, port: int, state: str) -> int:
    """TCP sockets on local ``port`` in ``state`` (01 established, 0A listening) among the open files of
    process ``pid`` (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    held = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port, inode = int(fields[1].split(":")[1], 16), fields[9]
        held += local_port == port and fields[3] == state and inode in inodes
    return held


def test_kept_alive_connections_are_spread_over_the_workers_by_the_kernel(tmp_path: Path) -> None:
    """Each worker listens on its own socket of the port: the kernel spreads connections over them, not
    whichever worker is quickest to accept. With one shared socket, a burst of keep-alive connections
    could all land on one worker and stay there, leaving the other core idle. Here one worker is stopped
    while 16 connections open: with a shared socket the other one takes them all; with a socket each,
    the stopped worker's share waits for it, and both serve."""
    server = GunicornProcess({"CDS_DATABASE_URL": f"sqlite:///{tmp_path / 'g.sqlite3'}", "CDS_WORKERS": "2"}, ROOT)
    connections: list[http.client.HTTPConnection] = []
    try:
        deadline = time.monotonic() + 30
        while not (len(workers := sorted(server.workers())) == 2 and all(_sockets(w, server.port, "0A")
                                                                          for w in workers)):
            assert time.monotonic() < deadline, "the two workers did not start listening"
            time.sleep(0.05)
        first, second = workers
        os.kill(first, signal.SIGSTOP)
        try:
            for _ in range(16):
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
                conn.connect()
                connections.append(conn)
            time.sleep(0.5)  # ample time for the running worker to accept every connection it can reach
        finally:
            os.kill(first, signal.SIGCONT)
        for conn in connections:
            conn.request("GET", "/cds-services")
            answer = conn.getresponse()
            answer.read()
            assert answer.status == 200 and not answer.will_close  # kept alive
        held = {pid: _sockets(pid, server.port, "01") for pid in (first, second)}
        assert sum(held.values()) == 16 and min(held.values()) >= 1, held
    finally:
        for conn in connections:
            conn.close()
        server.stop()


def _cpus(pid: int) -> set[frozenset[int]]:
    """The CPU sets the process's threads may run on (one entry when they all share one)."""
    return {frozenset(os.sched_getaffinity(int(tid))) for tid in os.listdir(f"/proc/{pid}/task")}


def _two_workers(server: GunicornProcess, other_than: int | None = None) -> list[int]:
    deadline = time.monotonic() + 30
    while len(workers := sorted(server.workers())) != 2 or other_than in workers:
        assert time.monotonic() < deadline, "gunicorn did not run two workers"
        time.sleep(0.05)
    for _ in range(20):  # each worker starts its threads with its first requests
        requests.get(f"{server.base}/cds-services", timeout=5)
    return workers


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux and two CPUs")
def test_each_worker_runs_on_a_cpu_of_its_own(tmp_path: Path) -> None:
    """Every thread of a worker on one CPU, a different one from the other worker's; a worker that dies is
    replaced on the CPU it left."""
    server = GunicornProcess({"CDS_DATABASE_URL": f"sqlite:///{tmp_path / 'g.sqlite3'}", "CDS_WORKERS": "2"}, ROOT)
    try:
        first, second = _two_workers(server)
        placed = {pid: _cpus(pid) for pid in (first, second)}
        assert all(len(sets) == 1 and len(next(iter(sets))) == 1 for sets in placed.values()), placed
        assert placed[first] != placed[second]
        assert all(cpus <= os.sched_getaffinity(0) for sets in placed.values() for cpus in sets)
        os.kill(first, signal.SIGKILL)
        replacement = next(pid for pid in _two_workers(server, other_than=first) if pid != second)
        assert _cpus(replacement) == placed[first] and _cpus(second) == placed[second]
    finally:
        server.stop()


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs Linux")
def test_pinning_workers_can_be_turned_off(tmp_path: Path) -> None:
    server = GunicornProcess({"CDS_DATABASE_URL": f"sqlite:///{tmp_path / 'g.sqlite3'}", "CDS_WORKERS": "2",
                              "CDS_PIN_WORKERS": "false"}, ROOT)
    try:
        for pid in _two_workers(server):
            assert _cpus(pid) == {frozenset(os.sched_getaffinity(0))}
    finally:
        server.stop()


@pytest.mark.parametrize(("bind", "shared"), [("127.0.0.1:8080", True), ("127.0.0.1:8080,[::1]:8080", True),
                                               ("unix:/run/cds.sock", False), ("127.0.0.1:8080,unix:/x.sock", False)])
def test_a_socket_per_worker_only_where_the_bind_allows_it(monkeypatch: pytest.MonkeyPatch, bind: str,
                                                          shared: bool) -> None:
    """A Unix socket path cannot be bound by several workers at once: there they share the master's."""
    import cds_service.gunicorn_conf as conf

    monkeypatch.setenv("CDS_BIND", bind)
    assert importlib.reload(conf).reuse_port is shared
    monkeypatch.delenv("CDS_BIND")
    importlib.reload(conf)


def test_the_production_app_leaves_its_start_up_heap_out_of_garbage_collection(tmp_path: Path) -> None:
    """What the production module loads (knowledge, FHIR models, the app) is frozen before gunicorn forks:
    a full collection walks only what requests created since. Unfrozen, it walked ~160,000 objects, a
    pause of tens of milliseconds that every request in flight waited behind."""
    probe = ("import gc, json, cds_service.wsgi; "
             "print(json.dumps([gc.get_freeze_count(), len(gc.get_objects())]))")
    env = {**os.environ, "CDS_DATABASE_URL": f"sqlite:///{tmp_path / 'g.sqlite3'}"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60, check=True)
    frozen, collectable = json.loads(out.stdout.splitlines()[-1])
    assert frozen > 50_000 and collectable < frozen / 20, (frozen, collectable)


def test_log_records_skip_what_no_line_shows() -> None:
    """configure_logging turns off the caller and thread lookups every record would otherwise make (a walk
    up the stack per line); the JSON line shows neither."""
    probe = ("import json, logging; from cds_service.observability import configure_logging; configure_logging(); "
             "seen = []; h = logging.Handler(); h.emit = seen.append; logging.getLogger('x').addHandler(h); "
             "logging.getLogger('x').info('m'); r = seen[0]; "
             "print(json.dumps([r.lineno, r.threadName, r.processName]))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         check=True)
    assert json.loads(out.stdout) == [0, None, None]
