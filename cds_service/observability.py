"""Metrics (Prometheus) and structured JSON logs, with the hookInstance on every line of a hook call."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

hook_instance: ContextVar[str | None] = ContextVar("hook_instance", default=None)

REQUESTS = Counter("cds_requests_total", "HTTP requests by endpoint and status", ["endpoint", "service", "status"])
LATENCY = Histogram("cds_request_seconds", "Request latency by endpoint and service", ["endpoint", "service"],
                    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
DECISIONS = Counter("cds_decisions_total", "Order decisions by outcome", ["outcome"])
FHIR_FETCH_ERRORS = Counter("cds_fhir_fetch_errors_total", "Failed FHIR fetches by reason", ["reason"])
AUTH_FAILURES = Counter("cds_auth_failures_total", "Rejected client tokens")


@functools.cache  # label values are bounded: endpoint names, known service ids, status codes
def request_series(endpoint: str, service: str, status: str) -> tuple[Any, Any]:
    """The request counter and latency histogram of one label set: ``labels()`` checks and locks on every
    call, a lookup here is a dict hit."""
    return REQUESTS.labels(endpoint, service, status), LATENCY.labels(endpoint, service)


_requests_log = logging.getLogger("cds_service.requests")


def observe_request(endpoint: str, method: str, path: str, service: str, status: int, elapsed: float,
                    log_line: bool = True) -> None:
    """One metrics sample per request and, unless ``log_line`` is False, its JSON log line (which carries
    the hookInstance when known). ``service`` must be a known id, "unknown" or "": labels make series."""
    requests, latency = request_series(endpoint, service, str(status))
    requests.inc()
    latency.observe(elapsed)
    if log_line:
        _requests_log.info("%s %s %s", method, path, status,
                           extra={"service": service, "status": status, "latency_ms": round(elapsed * 1000, 2)})


@functools.cache  # one per reason code of the knowledge
def decision_counter(outcome: str) -> Any:
    return DECISIONS.labels(outcome)


def metrics_payload() -> tuple[bytes, str]:
    """The exposition text; aggregated over gunicorn workers when PROMETHEUS_MULTIPROC_DIR is set."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


class HookInstanceFilter(logging.Filter):
    """Stamps each record with the hookInstance of the call being handled in this thread."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "hookInstance"):
            record.hookInstance = hook_instance.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        instance = getattr(record, "hookInstance", None)
        if instance:
            entry["hookInstance"] = instance
        for key in ("service", "status", "latency_ms", "outcome", "reader", "remote", "bytes"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(entry, default=str).decode()
        except TypeError:  # a string orjson refuses (a lone surrogate from a client): write it escaped
            return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO") -> None:
    # A record then skips what no line of ours shows: the caller's file and line (a walk up the stack),
    # thread and process names (the logging HOWTO's "Optimization"): a hook call's line 81-83 -> 66-68 us.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(HookInstanceFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # our own request line replaces its access log
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # a line per plugin at every start
