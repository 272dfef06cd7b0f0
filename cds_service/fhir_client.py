"""FHIR client adapter: searches the EHR's FHIR server for what prefetch did not bring, within the
call's time budget whatever the server does (http_fetch), never raising past its edge.

A server that hangs costs its own callers only: at most ``max_in_flight`` searches per server are
under way at once in a process; a further one fails at once ("busy") instead of holding a thread.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import orjson

from cds_service import http_fetch
from cds_service.json_limits import json_problem, may_have_problem

log = logging.getLogger(__name__)


class FetchError(Exception):
    """The FHIR server could not give us the data; ``reason`` is a short label for metrics."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class FhirClient:
    def __init__(self, connect_timeout: float = 1.0, max_in_flight: int = 4) -> None:
        self.connect_timeout = connect_timeout
        self.max_in_flight = max_in_flight
        self._gates: dict[str, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()

    def search(self, base: str, path: str, params: dict[str, str], token: str | None, deadline: float) -> list[Any]:
        """Resources of a search's first page. One retry on connection errors and 5xx; done by ``deadline``."""
        headers = {"Accept": "application/fhir+json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        gate = self._gate(base)
        if not gate.acquire(blocking=False):
            raise FetchError(f"{self.max_in_flight} searches on this server are already under way", "busy")
        try:
            for attempt in (1, 2):
                try:
                    answer = http_fetch.get(f"{base.rstrip('/')}/{path}", deadline, params=params, headers=headers,
                                            connect_timeout=self.connect_timeout)
                except http_fetch.HttpFailure as exc:
                    if attempt == 1 and exc.reason == "connection":
                        log.info("retrying FHIR search after: %s", exc)
                        continue
                    raise FetchError(str(exc), exc.reason) from exc
                if answer.status >= 500 and attempt == 1:
                    log.info("retrying FHIR search after server error %s", answer.status)
                    continue
                return _entries(answer)
            raise FetchError("no answer", "connection")  # pragma: no cover: the loop returns or raises
        finally:
            gate.release()

    def _gate(self, base: str) -> threading.BoundedSemaphore:
        key = base.rstrip("/")
        with self._lock:
            if key not in self._gates:
                self._gates[key] = threading.BoundedSemaphore(self.max_in_flight)
            return self._gates[key]


def _entries(answer: http_fetch.HttpAnswer) -> list[Any]:
    if answer.status >= 500:
        raise FetchError(f"server error {answer.status}", "status")
    if answer.status != 200:
        raise FetchError(f"answered {answer.status}", "status")
    try:
        body = orjson.loads(answer.body)
    except orjson.JSONDecodeError as exc:
        raise FetchError("answer is not JSON", "invalid") from exc
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        raise FetchError("answer is not a FHIR Bundle", "invalid")
    if may_have_problem(answer.body) and (problem := json_problem(body)) is not None:
        raise FetchError(f"answer unusable: {problem[0]}", "invalid")
    entries = body.get("entry", [])
    if not isinstance(entries, list):
        raise FetchError("Bundle.entry is not a list", "invalid")
    return [e["resource"] for e in entries if isinstance(e, dict) and isinstance(e.get("resource"), dict)]
