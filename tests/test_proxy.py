"""The deployment's reverse proxy (docker/nginx/cds.conf.template, as docker-compose runs it) in front of
the production server: a real nginx and a real gunicorn on loopback ports. Clients that trickle their
request head or body are held and cut off by nginx; they never reach a gunicorn thread, so a valid
caller is answered as fast as ever. Skipped where no nginx binary is installed (scripts/test.sh
installs it; CI must not skip it)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.conftest import SIGN, hook_request, service_request
from tests.processes import GunicornProcess, free_port, wait_until_answers

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "docker" / "nginx" / "cds.conf.template"
HOOK = f"/cds-services/{SIGN}"
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)

# In CI a missing nginx fails the tests (the fixture asserts) instead of skipping them.
pytestmark = pytest.mark.skipif(NGINX is None and not os.environ.get("CI"), reason="nginx is not installed")


def fill(template: str, env: dict[str, str]) -> str:
    """What the nginx image's entrypoint does: substitute ${VAR} for the variables set, leave the rest."""
    return re.sub(r"\$\{([A-Z_][A-Z0-9_]*)\}", lambda m: env.get(m.group(1), m.group(0)), template)


class NginxProcess:
    def __init__(self, upstream: str, folder: Path) -> None:
        assert NGINX, "nginx is not installed (scripts/test.sh installs it)"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o777)  # workers run as nobody when the tests run as root
        site = fill(TEMPLATE.read_text(), {"CDS_UPSTREAM": upstream, "PROXY_LISTEN": f"127.0.0.1:{self.port}"})
        (folder / "cds.conf").write_text(site)
        temp = " ".join(f"{kind}_temp_path {folder / kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                                        "uwsgi", "scgi"))
        (folder / "nginx.conf").write_text(
            f"daemon off;\nworker_processes 1;\npid {folder / 'nginx.pid'};\nerror_log {folder / 'error.log'} warn;\n"
            f"events {{ worker_connections 1024; }}\n"
            f"http {{ access_log off; {temp} include {folder / 'cds.conf'}; }}\n")
        self.log = folder / "error.log"
        self.proc = subprocess.Popen([NGINX, "-p", str(folder), "-e", str(self.log), "-c", str(folder / "nginx.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_until_answers(f"{self.base}/readyz", self.proc)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[GunicornProcess, NginxProcess]]:
    # Two threads only, so that a handful of slow clients reaching gunicorn would show at once.
    server = GunicornProcess({"CDS_DATABASE_URL": f"sqlite:///{tmp_path / 'cds.sqlite3'}", "CDS_TODAY": "2026-11-25",
                              "CDS_WORKERS": "1", "CDS_THREADS": "2"}, ROOT)
    proxy = NginxProcess(f"127.0.0.1:{server.port}", tmp_path / "nginx")
    yield server, proxy
    proxy.stop()
    server.stop()


def valid_call(base: str) -> float:
    body = hook_request(service_request("0530U", "2025-03-03"))
    start = time.monotonic()
    answer = requests.post(base + HOOK, json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["cards"], answer.json()
    return time.monotonic() - start


def slow_client(base: str, head_only: bool, results: list[tuple[bool, int | None, float]],
                seconds: float = 8.0) -> None:
    """Send a request a byte every 0.2 s for up to ``seconds`` (the head, or a complete head and then a
    body that never reaches its Content-Length), then wait; record the status the proxy answered
    (None: it closed the connection) and when."""
    host, port = base.removeprefix("http://").split(":")
    start = time.monotonic()
    head = f"POST {HOOK} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n"
    trickle = (head + "X-Slow: " + "a" * 200).encode() if head_only else b" " * 400
    data = b""
    with socket.create_connection((host, int(port)), timeout=25) as s:
        try:
            if not head_only:
                s.sendall((head + "\r\n").encode())
            for byte in trickle[: int(seconds / 0.2)]:
                s.sendall(bytes([byte]))
                time.sleep(0.2)
            s.settimeout(15)
            data = s.recv(4096)
        except OSError:  # the proxy closed the connection
            pass
    status = int(data.split(b" ")[1]) if data.startswith(b"HTTP/") else None
    results.append((head_only, status, time.monotonic() - start))


def test_valid_calls_pass_through_the_proxy_unchanged(stack: tuple[GunicornProcess, NginxProcess]) -> None:
    server, proxy = stack
    body = hook_request(service_request("0530U", "2025-03-03"))
    direct = requests.post(server.base + HOOK, json=body, timeout=30)
    body["hookInstance"] = body["hookInstance"][:-4] + "beef"
    proxied = requests.post(proxy.base + HOOK, json=body, timeout=30)
    assert proxied.status_code == direct.status_code == 200
    assert [c["summary"] for c in proxied.json()["cards"]] == [c["summary"] for c in direct.json()["cards"]]
    assert requests.get(proxy.base + "/cds-services", timeout=10).json() == requests.get(
        server.base + "/cds-services", timeout=10).json()


def test_slow_heads_and_bodies_are_cut_off_by_the_proxy_not_queued_on_the_server(
        stack: tuple[GunicornProcess, NginxProcess]) -> None:
    server, proxy = stack
    results: list[tuple[bool, int | None, float]] = []
    # 40 slow clients against a server with 2 threads: any of them reaching gunicorn would stall it.
    threads = [threading.Thread(target=slow_client, args=(proxy.base, i % 2 == 0, results)) for i in range(40)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # all of them are connected and trickling now
    with ThreadPoolExecutor(4) as pool:
        waits = list(pool.map(lambda _: valid_call(proxy.base), range(20)))
    for t in threads:
        t.join(30)
    assert max(waits) < 1.0, waits
    assert len(results) == 40
    heads = [(status, elapsed) for head_only, status, elapsed in results if head_only]
    bodies = [(status, elapsed) for head_only, status, elapsed in results if not head_only]
    # A head must be complete within client_header_timeout (5 s), however steadily it trickles.
    assert all(status in (None, 408) and 4.5 < elapsed < 7 for status, elapsed in heads), heads
    # A body may trickle (nginx holds it, buffered, away from the service); once it stalls for
    # client_body_timeout (5 s) nginx drops it (408 in its log). The service never saw any of it.
    assert all(status in (None, 408) and 12 < elapsed < 16 for status, elapsed in bodies), bodies
    assert server.workers(), "the gunicorn worker is gone"


def test_one_address_holds_a_bounded_number_of_requests(stack: tuple[GunicornProcess, NginxProcess]) -> None:
    """Trickled bodies are bounded by count, not time: limit_conn refuses the 65th from one address."""
    _, proxy = stack
    host, port = proxy.base.removeprefix("http://").split(":")
    held = []
    try:
        for _ in range(64):
            s = socket.create_connection((host, int(port)), timeout=10)
            s.sendall(f"POST {HOOK} HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n ".encode())
            held.append(s)
        time.sleep(0.3)
        refused = requests.post(proxy.base + HOOK, json={}, timeout=10)
        assert refused.status_code == 503, refused.status_code
    finally:
        for s in held:
            s.close()
    time.sleep(0.3)
    valid_call(proxy.base)


def test_bodies_over_the_limit_are_refused_at_the_proxy(stack: tuple[GunicornProcess, NginxProcess]) -> None:
    _, proxy = stack
    answer = requests.post(proxy.base + HOOK, data=b"{" + b" " * (2 * 1024 * 1024) + b"}",
                           headers={"Content-Type": "application/json"}, timeout=30)
    assert answer.status_code == 413
