"""Benchmark: the production server against an honest ceiling, and the reference peer, in one run.

    .venv/bin/python bench/run.py                                  # every case, 8 connections, 3 rounds
    .venv/bin/python bench/run.py --peer ../sandbox-cds-services   # ... and the Node reference services
    .venv/bin/python bench/run.py --cases sign-1-listed --connections 1 8 32 --duration 20
    .venv/bin/python bench/run.py --soak 600                       # RSS over a bounded soak at 8 connections
    .venv/bin/python bench/run.py --grow 150000 --cases sign-1-listed  # on a store that has grown

Every server listens on 127.0.0.1 only and every load is bounded in time (wrk, Debian package `wrk`).

The sides, measured in the same alternating rounds (each round runs every side once, in a rotated
order, so a drift of this shared machine's speed does not land on one side only):

- ``service``: the README's production command (gunicorn with ``python:cds_service.gunicorn_conf``,
  2 workers, the embedded SQLite store, every guarantee on).
- ``service-jwt`` (cases sign-1-listed-jwt and sign-1-listed-jwt-rs384): the same with a trusted issuer;
  every request carries its own client JWT (a new jti each time, as CDS Hooks requires), signed with
  ES384 (P-384) or RS384 (RSA 2048), the two algorithms CDS Hooks recommends.
- ``ceiling``: the fastest configuration of the same stack, per round: the fastest of ``ceiling-sync``
  (Flask under gunicorn, 2 sync workers, a connection per request), ``ceiling-keepalive`` (2 gthread
  workers of one thread each, each on its own socket of the port, connections kept alive) and
  ``ceiling-same-config`` (the service's own gunicorn settings), none with an access log, all answering
  with the service's recorded response bytes for the same request. (None is always the fastest here.)
- ``service-at-REF`` (with ``--compare DIR``): the service from another checkout of this repository
  (e.g. ``git worktree add ../before HEAD~3``), started in that checkout, under the same production
  command, for a before/after in the same run.
- ``peer`` (with ``--peer DIR``): the PAMA imaging service of cds-hooks/sandbox-cds-services, one Node
  process as shipped, sent the equivalent order-select (one rated order, answered with a system action).

Each request carries its own hookInstance (the service answers a repeated hookInstance from its record).
Prints a table (requests/s, p50, p99, share of the ceiling, the server's CPU time per request: user +
system of the server and its workers, from /proc) and writes it as JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import coverage, hook_request, service_request  # noqa: E402
from tests.fhir_test_server import FhirTestServer  # noqa: E402
from tests.processes import free_port, wait_until_answers  # noqa: E402

SIGN = "/cds-services/liquid-biopsy-order-sign"
WORKERS = "2"  # every Python side, on this 2-core machine
PLACEHOLDER = "00000000-0000-4000-8000-000000000000"  # the hookInstance each request replaces with its own
ISSUER = "https://ehr.bench.example"
EC_KEY = ec.generate_private_key(ec.SECP384R1())
RSA_KEY = rsa.generate_private_key(65537, 2048)
KEYS: dict[str, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey] = {"ES384": EC_KEY, "RS384": RSA_KEY}
MAX_TOKEN_RATE = 4000  # tokens minted per measured second of the JWT case (more than any side reaches here)


@dataclass
class Case:
    name: str
    method: str
    path: str
    body: dict[str, Any] | None
    jwt: str | None = None  # the signing algorithm of the client JWTs (None: unauthenticated)


def cases(fhir_base: str) -> list[Case]:
    listed = service_request("0530U", "2025-03-03", rid="lb-1", icd=("C34.90",))
    patient = {"resourceType": "Patient", "id": "p1", "name": [{"family": "Bench", "given": ["Ada"]}],
               "gender": "female", "birthDate": "1960-01-01"}
    prefetch = {"patient": patient}
    unrelated = []
    for i in range(9):
        sr = service_request("85025", "2025-03-03", rid=f"other-{i}")
        sr["code"] = {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": f"8{5000 + i}"}],
                      "text": f"Routine lab {i}"}
        unrelated.append(sr)
    fetch = hook_request(listed, coverages=None, prefetch=prefetch)
    fetch["fhirServer"] = fhir_base
    fetch["fhirAuthorization"] = {"access_token": "bench", "token_type": "Bearer", "expires_in": 300,
                                  "scope": "patient/Coverage.read", "subject": "cds"}
    one = hook_request(listed, coverages=(coverage(),), prefetch=prefetch)
    every = [
        Case("discovery", "GET", "/cds-services", None),
        Case("sign-1-listed", "POST", SIGN, one),
        Case("sign-1-listed-jwt", "POST", SIGN, one, jwt="ES384"),
        Case("sign-1-listed-jwt-rs384", "POST", SIGN, one, jwt="RS384"),
        Case("sign-unrelated", "POST", SIGN, hook_request(unrelated[0], coverages=(coverage(),), prefetch=prefetch)),
        Case("sign-10-orders", "POST", SIGN, hook_request(listed, *unrelated, coverages=(coverage(),),
                                                          prefetch=prefetch)),
        Case("sign-fhir-fetch", "POST", SIGN, fetch),
    ]
    for case in every:
        if case.body is not None:
            case.body = {**case.body, "hookInstance": PLACEHOLDER}
    return every


def peer_request() -> dict[str, Any]:
    """The peer's equivalent of sign-1-listed: one order its rules rate, answered with a system action."""
    order = {"resourceType": "ServiceRequest", "id": "example-bench", "status": "draft", "intent": "plan",
             "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "70450"}],
                      "text": "CT head without contrast"},
             "subject": {"reference": "Patient/bench"},
             "reasonCode": [{"coding": [{"system": "http://snomed.info/sct", "code": "25064002", "display": "Headache"},
                                        {"system": "http://snomed.info/sct", "code": "423341008",
                                         "display": "Optic disc edema"}]}]}
    return {"hook": "order-select", "hookInstance": PLACEHOLDER, "fhirServer": "http://127.0.0.1:9/fhir",
            "context": {"userId": "Practitioner/123", "patientId": "bench", "encounterId": "89284",
                        "selections": ["ServiceRequest/example-bench"],
                        "draftOrders": {"resourceType": "Bundle", "entry": [{"resource": order}]}}}


class Server:
    """A process serving on a free loopback port; ``cold_start`` is process start to first answer."""

    def __init__(self, command: list[str], env: dict[str, str], cwd: Path = ROOT, probe: str = "/cds-services") -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        started = time.perf_counter()
        full_env = {**os.environ, **env, "CDS_BIND": f"127.0.0.1:{self.port}", "PORT": str(self.port)}
        self.proc = subprocess.Popen([a.replace("{port}", str(self.port)) for a in command], cwd=cwd, env=full_env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until_answers(self.base + probe, timeout=60, poll=0.01)
        except BaseException:
            self.stop()  # never leave a server behind
            raise
        self.cold_start = time.perf_counter() - started

    def pids(self) -> list[int]:
        """The process and its children (gunicorn's workers)."""
        pids = [self.proc.pid]
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        if children.exists():
            pids += [int(p) for p in children.read_text().split()]
        return pids

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far by the process and its children (from /proc)."""
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        return total / os.sysconf("SC_CLK_TCK")

    def rss_kib(self) -> int:
        """Resident memory of the process and its children (gunicorn's workers)."""
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                m = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
                total += int(m.group(1)) if m else 0
        return total

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def gunicorn(app: str, *options: str) -> list[str]:
    return [sys.executable, "-m", "gunicorn", *options, app]


PRODUCTION = ("-c", "python:cds_service.gunicorn_conf")  # the README's production command
# Candidates for the fastest configuration of the stack besides the production settings (no access log in
# any): the ceiling of a round is whichever of them and ceiling-same-config answered most requests in it.
CEILINGS = {
    "ceiling-sync": ("--workers", WORKERS, "--worker-class", "sync", "--bind", "127.0.0.1:{port}"),
    "ceiling-keepalive": ("--workers", WORKERS, "--worker-class", "gthread", "--threads", "1", "--reuse-port",
                          "--bind", "127.0.0.1:{port}"),
}


@dataclass
class Side:
    name: str
    server: Server
    body: bytes | None = None  # the request this side is sent (None: the case's own)
    path: str | None = None


LUA = """
local method, path = "{method}", "{path}"
local template, tokens, ntokens, counter, threads = nil, {{}}, 0, 0, {threads}
local run = "{run}"
local next_id = 0
function setup(thread)  -- tid: a global of each thread's own Lua state
  thread:set("tid", next_id)
  next_id = next_id + 1
end
function init(args)
  {body}
  {tokens}
end
function request()
  counter = counter + 1
  local headers = {{["Content-Type"] = "application/json"}}
  if ntokens > 0 then
    local n = (counter - 1) * threads + tid
    headers["Authorization"] = "Bearer " .. tokens[n % ntokens + 1]
  end
  local body = nil
  if template then
    local id = string.format("%s-%04x-4%03x-8%03x-%012x", run, tid, 0, 0, counter)
    body = (string.gsub(template, "{placeholder}", id, 1))
  end
  return wrk.format(method, path, headers, body)
end
"""


def wrk(base: str, path: str, method: str, body_file: Path | None, token_file: Path | None, connections: int,
        seconds: int, lua: Path) -> dict[str, float]:
    threads = min(connections, 2)
    body = f'local f = io.open("{body_file}", "rb"); template = f:read("*all"); f:close()' if body_file else ""
    tokens = (f'for line in io.lines("{token_file}") do ntokens = ntokens + 1; tokens[ntokens] = line end'
              if token_file else "")
    lua.write_text(LUA.format(method=method, path=path, threads=threads, run=uuid.uuid4().hex[:8], body=body,
                              tokens=tokens, placeholder=PLACEHOLDER.replace("-", "%-")))
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--latency",
                          "--timeout", "5s", "-s", str(lua), base], capture_output=True, text=True,
                         timeout=seconds + 60, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests_done = float(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)] if m else float("nan")

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"rps": rps, "requests": requests_done, "p50_ms": pct("50"), "p99_ms": pct("99"),
            "non_2xx": float(errors.group(1)) if errors else 0.0,
            "socket_errors": float(sum(int(g) for g in socket_errors.groups())) if socket_errors else 0.0}


def mint_tokens(audience: str, count: int, path: Path, algorithm: str) -> Path:
    """``count`` single-use client JWTs (5-minute lifetime, each its own jti), one per line."""
    now = int(time.time())
    with path.open("w") as f:
        for _ in range(count):
            claims = {"iss": ISSUER, "aud": audience, "exp": now + 300, "iat": now, "jti": uuid.uuid4().hex}
            f.write(jwt.encode(claims, KEYS[algorithm], algorithm=algorithm, headers={"kid": algorithm}) + "\n")
    return path


@dataclass
class Row:
    case: str
    connections: int
    sides: dict[str, dict[str, float]] = field(default_factory=dict)  # medians over rounds
    rounds: dict[str, list[dict[str, float]]] = field(default_factory=dict)


def measure(case: Case, sides: list[Side], connections: int, args: argparse.Namespace, tmp: Path) -> Row:
    row = Row(case.name, connections)
    files: dict[str, Path | None] = {}
    for side in sides:
        body = side.body if side.body is not None else (json.dumps(case.body).encode() if case.body else None)
        files[side.name] = None
        if body is not None:
            files[side.name] = tmp / f"{case.name}-{side.name}.json"
            files[side.name].write_bytes(body)  # type: ignore[union-attr]

    def run(side: Side, seconds: int) -> dict[str, float]:
        path = side.path or case.path
        tokens = None
        if case.jwt and side.name == "service-jwt":
            tokens = mint_tokens(side.server.base + path, MAX_TOKEN_RATE * seconds, tmp / "tokens.txt", case.jwt)
        query = f"?case={case.name}" if side.name.startswith("ceiling") else ""
        cpu = side.server.cpu_seconds()
        figures = wrk(side.server.base, path + query, case.method, files[side.name], tokens, connections, seconds,
                      tmp / "load.lua")
        # The server's own CPU per answered request: steadier than requests/s on a shared machine, and
        # it says what each side costs whatever else the two cores were doing meanwhile.
        figures["cpu_ms_per_request"] = 1000 * (side.server.cpu_seconds() - cpu) / max(figures["requests"], 1)
        return figures

    for side in sides:
        if args.warmup:
            run(side, args.warmup)
    for r in range(args.rounds):
        order = sides[r % len(sides):] + sides[:r % len(sides)]
        for side in order:
            row.rounds.setdefault(side.name, []).append(run(side, args.duration))
    candidates = [row.rounds[name] for name in (*CEILINGS, "ceiling-same-config")]
    row.rounds["ceiling"] = [max(runs, key=lambda run: run["rps"]) for runs in zip(*candidates, strict=True)]
    for name, runs in row.rounds.items():
        row.sides[name] = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    ceiling = row.rounds["ceiling"]
    for name, runs in row.rounds.items():
        row.sides[name]["share_of_ceiling"] = statistics.median(
            s["rps"] / c["rps"] for s, c in zip(runs, ceiling, strict=True))
    if "service-jwt" in row.rounds:  # the authenticated path against the unauthenticated one, round by round
        row.sides["service-jwt"]["share_of_service"] = statistics.median(
            a["rps"] / u["rps"] for a, u in zip(row.rounds["service-jwt"], row.rounds["service"], strict=True))
    print(f"  {case.name} @ {connections}: " + ", ".join(f"{n} {v['rps']:.0f} rps" for n, v in row.sides.items()),
          file=sys.stderr)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warmup", type=int, default=5, help="seconds of warm-up per side and case (not measured)")
    parser.add_argument("--duration", type=int, default=10, help="seconds measured per side, case and round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per case; medians are reported")
    parser.add_argument("--connections", type=int, nargs="+", default=[8])
    parser.add_argument("--cases", nargs="+", help="only these cases")
    parser.add_argument("--peer", type=Path, help="a checkout of cds-hooks/sandbox-cds-services with its "
                                                  "dependencies installed (see the README)")
    parser.add_argument("--compare", type=Path, help="another checkout of this repository, measured as a side "
                                                     "of its own (service-at-REF) under the same command")
    parser.add_argument("--soak", type=int, default=0, help="soak mode: seconds (at most 600) at 8 connections")
    parser.add_argument("--grow", type=int, default=0, help="first record this many listed-order calls in the "
                                                           "service's store (and the compared side's)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="folder for the JSON figures")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    if args.peer and not (args.peer / "server.js").exists():
        sys.exit(f"{args.peer} is not a checkout of cds-hooks/sandbox-cds-services (no server.js)")

    with tempfile.TemporaryDirectory() as tmp_dir, contextlib.ExitStack() as running:
        tmp = Path(tmp_dir)
        fhir = FhirTestServer()
        running.callback(fhir.close)
        fhir.coverages = [coverage("bench-cov")]
        env = {"CDS_DATABASE_URL": f"sqlite:///{tmp / 'bench.sqlite3'}", "CDS_FHIR_SERVERS": fhir.base,
               "CDS_FHIR_ALLOW_HTTP": "true", "CDS_TRUSTED_ISSUERS": "", "CDS_ALLOW_UNAUTHENTICATED": "false",
               "CDS_WORKERS": WORKERS}

        def start(command: list[str], extra: dict[str, str], **kw: Any) -> Server:
            server = Server(command, {**env, **extra}, **kw)
            running.callback(server.stop)
            return server

        # Cold start on a new database (creates the schema), then the server measured, on the existing one.
        first = Server(gunicorn("cds_service.wsgi:app", *PRODUCTION), env)
        first.stop()
        if args.grow:
            listed = next(c for c in cases(fhir.base) if c.name == "sign-1-listed")
            # the compared side starts on a copy of the same store (both checkouts at one schema revision)
            grow_store(tmp / "bench.sqlite3", args.grow, listed, env,
                       copies=[tmp / "bench-compare.sqlite3"] if args.compare else [])
        service = start(gunicorn("cds_service.wsgi:app", *PRODUCTION), {})
        cold = {"service_new_database": first.cold_start, "service": service.cold_start}
        every = [c for c in cases(fhir.base) if not args.cases or c.name in args.cases]

        if args.soak:
            soak(service, next(c for c in every if c.name == "sign-1-listed"), tmp, min(args.soak, 600))
            return

        # The ceiling answers with the service's own response bytes for each case.
        bodies = {}
        for case in [c for c in cases(fhir.base) if c.name == "discovery"] + every:
            body = case.body and {**case.body, "hookInstance": str(uuid.uuid4())}
            resp = requests.request(case.method, service.base + case.path, json=body, timeout=10)
            resp.raise_for_status()
            bodies[case.name] = resp.text
        (tmp / "bodies.json").write_text(json.dumps(bodies))
        replay = {"CEILING_BODIES": str(tmp / "bodies.json"), "PYTHONPATH": str(ROOT)}
        ceilings = {name: start(gunicorn("bench.ceiling:app", *options), replay) for name, options in CEILINGS.items()}
        same_config = start(gunicorn("bench.ceiling:app", *PRODUCTION), replay)
        cold["ceiling"] = min(c.cold_start for c in ceilings.values())
        compared = None
        if args.compare:
            checkout = args.compare.resolve()
            side_env = {"PYTHONPATH": str(checkout), "CDS_DATABASE_URL": f"sqlite:///{tmp / 'bench-compare.sqlite3'}"}
            if not package_location(checkout, {**os.environ, **env, **side_env}).is_relative_to(checkout):
                sys.exit(f"the service started from {checkout} would not run that checkout's code")
            compared = Side(f"service-at-{_commit(checkout)}",
                            start(gunicorn("cds_service.wsgi:app", *PRODUCTION), side_env, cwd=checkout))
            cold[compared.name] = compared.server.cold_start
        secured = peer = None
        if any(c.jwt for c in every):
            issuers = tmp / "issuers.json"
            public = [{**ECAlgorithm.to_jwk(EC_KEY.public_key(), as_dict=True), "kid": "ES384", "use": "sig"},
                      {**RSAAlgorithm.to_jwk(RSA_KEY.public_key(), as_dict=True), "kid": "RS384", "use": "sig"}]
            issuers.write_text(json.dumps({"issuers": [{"iss": ISSUER, "jwks": {"keys": public},
                                                         "fhir_servers": []}]}))
            secured = start(gunicorn("cds_service.wsgi:app", *PRODUCTION),
                            {"CDS_TRUSTED_ISSUERS": str(issuers), "CDS_ALLOW_UNAUTHENTICATED": "false",
                             "CDS_DATABASE_URL": f"sqlite:///{tmp / 'bench-jwt.sqlite3'}"})
        if args.peer:
            peer = start(["node", "server.js"], {}, cwd=args.peer.resolve())
            cold["peer"] = peer.cold_start

        rows = []
        for case in every:
            sides = [Side("service", service), *(Side(n, c) for n, c in ceilings.items()),
                     Side("ceiling-same-config", same_config)]
            if compared and not case.jwt:
                sides.append(compared)
            if case.jwt:
                sides[0] = Side("service-jwt", secured)  # type: ignore[arg-type]
                sides.append(Side("service", service))
            if peer and case.name == "sign-1-listed":
                sides.append(Side("peer", peer, json.dumps(peer_request()).encode(), "/cds-services/pama-imaging"))
            for connections in args.connections:
                rows.append(measure(case, sides, connections, args, tmp))
        report(rows, cold, args)


def report(rows: list[Row], cold: dict[str, float], args: argparse.Namespace) -> None:
    header = (f"{'case':18} {'conn':>4} {'side':20} {'rps':>7} {'share':>6} {'p50':>8} {'p99':>8} "
              f"{'cpu/req':>9} {'non-2xx':>7}")
    print(header)
    print("-" * len(header))
    for row in rows:
        for name, s in row.sides.items():
            print(f"{row.case:18} {row.connections:>4} {name:20} {s['rps']:>7.0f} {s['share_of_ceiling']:>6.2f} "
                  f"{s['p50_ms']:>6.2f}ms {s['p99_ms']:>6.2f}ms {s['cpu_ms_per_request']:>7.3f}ms "
                  f"{s['non_2xx'] + s['socket_errors']:>7.0f}")
    for row in rows:
        if "share_of_service" in row.sides.get("service-jwt", {}):
            print(f"{row.case} @ {row.connections}: authenticated / unauthenticated requests/s (median of rounds): "
                  f"{row.sides['service-jwt']['share_of_service']:.2f}")
    print("cold start (process start -> first discovery answer): " +
          ", ".join(f"{k} {v:.2f} s" for k, v in cold.items()))
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"bench-{stamp}.json"
    path.write_text(json.dumps({
        "when": stamp, "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "commit": _commit(), "settings": {k: str(v) for k, v in vars(args).items()},
        "cold_start_s": cold, "results": [row.__dict__ for row in rows]}, indent=2))
    print(f"figures written to {path}")


def package_location(checkout: Path, env: dict[str, str]) -> Path:
    """Where a server started in ``checkout`` imports cds_service from. ``python -m`` puts the working
    directory first on the path, before PYTHONPATH: a compared side started from this checkout's
    directory ran this checkout's code, whatever PYTHONPATH said."""
    out = subprocess.run([sys.executable, "-c", "import cds_service; print(cds_service.__file__)"], cwd=checkout,
                         env=env, capture_output=True, text=True, check=True, timeout=60)
    return Path(out.stdout.strip()).resolve()


def _commit(checkout: Path = ROOT) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=checkout, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


GROW = """
import json, sys, uuid
from cds_service import create_app
database, calls, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
body = json.loads(sys.stdin.read())
client = create_app({"DATABASE_URL": f"sqlite:///{database}"}).test_client()
for _ in range(calls):
    answer = client.post(path, json={**body, "hookInstance": str(uuid.uuid4())})
    assert answer.status_code == 200, answer.data[:500]
"""


def grow_store(database: Path, calls: int, case: Case, env: dict[str, str], copies: list[Path]) -> None:
    """``calls`` calls of ``case``, each its own hookInstance, recorded through the service's own pipeline (in
    a process of its own) into ``database``; the log then copied into the file, and the file to ``copies``.
    A year of a busy EHR's order-sign calls is ~10^5-10^6."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", GROW, str(database), str(calls), case.path], input=json.dumps(case.body),
                   text=True, env={**os.environ, **env}, cwd=ROOT, check=True, timeout=3600, capture_output=True)
    with contextlib.closing(sqlite3.connect(database)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for copy in copies:
        shutil.copyfile(database, copy)
    print(f"  store grown by {calls} calls ({database.stat().st_size / 2**20:.0f} MB) in "
          f"{time.perf_counter() - started:.0f} s", file=sys.stderr)


def soak(service: Server, case: Case, tmp: Path, seconds: int) -> None:
    """RSS of the production server before and after ``seconds`` of load (after a warm-up)."""
    body = tmp / "soak.json"
    body.write_text(json.dumps(case.body))
    wrk(service.base, case.path, case.method, body, None, 8, 20, tmp / "w.lua")
    start = service.rss_kib()
    samples = [start]
    stats: dict[str, float] = {}
    for _ in range(max(1, seconds // 60)):  # one RSS sample a minute
        stats = wrk(service.base, case.path, case.method, body, None, 8, min(60, seconds), tmp / "s.lua")
        samples.append(service.rss_kib())
    end = samples[-1]
    print(json.dumps({"seconds": seconds, "rss_kib_per_minute": samples, "growth_pct": 100.0 * (end - start) / start,
                      "last_minute_rps": stats["rps"], "last_minute_p99_ms": stats["p99_ms"]}, indent=2))


if __name__ == "__main__":
    main()
