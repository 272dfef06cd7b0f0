"""Benchmark harness: the service against a same-run ceiling, under the same gunicorn settings.

    .venv/bin/python bench/run.py                      # full run: 10 s warm-up + 20 s measured per case
    .venv/bin/python bench/run.py --warmup 3 --duration 10 --connections 8
    .venv/bin/python bench/run.py --duration 10 --rounds 2     # alternate service/ceiling, report medians
    .venv/bin/python bench/run.py --soak 600           # bounded soak at 8 connections, RSS at start and end

Needs wrk (Debian package `wrk`). Everything listens on 127.0.0.1 only; every load is bounded in time.
Prints a table (requests/s, p50, p99, ratio service/ceiling) and writes the same figures as JSON to
bench/results/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import coverage, hook_request, service_request  # noqa: E402
from tests.fhir_test_server import FhirTestServer  # noqa: E402
from tests.processes import free_port, wait_until_answers  # noqa: E402

SIGN = "/cds-services/liquid-biopsy-order-sign"
WORKERS = 2  # the same for every case, on this 2-core machine


@dataclass
class Shape:
    name: str
    method: str
    path: str
    body: dict[str, Any] | None


def shapes(fhir_base: str) -> list[Shape]:
    listed = service_request("0530U", "2025-03-03", rid="lb-1", icd=("C34.90",))
    patient = {"resourceType": "Patient", "id": "p1", "name": [{"family": "Bench", "given": ["Ada"]}],
               "gender": "female", "birthDate": "1960-01-01",
               "identifier": [{"system": "urn:oid:2.16.840.1.113883.4.1", "value": "000-00-0000"}]}
    prefetch = {"patient": patient}
    unrelated = []
    for i in range(9):
        sr = service_request("85025", "2025-03-03", rid=f"other-{i}")
        sr["code"] = {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": f"8{5000 + i}"}],
                      "text": f"Routine lab {i}"}
        unrelated.append(sr)
    no_prefetch = hook_request(listed, coverages=None, prefetch={"patient": patient})
    no_prefetch["fhirServer"] = fhir_base
    no_prefetch["fhirAuthorization"] = {"access_token": "bench", "token_type": "Bearer", "expires_in": 300,
                                        "scope": "patient/Coverage.read", "subject": "cds"}
    return [
        Shape("discovery", "GET", "/cds-services", None),
        Shape("sign-1-listed", "POST", SIGN, hook_request(listed, coverages=(coverage(),), prefetch=prefetch)),
        Shape("sign-10-orders", "POST", SIGN, hook_request(listed, *unrelated, coverages=(coverage(),),
                                                           prefetch=prefetch)),
        Shape("sign-unrelated", "POST", SIGN, hook_request(unrelated[0], coverages=(coverage(),),
                                                           prefetch=prefetch)),
        Shape("sign-fhir-fetch", "POST", SIGN, no_prefetch),
    ]


class Server:
    def __init__(self, app: str, env: dict[str, str]) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.started = time.perf_counter()
        self.first_start: float | None = None  # cold start on a new database, when measured separately
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "python:cds_service.gunicorn_conf", app],
            cwd=ROOT, env={**os.environ, **env, "CDS_BIND": f"127.0.0.1:{self.port}", "CDS_WORKERS": str(WORKERS)},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            self.cold_start = self._wait()
        except BaseException:
            self.stop()  # never leave a server behind
            raise

    def _wait(self) -> float:
        wait_until_answers(self.base + "/cds-services", timeout=60, poll=0.01)
        return time.perf_counter() - self.started

    def rss_kib(self) -> int:
        """Resident memory of the master and its workers."""
        pids = [self.proc.pid]
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        if children.exists():
            pids += [int(p) for p in children.read_text().split()]
        total = 0
        for pid in pids:
            status = Path(f"/proc/{pid}/status")
            if status.exists():
                m = re.search(r"VmRSS:\s+(\d+)", status.read_text())
                total += int(m.group(1)) if m else 0
        return total

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


LUA = """
wrk.method = "{method}"
wrk.headers["Content-Type"] = "application/json"
{body}
"""


def wrk(url: str, shape: Shape, body_file: Path | None, connections: int, seconds: int, lua: Path) -> dict[str, float]:
    body = f'local f = io.open("{body_file}", "rb"); wrk.body = f:read("*all"); f:close()' if body_file else ""
    lua.write_text(LUA.format(method=shape.method, body=body))
    threads = min(connections, 2)
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--latency",
                          "--timeout", "5s", "-s", str(lua), url], capture_output=True, text=True,
                         timeout=seconds + 60, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50_ms": pct("50"), "p99_ms": pct("99"),
            "non_2xx": float(errors.group(1)) if errors else 0.0,
            "socket_errors": 1.0 if socket_errors else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warmup", type=int, default=10, help="seconds of warm-up per case (not measured)")
    parser.add_argument("--duration", type=int, default=20, help="seconds measured per case")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternating service/ceiling measurements per case; medians are reported")
    parser.add_argument("--shapes", nargs="+", help="only these shapes")
    parser.add_argument("--soak", type=int, default=0, help="soak mode: seconds (at most 600) at 8 connections")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")

    with tempfile.TemporaryDirectory() as tmp_dir, contextlib.ExitStack() as running:
        tmp = Path(tmp_dir)
        fhir = FhirTestServer()
        running.callback(fhir.close)
        fhir.coverages = [coverage("bench-cov")]
        service_env = {
            "CDS_DATABASE_URL": f"sqlite:///{tmp / 'bench.sqlite3'}", "CDS_FHIR_SERVERS": fhir.base,
            "CDS_FHIR_ALLOW_HTTP": "true", "CDS_TRUSTED_ISSUERS": "", "CDS_ALLOW_UNAUTHENTICATED": "false"}
        # Cold start twice: on a new database (creates the schema), then a restart on the existing one.
        first = Server("cds_service.wsgi:app", service_env)
        first.stop()
        service = Server("cds_service.wsgi:app", service_env)
        service.first_start = first.cold_start
        running.callback(service.stop)
        every_shape = shapes(fhir.base)
        chosen = [s for s in every_shape if not args.shapes or s.name in args.shapes]

        # Record the service's real answer per shape; the ceiling replays it, same size, same bytes.
        # Discovery is always recorded: it is also how both servers are seen to be up.
        bodies: dict[str, str] = {}
        for shape in every_shape:
            if shape in chosen or shape.name == "discovery":
                url = f"{service.base}{shape.path}?shape={shape.name}"
                resp = requests.request(shape.method, url, json=shape.body, timeout=10)
                resp.raise_for_status()
                bodies[shape.name] = resp.text
        (tmp / "bodies.json").write_text(json.dumps(bodies))
        ceiling = Server("bench.ceiling:app", {"CEILING_BODIES": str(tmp / "bodies.json"), "PYTHONPATH": str(ROOT)})
        running.callback(ceiling.stop)

        if args.soak:
            soak(service, every_shape[1], tmp, min(args.soak, 600))
        else:
            results = measure(service, ceiling, chosen, bodies, args, tmp)
            report(results, service, ceiling, args)


def measure(service: Server, ceiling: Server, all_shapes: list[Shape], bodies: dict[str, str],
            args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    """Each case: warm both servers, then ``rounds`` alternating service/ceiling measurements.

    The machine is shared and its speed drifts (the same ceiling has measured 1,700-4,800 rps within
    minutes here); alternating, and reporting medians of the per-round figures, keeps a drift from
    landing on one side only."""
    results = []
    for shape in all_shapes:
        body_file = None
        if shape.body is not None:
            body_file = tmp / f"{shape.name}.json"
            body_file.write_text(json.dumps(shape.body))
        for conns in args.connections:
            sides = {"service": service, "ceiling": ceiling}
            urls = {name: f"{server.base}{shape.path}?shape={shape.name}" for name, server in sides.items()}
            if args.warmup:
                for name in sides:
                    wrk(urls[name], shape, body_file, conns, args.warmup, tmp / "w.lua")
            rounds: dict[str, list[dict[str, float]]] = {"service": [], "ceiling": []}
            for r in range(args.rounds):
                for name in (("service", "ceiling") if r % 2 == 0 else ("ceiling", "service")):
                    rounds[name].append(wrk(urls[name], shape, body_file, conns, args.duration, tmp / "m.lua"))
            ratios = [s["rps"] / c["rps"] for s, c in zip(rounds["service"], rounds["ceiling"], strict=True)]
            row: dict[str, Any] = {
                "shape": shape.name, "connections": conns,
                "request_bytes": body_file.stat().st_size if body_file else 0,
                "response_bytes": len(bodies[shape.name].encode()),
                **{name: {key: statistics.median(run[key] for run in runs) for key in runs[0]}
                   for name, runs in rounds.items()},
                "ratio": statistics.median(ratios), "ratio_per_round": ratios, "rounds": rounds,
            }
            results.append(row)
            print(f"  measured {shape.name} @ {conns}: {row['service']['rps']:.0f} vs {row['ceiling']['rps']:.0f} rps"
                  f" (ratio per round: {', '.join(f'{x:.2f}' for x in ratios)})", file=sys.stderr)
    return results


def report(results: list[dict[str, Any]], service: Server, ceiling: Server, args: argparse.Namespace) -> None:
    header = f"{'shape':17} {'conn':>4} {'svc rps':>8} {'ceil rps':>8} {'ratio':>6} {'svc p50':>8} {'svc p99':>8} " \
             f"{'ceil p50':>8} {'ceil p99':>8}"
    print(header)
    print("-" * len(header))
    for r in results:
        s, c = r["service"], r["ceiling"]
        print(f"{r['shape']:17} {r['connections']:>4} {s['rps']:>8.0f} {c['rps']:>8.0f} {r['ratio']:>6.2f} "
              f"{s['p50_ms']:>6.2f}ms {s['p99_ms']:>6.2f}ms {c['p50_ms']:>6.2f}ms {c['p99_ms']:>6.2f}ms")
    print(f"cold start (process start -> first discovery answer): service {service.cold_start:.2f} s "
          f"(on a new database {service.first_start:.2f} s), ceiling {ceiling.cold_start:.2f} s")
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = out_dir / f"bench-{stamp}.json"
    path.write_text(json.dumps({
        "when": stamp, "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "commit": _commit(),
        "settings": {"workers": WORKERS, "warmup_s": args.warmup, "duration_s": args.duration,
                     "rounds": args.rounds},
        "cold_start_s": {"service": service.cold_start, "service_new_database": service.first_start,
                         "ceiling": ceiling.cold_start},
        "results": results}, indent=2))
    print(f"figures written to {path.relative_to(ROOT)}")


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@dataclass
class SoakResult:
    seconds: int
    rss_start_kib: int
    rss_end_kib: int
    growth_pct: float
    rps: float
    p99_ms: float


def soak(service: Server, shape: Shape, tmp: Path, seconds: int) -> None:
    body_file = tmp / "soak.json"
    body_file.write_text(json.dumps(shape.body))
    url = f"{service.base}{shape.path}?shape={shape.name}"
    wrk(url, shape, body_file, 8, 10, tmp / "w.lua")  # warm-up so the start figure is steady-state
    start = service.rss_kib()
    stats = wrk(url, shape, body_file, 8, seconds, tmp / "s.lua")
    end = service.rss_kib()
    result = SoakResult(seconds, start, end, 100.0 * (end - start) / start, stats["rps"], stats["p99_ms"])
    print(json.dumps(asdict(result), indent=2))


if __name__ == "__main__":
    main()
