"""Responses shared by the blueprints: JSON bodies, the engine of the running app, and errors.

Every error leaves as a FHIR OperationOutcome with the right status; never a stack trace."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException

from cds_service import fhir_json
from cds_service.auth import AuthError, Client
from cds_service.intake import RequestError
from cds_service.pipeline import Pipeline
from cds_service.web.wire import auth_failure, outcome

log = logging.getLogger(__name__)


def current_pipeline() -> Pipeline:
    pipeline: Pipeline = current_app.extensions["cds_pipeline"]
    return pipeline


def authenticated_client(defer_replay_check: bool = False) -> Client | None:
    """The calling client when trusted issuers are configured (its JWT checked before anything is
    read: aud must be this endpoint's URL), or None in unauthenticated local development. With
    ``defer_replay_check`` the token's jti is left to the hook pipeline, which keeps it with the call."""
    verifier = current_pipeline().verifier
    if verifier is None:
        return None
    return verifier.verify(request.headers.get("Authorization"), audience(), defer_replay_check)


def audience() -> str:
    """This endpoint's URL, which a client token's aud must name."""
    return (current_app.config["PUBLIC_BASE_URL"].rstrip("/") or request.host_url.rstrip("/")) + request.path


def json_response(body: Any, status: int = 200) -> Response:
    return Response(fhir_json.dumps(body), status=status, mimetype="application/json")


def operation_outcome(status: int, message: str, expression: str | None = None) -> Response:
    return Response(outcome(status, message, expression), status=status, mimetype="application/fhir+json")


def register(app: Flask) -> None:
    @app.errorhandler(RequestError)
    def _bad_request(exc: RequestError) -> Response:
        return operation_outcome(exc.status, exc.message, exc.expression)

    @app.errorhandler(AuthError)
    def _unauthenticated(exc: AuthError) -> Response:
        status, body, headers = auth_failure(exc)
        return Response(body, status=status, headers=headers)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        messages = {404: "No such endpoint", 405: "Method not allowed on this endpoint",
                    413: f"Request body larger than {app.config['MAX_CONTENT_LENGTH']} bytes"}
        code = exc.code or 500
        resp = operation_outcome(code, messages.get(code, exc.description or exc.name))
        if code == 405 and exc.get_response().headers.get("Allow"):
            resp.headers["Allow"] = exc.get_response().headers["Allow"]
        return resp

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return operation_outcome(500, "Internal error; it has been logged")
