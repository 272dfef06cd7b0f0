"""The OpenAPI document as the truth: every route and method of the app is in it and nothing else;
real responses (with real data behind them) match its schemas; and schemathesis, bounded, finds no
undocumented status, no schema-valid request refused and no schema-invalid one accepted against the
real server over HTTP."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from cds_service.web.openapi import DATE_TIME
from tests.conftest import (
    DISPATCH,
    SELECT,
    SIGN,
    LiveService,
    assertion_ids,
    coverage,
    dispatch_request,
    hook_request,
    service_request,
)
from tests.processes import free_port, wait_until_answers
from tests.test_auth import EC_KEY, jwk

ROOT = Path(__file__).resolve().parents[1]
SCHEMATHESIS = Path(sys.executable).with_name("st")


@pytest.fixture
def openapi(cds: LiveService) -> dict[str, Any]:
    doc: dict[str, Any] = requests.get(cds.url("/openapi.json"), timeout=5).json()
    return doc


def check(openapi: dict[str, Any], path: str, method: str, resp: requests.Response) -> None:
    """Validate a real response against the document's schema for that path, method and status."""
    spec = openapi["paths"][path][method]["responses"][str(resp.status_code)]
    media = resp.headers["Content-Type"].split(";")[0]
    assert "schema" in spec["content"][media], (path, resp.status_code, media)
    registry = Registry().with_resource("urn:openapi", Resource.from_contents(
        {**openapi, "$schema": "https://json-schema.org/draft/2020-12/schema"}))
    pointer = "/".join(part.replace("~", "~0").replace("/", "~1") for part in (
        "paths", path, method, "responses", str(resp.status_code), "content", media, "schema"))
    ref_schema = {"$ref": f"urn:openapi#/{pointer}"}
    if media.endswith("json"):
        Draft202012Validator(ref_schema, registry=registry).validate(resp.json())


def rule_to_path(rule: str) -> str:
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule)


def test_the_url_map_and_the_document_name_the_same_operations(cds: LiveService, openapi: dict[str, Any]) -> None:
    routed: set[tuple[str, str]] = set()
    for rule in cds.app.url_map.iter_rules():
        for method in rule.methods - {"HEAD", "OPTIONS"}:  # both are answered for every route
            path = rule_to_path(rule.rule)
            if "{service_id}" in path:  # documented once per declared service, with its own request schema
                routed |= {(path.replace("{service_id}", s), method.lower()) for s in cds.pipeline.services}
            else:
                routed.add((path, method.lower()))
    documented = {(path, method) for path, ops in openapi["paths"].items() for method in ops}
    assert routed == documented
    for path, ops in openapi["paths"].items():
        for op in ops.values():
            assert "200" in op["responses"] and op["summary"], path
            if "requestBody" in op:
                assert {"400", "408", "413", "415"} <= set(op["responses"]), path


def test_the_document_is_openapi_3_1_with_one_path_per_declared_service(openapi: dict[str, Any]) -> None:
    assert openapi["openapi"] == "3.1.0"
    Draft202012Validator.check_schema({"$defs": openapi["components"]["schemas"]})
    for service, hook in ((SIGN, "order-sign"), (SELECT, "order-select"), (DISPATCH, "order-dispatch")):
        body = openapi["paths"][f"/cds-services/{service}"]["post"]["requestBody"]["content"]["application/json"]
        schema = openapi["components"]["schemas"][body["schema"]["$ref"].rsplit("/", 1)[1]]
        assert schema["properties"]["hook"] == {"const": hook}
    # Without trusted issuers nothing is secured, so no 401 is promised.
    assert not any("security" in op or "401" in op["responses"] for ops in openapi["paths"].values()
                   for op in ops.values())


def test_with_trusted_issuers_every_protected_operation_says_so(service_factory: Any, tmp_path: Path) -> None:
    issuers = tmp_path / "issuers.json"
    issuers.write_text(json.dumps({"issuers": [{"iss": "https://ehr.example", "jwks": {"keys": [jwk(EC_KEY, "k")]}}]}))
    svc = service_factory(TRUSTED_ISSUERS=str(issuers))
    doc = requests.get(svc.url("/openapi.json"), timeout=5).json()
    protected = {p for p, ops in doc["paths"].items() for op in ops.values() if "security" in op}
    assert {f"/cds-services/{SIGN}", f"/cds-services/{SIGN}/feedback", "/coverage-assertions/{assertion_id}",
            "/records/api/calls", "/records/", "/records/feedback"} <= protected
    assert "/cds-services" not in protected and "/readyz" not in protected
    assert all("401" in doc["paths"][p]["get" if "get" in doc["paths"][p] else "post"]["responses"]
               for p in protected)
    # Each one is refused without a token, as documented.
    assert requests.get(svc.url("/records/api/calls"), timeout=5).status_code == 401


@pytest.mark.parametrize(("value", "valid"), [
    ("2025", True), ("2025-03", True), ("2025-03-03", True), ("2024-02-29", True), ("2000-02-29", True),
    ("2025-03-03T10:00:00Z", True), ("2025-03-03T10:00:00.5+05:30", True), ("2025-02-29", False),
    ("1900-02-29", False), ("2025-04-31", False), ("2025-13", False), ("2025-03-03T10:00Z", False), ("0000", False),
])
def test_the_documented_date_time_is_what_the_service_reads(cds: LiveService, value: str, valid: bool) -> None:
    assert bool(re.fullmatch(DATE_TIME["pattern"].strip("^$"), value)) is valid
    order = service_request("85025", None, occurrenceDateTime=value)  # a blood count: read, not judged
    status = cds.http.post(cds.url(f"/cds-services/{SIGN}"), json=hook_request(order), timeout=5).status_code
    assert status == (200 if valid else 400), value


def test_real_responses_match_the_document(cds: LiveService, openapi: dict[str, Any]) -> None:
    http = cds.http
    sign_path = f"/cds-services/{SIGN}"
    check(openapi, "/cds-services", "get", http.get(cds.url("/cds-services"), timeout=5))
    hook = http.post(cds.url(sign_path), json=hook_request(service_request("0530U", "2025-03-03")), timeout=5)
    check(openapi, sign_path, "post", hook)
    for body in (hook_request(service_request("0239U", "2025-03-03", icd=("C34.9",))),
                 hook_request(service_request("0530U", "2026-08-03"), coverages=(coverage(plan="FEP Blue"),)),
                 hook_request(service_request("0530U", "2025-03-03"), coverages=()),
                 hook_request(service_request("85025", "2025-03-03")), {}):
        check(openapi, sign_path, "post", http.post(cds.url(sign_path), json=body, timeout=5))
    check(openapi, f"/cds-services/{SELECT}", "post", http.post(
        cds.url(f"/cds-services/{SELECT}"), timeout=5,
        json=hook_request(service_request(), hook="order-select", selections=["ServiceRequest/sr-1"])))
    check(openapi, f"/cds-services/{DISPATCH}", "post", http.post(
        cds.url(f"/cds-services/{DISPATCH}"), timeout=5,
        json=dispatch_request(service_request("0530U", "2025-03-03", status="active"))))
    check(openapi, f"/cds-services/{DISPATCH}", "post", http.post(  # 412: the dispatched order cannot be obtained
        cds.url(f"/cds-services/{DISPATCH}"), timeout=5, json=dispatch_request(dispatched=("ServiceRequest/gone",))))
    retry = {**hook_request(service_request("0091U")), "hookInstance": json.loads(hook.request.body or "{}")[
        "hookInstance"]}
    check(openapi, sign_path, "post", http.post(cds.url(sign_path), json=retry, timeout=5))  # 409
    check(openapi, sign_path, "post", cds.post_raw(sign_path, b"x", "text/plain"))  # 415
    card = hook.json()["cards"][0]["uuid"]
    feedback = f"{sign_path}/feedback"
    feedbacks: tuple[dict[str, Any], ...] = (
        {"feedback": [{"card": card, "outcome": "overridden", "outcomeTimestamp": "2026-11-25T10:00:00Z"}]},
        {"feedback": []},
        {"feedback": [{"card": "nope", "outcome": "overridden", "outcomeTimestamp": "2026-11-25T10:00:00Z"}]})
    for fb in feedbacks:
        check(openapi, feedback, "post", http.post(cds.url(feedback), json=fb, timeout=5))
    [assertion_id] = assertion_ids(hook.json())
    for path, real in (("/coverage-assertions/{assertion_id}", f"/coverage-assertions/{assertion_id}"),
                       ("/coverage-assertions/{assertion_id}", "/coverage-assertions/x"),
                       ("/records/api/assertions/{assertion_id}", f"/records/api/assertions/{assertion_id}"),
                       ("/records/api/calls/{call_id}", "/records/api/calls/1"),
                       ("/records/api/calls/{call_id}", "/records/api/calls/999"),
                       ("/records/api/calls", "/records/api/calls?outcome=not-covered"),
                       ("/records/api/calls", "/records/api/calls?from=x"),
                       ("/records/api/feedback", "/records/api/feedback?bucket=day"),
                       ("/healthz", "/healthz"), ("/readyz", "/readyz"), ("/playground/options", "/playground/options"),
                       ("/policies/{page_id}", "/policies/nope"), ("/records/calls/{call_id}", "/records/calls/x")):
        check(openapi, path, "get", http.get(cds.url(real), timeout=5))


@pytest.mark.skipif(not SCHEMATHESIS.exists(), reason="schemathesis is not installed (pip install -e '.[test]')")
def test_schemathesis_finds_nothing(tmp_path: Path) -> None:
    """Every schemathesis check, every phase, a bounded number of examples per operation (a fixed seed
    so CI is reproducible; CDS_SCHEMATHESIS_SEED=random explores), against the real server."""
    port = free_port()
    env = {**os.environ, "CDS_DATABASE_URL": f"sqlite:///{tmp_path / 'st.sqlite3'}", "CDS_TODAY": "2026-11-25"}
    log = (tmp_path / "server.log").open("wb")  # not a pipe: nobody reads it while the run goes on
    server = subprocess.Popen([sys.executable, "-m", "cds_service", "serve", "--port", str(port)], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_until_answers(f"http://127.0.0.1:{port}/readyz", server)
        seed = os.environ.get("CDS_SCHEMATHESIS_SEED", "2267")
        run = subprocess.run(
            [str(SCHEMATHESIS), "run", f"http://127.0.0.1:{port}/openapi.json", "--checks", "all",
             "--max-examples", os.environ.get("CDS_SCHEMATHESIS_EXAMPLES", "25"), "--workers", "1",
             "--max-failures", "20", *(["--seed", seed] if seed != "random" else [])],
            cwd=tmp_path, capture_output=True, text=True, timeout=600, env={**os.environ, "NO_COLOR": "1"})
    finally:
        server.terminate()
        server.wait(15)
        log.close()
    report = run.stdout[-6000:]
    assert run.returncode == 0, report
    assert re.search(r"\b(\d+) generated, \1 passed", run.stdout), report
