"""HTTP adapter for CDS Hooks: discovery, hook calls, feedback, assertion lookup."""

from __future__ import annotations

from typing import Any

import orjson
from flask import Blueprint, Response, current_app, request

from cds_service.intake import RequestError
from cds_service.pipeline import Engine
from cds_service.services import discovery
from cds_service.web.errors import operation_outcome

bp = Blueprint("cds_hooks", __name__)


def _engine() -> Engine:
    engine: Engine = current_app.extensions["cds_engine"]
    return engine


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


def _read_json() -> Any:
    if not request.is_json:
        raise RequestError("Send the body as JSON (Content-Type: application/json)", status=415)
    try:
        return orjson.loads(request.get_data(cache=False))
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"The body is not valid JSON: {exc}") from exc


@bp.errorhandler(RequestError)
def _bad_request(exc: RequestError) -> Response:
    return operation_outcome(exc.status, exc.message, exc.expression)


@bp.get("/cds-services")
def list_services() -> Response:
    return _json(discovery(_engine().services))


@bp.post("/cds-services/<service_id>")
def call_service(service_id: str) -> Response:
    engine = _engine()
    if service_id not in engine.services:
        return operation_outcome(404, f"No CDS service with id '{service_id}'")
    return _json(engine.handle_hook(service_id, _read_json()))


@bp.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str) -> Response:
    engine = _engine()
    if service_id not in engine.services:
        return operation_outcome(404, f"No CDS service with id '{service_id}'")
    stored = engine.handle_feedback(service_id, _read_json())
    return _json({"stored": stored})


@bp.get("/coverage-assertions/<assertion_id>")
def coverage_assertion(assertion_id: str) -> Response:
    row = _engine().store.assertion(assertion_id)
    if row is None:
        return operation_outcome(404, f"No coverage assertion with id '{assertion_id}'")
    return _json({str(k): (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()})
