"""Hook calls (POST /cds-services/{id}) answered without Flask: the service's hot path.

Flask's request context, URL routing and request hooks cost a hook call ~0.27 ms of CPU in the
production server, a sixth of the whole call (bench/run.py at 8 connections, 3 alternating rounds, before
and after: one listed order 1,062 -> 1,244 requests/s and 1.55 -> 1.28 ms of server CPU per call; an
unrelated order 1,867 -> 2,251 and 0.86 -> 0.71 ms). ``HookCalls`` answers the calls
that need none of it; everything else goes on to Flask: other endpoints and methods, and calls from
browsers (an Origin header), which need flask-cors' headers. Both paths answer through ``answer``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from werkzeug.sansio.utils import get_current_url
from werkzeug.wsgi import get_host

from cds_service import fhir_json
from cds_service.auth import AuthError
from cds_service.intake import RequestError
from cds_service.observability import hook_instance, observe_request
from cds_service.pipeline import Pipeline
from cds_service.web.body_reader import BODY
from cds_service.web.wire import FHIR_JSON, auth_failure, outcome, parse_json_body

StartResponse = Callable[..., Any]
Headers = list[tuple[str, str]]
PREFIX = "/cds-services/"
ENDPOINT = "call_service"  # the metrics label, as Flask names the view that serves the same calls

errors_log = logging.getLogger("cds_service.web.responses")


def answer(pipeline: Pipeline, service_id: str, *, authorization: str | None, audience: str, host_url: str,
           content_type: str | None, read_body: Callable[[], bytes]) -> tuple[int, bytes, Headers]:
    """One hook call: status, body and headers. The client token is checked before anything is read and
    spent on every way out (the jti is written with the call's record, or on its own). Errors the
    caller can act on are answered here; anything else propagates (the adapter answers 500)."""
    try:
        client = pipeline.verifier.verify(authorization, audience, True) if pipeline.verifier else None
        if service_id not in pipeline.services:
            pipeline.check_replay(client)  # spent, even on a wrong address
            return 404, outcome(404, f"No CDS service with id '{service_id}'"), FHIR_JSON
        try:
            body = parse_json_body(content_type, read_body)
        except Exception:  # a 400, 413 or 415: the token is spent even on a body that cannot be read
            pipeline.check_replay(client)
            raise
        return 200, fhir_json.dumps(pipeline.handle_hook(service_id, body, client, host_url)), _JSON
    except RequestError as exc:
        return exc.status, outcome(exc.status, exc.message, exc.expression), FHIR_JSON
    except AuthError as exc:
        return auth_failure(exc)


_STATUS_LINES = {s.value: f"{s.value} {s.phrase}" for s in HTTPStatus}
_JSON = [("Content-Type", "application/json")]


class HookCalls:
    """WSGI middleware: answers hook calls from servers itself, passes every other request to ``app``."""

    def __init__(self, app: Callable[..., Iterable[bytes]], pipeline: Pipeline, public_base_url: str) -> None:
        self.app = app
        self.pipeline = pipeline
        self.public_base_url = public_base_url.rstrip("/")

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if (environ.get("REQUEST_METHOD") != "POST" or not path.startswith(PREFIX) or "HTTP_ORIGIN" in environ
                or BODY not in environ):
            return self.app(environ, start_response)
        # WSGI carries the path as latin-1; Flask routes on its UTF-8 reading, so the same ids match here
        path = path.encode("latin-1").decode("utf-8", "replace")
        service_id = path[len(PREFIX):]
        if not service_id or "/" in service_id:
            return self.app(environ, start_response)
        started = time.perf_counter()
        hook_instance.set(None)
        host_url = get_current_url(environ["wsgi.url_scheme"], get_host(environ))
        try:
            status, body, headers = answer(
                self.pipeline, service_id, authorization=environ.get("HTTP_AUTHORIZATION"),
                audience=(self.public_base_url or host_url.rstrip("/")) + path, host_url=host_url,
                content_type=environ.get("CONTENT_TYPE"), read_body=lambda: environ[BODY])
        except Exception:
            errors_log.exception("unhandled error")
            status, body, headers = 500, outcome(500, "Internal error; it has been logged"), FHIR_JSON
        start_response(_STATUS_LINES.get(status, f"{status} Error"), [*headers, ("Content-Length", str(len(body)))])
        service = service_id if service_id in self.pipeline.services else "unknown"  # as Flask's _observe
        observe_request(ENDPOINT, "POST", path, service, status, time.perf_counter() - started)
        return [body]
