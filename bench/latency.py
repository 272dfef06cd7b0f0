"""Median latency of one order-sign call over real HTTP, against a same-run baseline.

Not part of the test suite. Usage: .venv/bin/python bench/latency.py [--calls 2000]

Both servers are werkzeug's threaded server (what `serve` runs) on 127.0.0.1; the baseline
answers the same POST with a fixed, pre-serialised body of the same size, so the ratio shows
what the decision itself costs on top of the web stack.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import requests
from flask import Flask, Response
from werkzeug.serving import make_server

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cds_service import create_app  # noqa: E402


def serve(app: Flask) -> tuple[object, str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


def bodies(request: dict[str, object], count: int) -> list[bytes]:
    """The request, each time with its own hookInstance (the service answers a repeated one from its record)."""
    return [json.dumps({**request, "hookInstance": str(uuid.uuid4())}).encode() for _ in range(count)]


def measure(url: str, request: dict[str, object], calls: int) -> list[float]:
    session = requests.Session()
    headers = {"Content-Type": "application/json"}
    for body in bodies(request, 50):  # warm-up
        session.post(url, data=body, headers=headers)
    times = []
    for body in bodies(request, calls):
        start = time.perf_counter()
        resp = session.post(url, data=body, headers=headers)
        times.append((time.perf_counter() - start) * 1000)
        assert resp.status_code == 200
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    request = json.loads((ROOT / "examples" / "01-investigational-listed-code.json").read_bytes())

    with tempfile.TemporaryDirectory() as tmp:
        app = create_app({"DATABASE_URL": f"sqlite:///{tmp}/bench.sqlite3"})
        _server, base = serve(app)
        url = f"{base}/cds-services/liquid-biopsy-order-sign"
        sample = requests.post(url, data=bodies(request, 1)[0], headers={"Content-Type": "application/json"}).content

        baseline = Flask("baseline")

        @baseline.post("/cds-services/liquid-biopsy-order-sign")
        def fixed() -> Response:
            return Response(sample, mimetype="application/json")

        _baseline_server, bbase = serve(baseline)
        service = measure(url, request, args.calls)
        ceiling = measure(f"{bbase}/cds-services/liquid-biopsy-order-sign", request, args.calls)

    def row(name: str, t: list[float]) -> dict[str, Any]:
        q = statistics.quantiles(t, n=100)
        return {"name": name, "calls": len(t), "median_ms": statistics.median(t), "p99_ms": q[98]}

    rows = [row("order-sign (one listed order, prefetched coverage)", service), row("baseline (fixed body)", ceiling)]
    for r in rows:
        print(f"{r['name']:55} n={r['calls']:5}  median {r['median_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms")
    print(f"median ratio service/baseline: {rows[0]['median_ms'] / rows[1]['median_ms']:.2f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
