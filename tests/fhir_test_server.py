"""A small FHIR server over real HTTP for tests: serves Coverage searches (and can be made slow,
down, unauthorised, failing or garbled), stores PUT resources and applies transaction Bundles
all-or-nothing (artifact publishing), and serves fixed JSON documents at given paths (e.g. a JWKS for a jku)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the default 5 drops connections under the benchmark's load (1 s SYN retries)


class FhirTestServer:
    def __init__(self, documents: dict[str, Any] | None = None, reject_put: str | None = None) -> None:
        self.mode = "ok"  # ok | slow | 401 | 500 | 500-once | garbage | not-bundle | drip
        self.coverages: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str | None]] = []  # (path, Authorization header)
        self.delay = 5.0
        self.documents = documents or {}  # path -> JSON served as is
        self.resources: dict[str, Any] = {}  # "Type/id" -> resource stored by PUT
        self.reject_put = reject_put  # PUTs whose "Type/id" contains this answer 422
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body must not wait on delayed ACKs
            wbufsize = 1 << 16  # one write per response (flushed by the base class)

            def do_GET(self) -> None:
                owner.requests.append((self.path, self.headers.get("Authorization")))
                if self.path in owner.documents:
                    return self._send(200, json.dumps(owner.documents[self.path]).encode())
                mode = owner.mode
                if mode == "500-once":
                    owner.mode = "ok"
                    return self._send(503, b'{"resourceType": "OperationOutcome"}')
                if mode == "slow":
                    time.sleep(owner.delay)
                if mode == "401":
                    return self._send(401, b'{"resourceType": "OperationOutcome"}')
                if mode == "500":
                    return self._send(500, b"internal error")
                if mode == "garbage":
                    return self._send(200, b"<html>definitely not FHIR")
                if mode == "not-bundle":
                    return self._send(200, b'{"resourceType": "Patient", "id": "p1"}')
                if mode == "drip":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/fhir+json")
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    for _ in range(1000):
                        try:
                            self.wfile.write(b" ")
                            self.wfile.flush()
                        except OSError:
                            return
                        time.sleep(0.05)
                    return
                found = owner.coverages
                if "/ServiceRequest?" in self.path:  # ServiceRequest?_id=a,b: the stored orders with those ids
                    ids = parse_qs(urlsplit(self.path).query).get("_id", [""])[0].split(",")
                    found = [owner.resources[ref] for ref in (f"ServiceRequest/{i}" for i in ids)
                             if ref in owner.resources]
                bundle = {"resourceType": "Bundle", "type": "searchset",
                          "entry": [{"resource": c} for c in found]}
                return self._send(200, json.dumps(bundle).encode())

            def do_PUT(self) -> None:
                ref = "/".join(self.path.strip("/").split("/")[-2:])
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if owner.reject_put and owner.reject_put in ref:
                    return self._send(422, json.dumps({"resourceType": "OperationOutcome", "issue": [
                        {"severity": "error", "code": "invalid", "diagnostics": "rejected by test"}]}).encode())
                status = 200 if ref in owner.resources else 201
                owner.resources[ref] = body
                return self._send(status, json.dumps(body).encode())

            def do_POST(self) -> None:  # a transaction Bundle at the base: all entries applied, or none
                bundle = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append((self.path, self.headers.get("Authorization")))
                if bundle.get("type") != "transaction":
                    return self._send(400, b'{"resourceType": "OperationOutcome"}')
                refs = [e["request"]["url"] for e in bundle["entry"]]
                rejected = [r for r in refs if owner.reject_put and owner.reject_put in r]
                if rejected:
                    return self._send(422, json.dumps({"resourceType": "OperationOutcome", "issue": [
                        {"severity": "error", "code": "invalid", "diagnostics": f"{rejected[0]} rejected by test"}]
                    }).encode())
                statuses = ["200 OK" if ref in owner.resources else "201 Created" for ref in refs]
                for ref, entry in zip(refs, bundle["entry"], strict=True):
                    owner.resources[ref] = entry["resource"]
                answer = {"resourceType": "Bundle", "type": "transaction-response",
                          "entry": [{"response": {"status": st, "location": ref}} for st, ref in zip(statuses, refs,
                                                                                                   strict=True)]}
                return self._send(200, json.dumps(answer).encode())

            def _send(self, status: int, body: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/fhir+json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_port}/fhir"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
