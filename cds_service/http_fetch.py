"""Outbound HTTP GETs that cannot hold the service past a deadline, whatever the server does.

libcurl (pycurl) enforces one timeout for the whole transfer (connect, headers and body: a server
that hangs, trickles a byte at a time or lies about its Content-Length costs at most the time
left), caps the body size, and follows no redirects. Used for the EHR's FHIR server and for
client key sets (JWKS); both wrap the errors in their own vocabulary.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from urllib.parse import urlencode

import certifi
import pycurl

from cds_service.compute_gate import GATE

MAX_BODY = 5 * 1024 * 1024


class HttpFailure(Exception):
    """The GET did not produce a complete answer; ``reason`` is a short label for metrics."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    body: bytes


_REASONS = {
    pycurl.E_OPERATION_TIMEDOUT: ("timed out", "timeout"),
    pycurl.E_COULDNT_CONNECT: ("connection refused", "connection"),
    pycurl.E_COULDNT_RESOLVE_HOST: ("host not found", "connection"),
    pycurl.E_WRITE_ERROR: ("answer too large", "too-large"),
    pycurl.E_FILESIZE_EXCEEDED: ("answer too large", "too-large"),
    pycurl.E_PARTIAL_FILE: ("answer shorter than its Content-Length", "invalid"),
    pycurl.E_RECV_ERROR: ("connection broken while reading", "connection"),
    pycurl.E_GOT_NOTHING: ("empty reply", "connection"),
    pycurl.E_UNSUPPORTED_PROTOCOL: ("not an http(s) URL", "invalid"),
    pycurl.E_URL_MALFORMAT: ("malformed URL", "invalid"),
}


def get(url: str, deadline: float, *, params: dict[str, str] | None = None, headers: dict[str, str] | None = None,
        connect_timeout: float = 1.0, max_bytes: int = MAX_BODY) -> HttpAnswer:
    """GET ``url`` (http or https only), finished by ``deadline`` (time.monotonic()) or failed."""
    remaining = deadline - time.monotonic()
    if remaining <= 0.05:
        raise HttpFailure("time budget exhausted", "budget")
    if params:
        url = f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"
    body = io.BytesIO()

    def write(chunk: bytes) -> int | None:
        if body.tell() + len(chunk) > max_bytes:
            return 0  # tells libcurl to abort the transfer (E_WRITE_ERROR)
        body.write(chunk)
        return None

    curl = pycurl.Curl()
    try:
        curl.setopt(pycurl.URL, url)
        curl.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        curl.setopt(pycurl.FOLLOWLOCATION, False)
        curl.setopt(pycurl.NOSIGNAL, True)  # timeouts without signals: safe in threads
        curl.setopt(pycurl.TIMEOUT_MS, max(1, int(remaining * 1000)))
        curl.setopt(pycurl.CONNECTTIMEOUT_MS, max(1, int(min(connect_timeout, remaining) * 1000)))
        curl.setopt(pycurl.MAXFILESIZE, max_bytes)
        curl.setopt(pycurl.CAINFO, certifi.where())
        curl.setopt(pycurl.HTTPHEADER, [f"{k}: {v}" for k, v in (headers or {}).items()])
        curl.setopt(pycurl.WRITEFUNCTION, write)
        try:
            with GATE.waiting():  # other requests compute while this one waits on the network
                curl.perform()
        except pycurl.error as exc:
            code = exc.args[0] if exc.args else -1
            message, reason = _REASONS.get(code, (f"request failed (curl error {code})", "connection"))
            raise HttpFailure(message, reason) from exc
        return HttpAnswer(int(curl.getinfo(pycurl.RESPONSE_CODE)), body.getvalue())
    finally:
        curl.close()
