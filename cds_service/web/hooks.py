"""HTTP adapter for CDS Hooks: discovery, hook calls, feedback, assertion lookup."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from flask import Blueprint, Response, current_app, g, request

from cds_service.auth import AuthError, Client
from cds_service.intake import RequestError
from cds_service.json_limits import json_problem
from cds_service.observability import AUTH_FAILURES, LATENCY, REQUESTS, hook_instance
from cds_service.services import discovery
from cds_service.web.responses import current_pipeline, json_response, operation_outcome

bp = Blueprint("cds_hooks", __name__)
log = logging.getLogger("cds_service.requests")


def _read_json() -> Any:
    if not request.is_json:
        raise RequestError("Send the body as JSON (Content-Type: application/json)", status=415)
    try:
        body = orjson.loads(request.get_data(cache=False))
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"The body is not valid JSON: {exc}") from exc
    if (problem := json_problem(body)) is not None:
        raise RequestError(*problem)
    return body


@bp.errorhandler(RequestError)
def _bad_request(exc: RequestError) -> Response:
    return operation_outcome(exc.status, exc.message, exc.expression)


@bp.errorhandler(AuthError)
def _unauthenticated(exc: AuthError) -> Response:
    AUTH_FAILURES.inc()
    resp = operation_outcome(401, str(exc))
    detail = str(exc).replace('"', "'")
    resp.headers["WWW-Authenticate"] = (f'Bearer realm="cds-services", error="invalid_token", '
                                        f'error_description="{detail}"')
    return resp


@bp.before_request
def _start_clock() -> None:
    g.started = time.perf_counter()
    hook_instance.set(None)


@bp.after_request
def _observe(response: Response) -> Response:
    """One metrics sample per request, and a JSON log line carrying the hookInstance when known.

    A successful discovery gets no line of its own: it is the same for every caller, the server's
    access log records it, and the line was a third of its cost (~30 of 106 us in-process)."""
    endpoint = (request.endpoint or "unknown").rsplit(".", 1)[-1]
    service = (request.view_args or {}).get("service_id", "")
    if service and service not in current_pipeline().services:
        service = "unknown"  # label values only from known ids: a made-up id must not create a series
    elapsed = time.perf_counter() - g.get("started", time.perf_counter())
    REQUESTS.labels(endpoint, service, str(response.status_code)).inc()
    LATENCY.labels(endpoint, service).observe(elapsed)
    if endpoint == "list_services" and response.status_code < 400:
        return response
    log.info("%s %s %s", request.method, request.path, response.status_code,
             extra={"service": service, "status": response.status_code, "latency_ms": round(elapsed * 1000, 2)})
    return response


def _authenticate() -> Client | None:
    """The calling client, when trusted issuers are configured; checked before anything is read."""
    verifier = current_pipeline().verifier
    if verifier is None:
        return None  # unauthenticated local development (see README)
    base = current_app.config["PUBLIC_BASE_URL"].rstrip("/") or request.host_url.rstrip("/")
    return verifier.verify(request.headers.get("Authorization"), base + request.path)


@bp.get("/cds-services")
def list_services() -> Response:
    body = current_app.extensions.get("cds_discovery")
    if body is None:  # the services do not change while the app runs: serialise them once
        body = current_app.extensions["cds_discovery"] = orjson.dumps(discovery(current_pipeline().services))
    return Response(body, mimetype="application/json")


@bp.post("/cds-services/<service_id>")
def call_service(service_id: str) -> Response:
    engine = current_pipeline()
    client = _authenticate()
    if service_id not in engine.services:
        return operation_outcome(404, f"No CDS service with id '{service_id}'")
    return json_response(engine.handle_hook(service_id, _read_json(), client, request.host_url))


@bp.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str) -> Response:
    engine = current_pipeline()
    client = _authenticate()
    if service_id not in engine.services:
        return operation_outcome(404, f"No CDS service with id '{service_id}'")
    stored = engine.handle_feedback(service_id, _read_json(), client)
    return json_response({"stored": stored})


@bp.get("/coverage-assertions/<assertion_id>")
def coverage_assertion(assertion_id: str) -> Response:
    client = _authenticate()
    well_formed = len(assertion_id) <= 64 and assertion_id.isprintable()  # what the store can hold
    row = current_pipeline().store.assertion(assertion_id) if well_formed else None
    if row is not None and client is not None and row["client_iss"] != client.iss:
        row = None  # with trusted issuers, each client sees only the assertions its own calls caused
    if row is None:
        return operation_outcome(404, f"No coverage assertion with id '{assertion_id[:64]}'")
    return json_response({str(k): (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()})
