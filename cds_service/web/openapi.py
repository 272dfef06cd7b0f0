"""The OpenAPI 3.1 document of this service, built from the service declarations and the settings.

It describes what the service accepts exactly, so that a request valid by it is answered (2xx, or a
documented business-rule refusal such as an unknown id), and one invalid by it is refused with a 4xx.
Every constraint here mirrors a check in intake.py, pipeline.py or web/records.py; tests/test_openapi.py
walks the URL map against it and runs schemathesis (bounded) against the real server.

The shapes of what the service sends (cards, actions, records) are in openapi-responses.json.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cds_service import history, terminology
from cds_service.intake import MAX_HOOK_INSTANCE
from cds_service.services import CONFIGURATION_OPTIONS, DISPATCHED_ORDERS, ServiceDeclaration

RESPONSES = Path(__file__).parent / "openapi-responses.json"

# Control characters other than tab, CR and LF are refused in every string and key (json_limits).
CONTROL = r"\u0000-\u0008\u000B\u000C\u000E-\u001F"
TEXT = {"type": "string", "pattern": f"^[^{CONTROL}]*$"}
NON_BLANK = {"type": "string", "pattern": f"^[^{CONTROL}]*[^\\s{CONTROL}][^{CONTROL}]*$"}
FHIR_STRING = {**TEXT, "minLength": 1}  # FHIR JSON has no empty strings

# A FHIR date or dateTime that names real calendar days (a 30 February is refused).
_YEAR = "([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)"
_LEAP = "([0-9]{2}(0[48]|[2468][048]|[13579][26])|(0[48]|[2468][048]|[13579][26])00)-02-29"
_DAY = (f"({_YEAR}-((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])|(0[469]|11)-(0[1-9]|[12][0-9]|30)"
        f"|02-(0[1-9]|1[0-9]|2[0-8]))|{_LEAP})")
_TIME = r"T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
DATE_TIME = {"type": "string", "pattern": f"^({_YEAR}(-(0[1-9]|1[0-2]))?|{_DAY}({_TIME})?)$"}
ORDER_REFERENCE = {"type": "string", "pattern": f"^/*[^/{CONTROL}]+/+[^/{CONTROL}][^{CONTROL}]*$",
                   "description": "A reference Type/id (relative or absolute)"}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(properties: dict[str, Any], required: Iterable[str] = (), **more: Any) -> dict[str, Any]:
    """An object with these typed members; any other member is any JSON (ignored by the service)."""
    out: dict[str, Any] = {"type": "object", "properties": properties, "propertyNames": TEXT,
                           "additionalProperties": ref("Json"), **more}
    if required:
        out["required"] = list(required)
    return out


def array(items: dict[str, Any], min_items: int = 0) -> dict[str, Any]:
    return {"type": "array", "items": items, **({"minItems": min_items} if min_items else {})}


def request_schemas() -> dict[str, Any]:
    coding = obj({"system": FHIR_STRING, "code": NON_BLANK, "display": FHIR_STRING})
    concept = obj({"coding": array(ref("OrderCoding")), "text": FHIR_STRING})
    period = obj({"start": DATE_TIME, "end": DATE_TIME})
    json_object = {"type": "object", "propertyNames": TEXT, "additionalProperties": ref("Json")}
    return {
        "Json": {"description": "Any JSON without control characters in its strings and keys",
                 "anyOf": [TEXT, {"type": "number"},
                           {"type": ["boolean", "null"]}, array(ref("Json")), json_object]},
        "OrderCoding": coding,
        "OrderConcept": concept,
        "OrderPeriod": period,
        "ServiceRequest": obj({
            "resourceType": {"const": "ServiceRequest"}, "id": FHIR_STRING, "status": NON_BLANK,
            "intent": NON_BLANK, "doNotPerform": {"type": "boolean"}, "code": ref("OrderConcept"),
            "orderDetail": array(ref("OrderConcept")), "category": array(ref("OrderConcept")),
            "reasonCode": array(ref("OrderConcept")), "reasonReference": array(obj({"reference": FHIR_STRING})),
            "occurrenceDateTime": DATE_TIME, "occurrencePeriod": ref("OrderPeriod"),
            "occurrenceTiming": obj({"event": array(DATE_TIME), "repeat": obj({"boundsPeriod": ref("OrderPeriod")})}),
            "instantiatesCanonical": array(FHIR_STRING), "instantiatesUri": array(FHIR_STRING),
            "contained": array(json_object), "extension": array(json_object),
        }, ["resourceType"], description="The elements the service reads to classify an order, checked as "
                                         "typed; an order the policy judges is then validated in full as a FHIR "
                                         "R4 ServiceRequest"),
        "OtherResource": obj({"resourceType": {**TEXT, "not": {"const": "ServiceRequest"}}}, ["resourceType"]),
        "DraftOrders": obj({"resourceType": {"const": "Bundle"}, "entry": array(obj(
            {"resource": {"anyOf": [ref("ServiceRequest"), ref("OtherResource")]}}))}, ["resourceType"]),
        "Prefetch": {"type": ["object", "null"], "propertyNames": TEXT, "additionalProperties": ref("Json"),
                     "description": "Prefetch results by key: FHIR resources, Bundles or null"},
        "FhirAuthorization": obj({"access_token": TEXT}, ["access_token"]),
        "Extension": obj({
            "davinci-crd.configuration": obj({o["code"]: {"type": "boolean"} for o in CONFIGURATION_OPTIONS}),
            "davinci-crd.requestedVersion": {"enum": [terminology.CRD_VERSION]},
        }),
        "FeedbackRequest": obj({"feedback": array({"anyOf": [ref("AcceptedFeedback"), ref("OverriddenFeedback")]},
                                                  1)}, ["feedback"]),
        "AcceptedFeedback": obj({**_feedback_common(), "outcome": {"const": "accepted"},
                                 "acceptedSuggestions": array(obj({"id": TEXT}, ["id"]), 1),
                                 "overrideReason": False},  # only with outcome overridden
                                ["card", "outcome", "outcomeTimestamp", "acceptedSuggestions"]),
        "OverriddenFeedback": obj({**_feedback_common(), "outcome": {"const": "overridden"},
                                   "acceptedSuggestions": array(obj({"id": TEXT}, ["id"])),
                                   "overrideReason": obj({"reason": obj({"code": TEXT}, ["code"]),
                                                          "userComment": TEXT})},
                                  ["card", "outcome", "outcomeTimestamp"]),
    }


def _feedback_common() -> dict[str, Any]:
    return {"card": {**NON_BLANK, "maxLength": 128, "description": "The uuid of a card this service issued"},
            "outcomeTimestamp": {"type": "string", "format": "date-time", "maxLength": 64}}


def hook_request(service: ServiceDeclaration) -> dict[str, Any]:
    context: dict[str, Any] = {"patientId": NON_BLANK}  # userId and the rest: read by no decision, not checked
    required = ["patientId"]
    extra: dict[str, Any] = {}
    if service.hook in ("order-sign", "order-select"):
        context["draftOrders"] = ref("DraftOrders")
        required.append("draftOrders")
    if service.hook == "order-select":
        context["selections"] = array(TEXT, 1)
        required.append("selections")
    if service.hook == "order-dispatch":
        context.update({"dispatchedOrders": array(ORDER_REFERENCE, 1), "performer": NON_BLANK,
                        "fulfillmentTasks": array({"type": "object", "propertyNames": TEXT,
                                                   "additionalProperties": ref("Json")}),
                        "order": {**ORDER_REFERENCE, "description": "Pre-publication form: one dispatched order"}})
        required.append("performer")
        extra["anyOf"] = [{"required": ["dispatchedOrders"]}, {"required": ["order"]}]
    return obj({
        "hook": {"const": service.hook},
        "hookInstance": {**NON_BLANK, "maxLength": MAX_HOOK_INSTANCE,
                         "description": "Unique per invocation; a retry with the same body gets the same answer, "
                                        "with another body a 409"},
        "fhirServer": FHIR_STRING,
        "fhirAuthorization": ref("FhirAuthorization"),
        "context": obj(context, required, **extra),
        "prefetch": ref("Prefetch"),
        "extension": ref("Extension"),
    }, ["hook", "hookInstance", "context"], dependentRequired={"fhirAuthorization": ["fhirServer"]})


# ---------------------------------------------------------------- paths


def _problem(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/fhir+json": {"schema": ref("OperationOutcome")}}}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


HTML = {"text/html": {"schema": {"type": "string"}}}
# A path whose id is not even of the right type matches no route: the generic 404 is an OperationOutcome.
HTML_OR_PROBLEM = {**HTML, "application/fhir+json": {"schema": ref("OperationOutcome")}}
POST_PROBLEMS = {"400": _problem("The request is malformed: an OperationOutcome saying what and where"),
                 "408": _problem("The body did not arrive within CDS_REQUEST_READ_SECONDS"),
                 "413": _problem("The body is larger than CDS_MAX_CONTENT_LENGTH"),
                 "415": _problem("The body is not sent as application/json")}


def _path_param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


QUERY_TEXT = {**TEXT, "maxLength": 512}
FILTERS = [
    _query("from", {"type": "string", "format": "date"}, "First UTC day (inclusive)"),
    _query("to", {"type": "string", "format": "date"}, "Last UTC day (inclusive)"),
    _query("service", QUERY_TEXT, "Service id"),
    _query("issuer", QUERY_TEXT, "The calling client's JWT iss"),
    _query("code", QUERY_TEXT, "Procedure code of an order (any case)"),
    _query("outcome", {"enum": list(history.OUTCOMES)}, "Coverage value of a verdict, or no-verdict"),
    _query("reason", QUERY_TEXT, "Verdict reason (a coverage-reason code)"),
]
PAGE = [_query("limit", {"type": "integer", "minimum": 1, "maximum": history.MAX_PAGE}, "Calls per page (50)"),
        _query("offset", {"type": "integer", "minimum": 0, "maximum": 10_000_000}, "Calls to skip")]
ANALYTICS = [_query("bucket", {"enum": list(history.BUCKETS)}, "Period (week)"),
             _query("group", {"enum": list(history.GROUPS)}, "Grouping: CRD card type or card template (card-type)")]
FORMAT = [_query("format", {"enum": ["json", "csv"]}, "json (default) or csv (an attachment)")]


def _form(parameters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A page's parameters: its filter form sends the fields left empty, and those filter nothing."""
    return [{**q, "schema": {"anyOf": [q["schema"], {"const": ""}]}} for q in parameters]
ASSERTION_ID = _path_param("assertion_id", {"type": "string", "pattern": "^[A-Za-z0-9_~-]{1,64}$"},
                           "The coverage-assertion-id sent in coverage-information")
CALL_ID = _path_param("call_id", {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}, "A recorded call's id")


def _paths(services: list[ServiceDeclaration], secured: dict[str, Any]) -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/cds-services": {"get": {"summary": "CDS Hooks discovery", "responses": {
            "200": _json(ref("Discovery"), "The services, their hooks and prefetch templates")}}},
    }
    for s in services:
        paths[f"/cds-services/{s.id}"] = {"post": {
            "summary": f"{s.title} ({s.hook})", "description": s.description, **secured,
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": ref(f"HookRequest-{s.id}")}}},
            "responses": {"200": _json(ref("HookResponse"), "Cards and coverage information"), **POST_PROBLEMS,
                          "400": _problem("Malformed request, or (CRD hook-13) no Coverage this endpoint handles: "
                                          "an OperationOutcome saying what was wrong"),
                          "409": _problem("This hookInstance was already used for a different request"),
                          **_unobtainable(s),
                          "422": _problem("A CRD version this service does not implement was requested"),
                          **_unauthenticated(secured)}}}
        paths[f"/playground/evaluate/{s.id}"] = {"post": {
            "summary": f"Try {s.id} from the playground: the same answer, nothing recorded", **secured,
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": ref(f"HookRequest-{s.id}")}}},
            "responses": {"200": _json(ref("HookResponse"), "Cards and coverage information (assertion ids not "
                                                            "kept)"), **POST_PROBLEMS,
                          "400": _problem("Malformed request, or (CRD hook-13) no Coverage this endpoint handles"),
                          **_unobtainable(s),
                          "422": _problem("A CRD version this service does not implement was requested"),
                          **_unauthenticated(secured)}}}
        paths[f"/cds-services/{s.id}/feedback"] = {"post": {
            "summary": f"Feedback on cards of {s.id}", **secured,
            "requestBody": {"required": True, "content": {"application/json": {"schema": ref("FeedbackRequest")}}},
            "responses": {"200": _json(ref("FeedbackResult"), "Stored"), **POST_PROBLEMS,
                          "404": _problem("No such card was issued by this service (to this client)"),
                          "422": _problem("The card offered no such suggestion or override reason"),
                          **_unauthenticated(secured)}}}
    paths.update({
        "/coverage-assertions/{assertion_id}": {"get": {
            "summary": "One stored coverage assertion", **secured, "parameters": [ASSERTION_ID],
            "responses": {"200": _json(ref("CoverageAssertion"), "The assertion as stored"),
                          "404": _problem("No such assertion (for this client)"), **_unauthenticated(secured)}}},
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _json(ref("Health"), "Alive")}}},
        "/readyz": {"get": {"summary": "Readiness: artifacts loaded, database reachable at the current schema",
                            "responses": {"200": _json(ref("Ready"), "Ready"),
                                          "503": _problem("The database is unreachable or not migrated")}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {
            "description": "Prometheus text exposition", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {"summary": "This document", "responses": {"200": _json({"type": "object"},
                                                                                          "OpenAPI 3.1")}}},
        "/policies/": {"get": {"summary": "The policy and the alternative policies it names",
                               "responses": {"200": {"description": "Page", "content": HTML}}}},
        "/policies/{page_id}": {"get": {
            "summary": "One policy's page", "parameters": [_path_param(
                "page_id", {"type": "string", "pattern": "^[a-z0-9-]{1,64}$"}, "e.g. mp-2-267")],
            "responses": {"200": {"description": "Page", "content": HTML}, "404": _problem("No such policy")}}},
        "/": {"get": {"summary": "The playground (same as /playground)",
                      "responses": {"200": {"description": "Page", "content": HTML}}}},
        "/playground": {"get": {"summary": "The playground: try orders in a browser",
                                "responses": {"200": {"description": "Page", "content": HTML}}}},
        "/playground/options": {"get": {"summary": "Tests, diagnoses and plans the playground offers", "responses": {
            "200": _json(obj({}, ["tests", "diagnoses", "plans", "services"]), "Options")}}},
        "/static/{filename}": {"get": {
            "summary": "The playground's files", "parameters": [_path_param(
                "filename", {"type": "string", "pattern": "^[a-z0-9_-]{1,64}\\.[a-z]{1,8}$"}, "e.g. playground.js")],
            "responses": {"200": {"description": "The file", "content": {
                "text/javascript": {"schema": {"type": "string"}}, "text/css": {"schema": {"type": "string"}},
                **HTML}}, "404": _problem("No such file")}}},
    })
    paths.update(_records_paths(secured))
    return paths


def _unobtainable(service: ServiceDeclaration) -> dict[str, Any]:
    """CDS Hooks' 412, where a service reads an order the request may leave to the fhirServer (order-dispatch)."""
    if DISPATCHED_ORDERS not in service.prefetch:
        return {}
    return {"412": _problem("A dispatched order is neither in the prefetch nor obtainable from the fhirServer "
                            "(none named, not one this service may call, or the search failed)")}


def _unauthenticated(secured: dict[str, Any]) -> dict[str, Any]:
    if not secured:
        return {}
    return {"401": {**_problem("Missing or invalid client JWT"),
                    "headers": {"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}}}}


def _records_paths(secured: dict[str, Any]) -> dict[str, Any]:
    bad_filter = {"400": _problem("A filter is malformed: an OperationOutcome naming it")}
    csv = {"text/csv": {"schema": {"type": "string"}}}
    denied = _unauthenticated(secured)
    return {
        "/records/api/calls": {"get": {
            "summary": "Decision history: calls and their verdicts, newest first", **secured,
            "parameters": [*FILTERS, *PAGE, *FORMAT],
            "responses": {"200": {"description": "A page of calls (json), or every matching verdict row (csv)",
                                  "content": {"application/json": {"schema": ref("CallsPage")}, **csv}},
                          **bad_filter, **denied}}},
        "/records/api/calls/{call_id}": {"get": {
            "summary": "One call as it happened: response as sent, verdicts, cards, feedback", **secured,
            "parameters": [CALL_ID],
            "responses": {"200": _json(ref("CallRecord"), "The call"),
                          "404": _problem("No such call (for this client)"), **denied}}},
        "/records/api/assertions/{assertion_id}": {"get": {
            "summary": "One assertion's full record: the verdict as issued and every call that sent it", **secured,
            "parameters": [ASSERTION_ID],
            "responses": {"200": _json(ref("AssertionRecord"), "The record"),
                          "404": _problem("No such assertion (for this client)"), **denied}}},
        "/records/api/feedback": {"get": {
            "summary": "Accept and override rates by card and override reason over time", **secured,
            "parameters": [*FILTERS, *ANALYTICS, *FORMAT],
            "responses": {"200": {"description": "Per period and group (json or csv)", "content": {
                "application/json": {"schema": ref("FeedbackSummary")}, **csv}}, **bad_filter, **denied}}},
        "/records/": {"get": {"summary": "Decision history page", **secured, "parameters": _form([*FILTERS, *PAGE]),
                              "responses": {"200": {"description": "Page", "content": HTML}, **bad_filter, **denied}}},
        "/records/calls/{call_id}": {"get": {
            "summary": "One call's page", **secured, "parameters": [CALL_ID],
            "responses": {"200": {"description": "Page", "content": HTML},
                          "404": {"description": "No such call (for this client)", "content": HTML_OR_PROBLEM},
                          **denied}}},
        "/records/assertions/{assertion_id}": {"get": {
            "summary": "One assertion's page (for a PA reviewer)", **secured, "parameters": [ASSERTION_ID],
            "responses": {"200": {"description": "Page", "content": HTML},
                          "404": {"description": "No such assertion (for this client)",
                                  "content": HTML_OR_PROBLEM},
                          **denied}}},
        "/records/feedback": {"get": {
            "summary": "Feedback page with charts", **secured, "parameters": _form([*FILTERS, *ANALYTICS]),
            "responses": {"200": {"description": "Page", "content": HTML}, **bad_filter, **denied}}},
    }


def openapi_document(services: Iterable[ServiceDeclaration], authenticated: bool) -> dict[str, Any]:
    """The document for this deployment: one path per declared service, and security (with the 401s)
    only where trusted issuers are configured."""
    declared = list(services)
    responses: dict[str, Any] = json.loads(RESPONSES.read_text())
    secured: dict[str, Any] = {"security": [{"cdsHooksJwt": []}]} if authenticated else {}
    schemas = {**responses["schemas"], **request_schemas(),
               **{f"HookRequest-{s.id}": hook_request(s) for s in declared}}
    auth_note = ("Hook, feedback, assertion and record endpoints need a CDS Hooks client JWT whose aud is the URL "
                 "called." if authenticated else
                 "This deployment runs without client authentication (local development).")
    return {
        "openapi": "3.1.0",
        "info": {"title": "Liquid-biopsy CDS Hooks service", "version": responses["version"],
                 "description": f"{responses['description']} {auth_note}"},
        "components": {"schemas": schemas, "securitySchemes": responses["securitySchemes"]},
        "paths": _paths(declared, secured),
    }
