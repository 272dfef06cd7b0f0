"""The HTTP edge without Flask: reading a JSON body, writing an error as a FHIR OperationOutcome.

Shared by the Flask blueprints and the Flask-free hook-call path (``hook_calls``), so both read and
refuse bodies, and word their errors, the same way."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NoReturn

import orjson
from werkzeug.http import parse_options_header

from cds_service import fhir_json
from cds_service.auth import AuthError
from cds_service.fhir_json import read_integer, read_number
from cds_service.intake import RequestError
from cds_service.json_limits import json_problem, may_have_problem
from cds_service.observability import AUTH_FAILURES

FHIR_JSON = [("Content-Type", "application/fhir+json")]  # the headers of an OperationOutcome answer
ISSUE_CODE_BY_STATUS = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported",
                        408: "timeout", 412: "required", 413: "too-long", 415: "not-supported", 422: "processing",
                        503: "transient"}


def outcome(status: int, message: str, expression: str | None = None) -> bytes:
    """A FHIR OperationOutcome of one issue: how every error leaves the service."""
    issue: dict[str, Any] = {"severity": "error" if status < 500 else "fatal",
                             "code": ISSUE_CODE_BY_STATUS.get(status, "exception"), "diagnostics": message}
    if expression:
        issue["expression"] = [expression]
    return orjson.dumps({"resourceType": "OperationOutcome", "issue": [issue]})


def auth_failure(exc: AuthError) -> tuple[int, bytes, list[tuple[str, str]]]:
    """A refused client token: counted, and answered 401 with its WWW-Authenticate challenge."""
    AUTH_FAILURES.inc()
    detail = str(exc).replace('"', "'")
    challenge = f'Bearer realm="cds-services", error="invalid_token", error_description="{detail}"'
    return 401, outcome(401, str(exc)), [*FHIR_JSON, ("WWW-Authenticate", challenge)]


def is_json(content_type: str | None) -> bool:
    """As Flask's ``request.is_json``: application/json or application/*+json, parameters aside."""
    mimetype = parse_options_header(content_type)[0].lower()
    return mimetype == "application/json" or (mimetype.startswith("application/") and mimetype.endswith("+json"))


def parse_json_body(content_type: str | None, read: Callable[[], bytes]) -> Any:
    """The request body as JSON, or a RequestError: 415 not JSON (the body left unread), 400 unreadable or
    beyond the limits."""
    if not is_json(content_type):
        raise RequestError("Send the body as JSON (Content-Type: application/json)", status=415)
    data = read()
    try:
        body = fhir_json.loads(data)
    except orjson.JSONDecodeError as exc:
        body = _beyond_double(data, exc)
    if may_have_problem(data) and (problem := json_problem(body)) is not None:
        raise RequestError(*problem)
    return body


def _beyond_double(data: bytes, exc: orjson.JSONDecodeError) -> Any:
    """JSON whose only fault for orjson is a number beyond a double (1e400): valid JSON, read with the
    standard library, such numbers kept as infinities (as floats, so the body can be hashed)."""
    if "infinity" not in str(exc):
        raise RequestError(f"The body is not valid JSON: {exc}") from exc

    def no_constants(name: str) -> NoReturn:
        raise RequestError(f"The body is not valid JSON: {name} is not a JSON number")

    try:
        body = json.loads(data, parse_int=read_integer, parse_float=read_number, parse_constant=no_constants)
    except ValueError as err:
        raise RequestError(f"The body is not valid JSON: {err}") from err
    try:  # the json module accepts a lone surrogate (\ud800), which is no text: orjson, as everywhere else, refuses it
        fhir_json.dumps(body)
    except TypeError as err:
        raise RequestError(f"The body is not valid JSON: {err}") from err
    return body
