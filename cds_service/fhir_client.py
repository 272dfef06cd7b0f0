"""FHIR client adapter: fetch what prefetch did not bring, within a time budget, never raising past it.

Only the active Coverage is fetched: the decision reads nothing from the Patient resource, so
fetching it would cost time and move demographics for nothing.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
import requests

log = logging.getLogger(__name__)
MAX_BODY = 5 * 1024 * 1024


class FetchError(Exception):
    """The FHIR server could not give us the data; ``reason`` is a short label for metrics."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class FhirClient:
    def __init__(self, connect_timeout: float = 1.0, read_timeout: float = 2.0) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.session = requests.Session()

    def search(self, base: str, path: str, params: dict[str, str], token: str | None, deadline: float) -> list[Any]:
        """Resources of a search's first page. One retry on connection errors and 5xx; stops at ``deadline``."""
        # identity: the body is read raw (see _get), so it must not arrive compressed
        headers = {"Accept": "application/fhir+json", "Accept-Encoding": "identity"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        url = f"{base.rstrip('/')}/{path}"
        for attempt in (1, 2):
            remaining = deadline - time.monotonic()
            if remaining <= 0.05:
                raise FetchError("time budget exhausted", "budget")
            try:
                body = self._get(url, params, headers, remaining, deadline)
            except _Retryable as exc:
                if attempt == 2:
                    raise FetchError(str(exc), exc.reason) from exc
                log.info("retrying FHIR search after: %s", exc)
                continue
            if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
                raise FetchError("answer is not a FHIR Bundle", "invalid")
            entries = body.get("entry", [])
            if not isinstance(entries, list):
                raise FetchError("Bundle.entry is not a list", "invalid")
            return [e["resource"] for e in entries if isinstance(e, dict) and isinstance(e.get("resource"), dict)]
        raise FetchError("unreachable", "bug")  # pragma: no cover

    def _get(self, url: str, params: dict[str, str], headers: dict[str, str], remaining: float,
             deadline: float) -> Any:
        timeout = (min(self.connect_timeout, remaining), min(self.read_timeout, remaining))
        try:
            with self.session.get(url, params=params, headers=headers, timeout=timeout, stream=True,
                                  allow_redirects=False) as resp:
                if resp.status_code >= 500:
                    raise _Retryable(f"server error {resp.status_code}", "status")
                if resp.status_code != 200:
                    raise FetchError(f"answered {resp.status_code}", "status")
                # read1 returns whatever one socket read gives, so a server that drips bytes
                # cannot hold us past the deadline (iter_content would wait for full chunks).
                chunks, size = [], 0
                while chunk := resp.raw.read1(65536):
                    size += len(chunk)
                    if size > MAX_BODY:
                        raise FetchError("answer too large", "too-large")
                    if time.monotonic() > deadline:
                        raise FetchError("time budget exhausted while reading", "budget")
                    chunks.append(chunk)
        except (requests.ConnectionError, requests.exceptions.ConnectTimeout) as exc:
            raise _Retryable(f"connection failed ({exc.__class__.__name__})", "connection") from exc
        except requests.Timeout as exc:
            raise FetchError("timed out", "timeout") from exc
        except requests.RequestException as exc:
            raise FetchError(f"request failed ({exc.__class__.__name__})", "connection") from exc
        try:
            return orjson.loads(b"".join(chunks))
        except orjson.JSONDecodeError as exc:
            raise FetchError("answer is not JSON", "invalid") from exc


class _Retryable(Exception):
    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason
