"""HTTP adapter for CDS Hooks: discovery, hook calls, feedback, assertion lookup."""

from __future__ import annotations

import time
from typing import Any

import orjson
from flask import Blueprint, Response, current_app, g, request

from cds_service.observability import hook_instance, observe_request
from cds_service.services import discovery
from cds_service.web.body_reader import BODY
from cds_service.web.hook_calls import answer
from cds_service.web.responses import audience, authenticated_client, current_pipeline, json_response, operation_outcome
from cds_service.web.wire import parse_json_body

bp = Blueprint("cds_hooks", __name__)


def _read_json() -> Any:
    return parse_json_body(request.content_type, _raw_body)


@bp.before_request
def _start_clock() -> None:
    g.started = time.perf_counter()
    hook_instance.set(None)


@bp.after_request
def _observe(response: Response) -> Response:
    """One metrics sample per request, and a JSON log line carrying the hookInstance when known.

    A successful discovery gets no line of its own: it is the same for every caller, the line was a
    third of its cost (~30 of 106 us in-process), and gunicorn's access log records it when turned on
    (CDS_ACCESS_LOG=true)."""
    endpoint = (request.endpoint or "unknown").rsplit(".", 1)[-1]
    service = (request.view_args or {}).get("service_id", "")
    if service and service not in current_pipeline().services:
        service = "unknown"  # label values only from known ids: a made-up id must not create a series
    elapsed = time.perf_counter() - g.get("started", time.perf_counter())
    observe_request(endpoint, request.method, request.path, service, response.status_code, elapsed,
                    log_line=not (endpoint == "list_services" and response.status_code < 400))
    return response


@bp.get("/cds-services")
def list_services() -> Response:
    body = current_app.extensions.get("cds_discovery")
    if body is None:  # the services do not change while the app runs: serialise them once
        body = current_app.extensions["cds_discovery"] = orjson.dumps(discovery(current_pipeline().services))
    return Response(body, mimetype="application/json")


@bp.post("/cds-services/<service_id>")
def call_service(service_id: str) -> Response:
    """The calls from browsers (HookCalls answers the others before Flask sees them), for CORS's headers."""
    engine = current_pipeline()
    status, body, headers = answer(engine, service_id, authorization=request.headers.get("Authorization"),
                                   audience=audience(), host_url=request.host_url,
                                   content_type=request.content_type, read_body=_raw_body)
    return Response(body, status=status, headers=headers)


def _raw_body() -> bytes:
    data = request.environ.get(BODY)
    return request.get_data(cache=False) if data is None else data  # None: over the limit, Flask's 413


@bp.post("/playground/evaluate/<service_id>")
def playground_evaluate(service_id: str) -> Response:
    """The playground's try-out of a hook: the same pipeline and authentication, nothing recorded (the
    decision records hold what EHRs were told, not what someone tried in a browser)."""
    engine = current_pipeline()
    client = authenticated_client()
    if service_id not in engine.services:
        return operation_outcome(404, f"No CDS service with id '{service_id}'")
    return json_response(engine.handle_hook(service_id, _read_json(), client, request.host_url, record=False))


@bp.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str) -> Response:
    engine = current_pipeline()
    client = authenticated_client()
    if service_id not in engine.services:
        return operation_outcome(404, f"No CDS service with id '{service_id}'")
    stored = engine.handle_feedback(service_id, _read_json(), client)
    return json_response({"stored": stored})


@bp.get("/coverage-assertions/<assertion_id>")
def coverage_assertion(assertion_id: str) -> Response:
    client = authenticated_client()
    well_formed = len(assertion_id) <= 64 and assertion_id.isprintable()  # what the store can hold
    row = current_pipeline().store.assertion(assertion_id) if well_formed else None
    if row is not None and client is not None and row["client_iss"] != client.iss:
        row = None  # with trusted issuers, each client sees only the assertions its own calls caused
    if row is None:
        return operation_outcome(404, f"No coverage assertion with id '{assertion_id[:64]}'")
    return json_response({str(k): (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()})
