"""Fetching coverage the prefetch did not bring, from a real local FHIR server that misbehaves on demand.

Every case answers 200 within the budget; failures answer from the code list alone, with no
coverage facts invented.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import LiveService, coverage, coverage_info, dispatch_request, hook_request, service_request
from tests.fhir_test_server import FhirTestServer

BUDGET = 1.0


@pytest.fixture
def fhir() -> Iterator[FhirTestServer]:
    server = FhirTestServer()
    server.coverages = [coverage("fetched-1")]
    yield server
    server.close()


@pytest.fixture
def service(service_factory: Any, fhir: FhirTestServer) -> LiveService:
    result: LiveService = service_factory(FHIR_SERVERS=fhir.base, FHIR_ALLOW_HTTP=True, FHIR_BUDGET_SECONDS=BUDGET,
                                          FHIR_CONNECT_TIMEOUT=0.5)
    return result


def request(fhir_base: str, prefetch: dict[str, Any] | None = None, token: str | None = "ehr-token") -> dict[str, Any]:
    body = hook_request(service_request("0530U", "2025-03-03"), coverages=None, prefetch=prefetch)
    body["fhirServer"] = fhir_base
    if token:
        body["fhirAuthorization"] = {"access_token": token, "token_type": "Bearer", "expires_in": 300,
                                     "scope": "patient/Coverage.read", "subject": "cds-service"}
    return body


def timed(service: LiveService, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
    start = time.monotonic()
    answer = service.call(body)
    return answer, time.monotonic() - start


def covered_values(answer: dict[str, Any]) -> list[str]:
    return [i["covered"]["valueCode"] for i in coverage_info(answer)]


@pytest.mark.parametrize("prefetch", [None, {"coverage": None},
                                      {"coverage": {"resourceType": "OperationOutcome", "issue": []}}],
                         ids=["missing", "null", "operation-outcome"])
def test_missing_coverage_is_fetched_with_the_bearer_token(service: LiveService, fhir: FhirTestServer,
                                                           prefetch: dict[str, Any] | None) -> None:
    answer, _ = timed(service, request(fhir.base, prefetch))
    assert covered_values(answer) == ["not-covered"]
    assert "Coverage/fetched-1" in str(answer["systemActions"])
    [(path, auth)] = fhir.requests
    assert path.startswith("/fhir/Coverage?") and "patient=p1" in path and "status=active" in path
    assert auth == "Bearer ehr-token"


def test_prefetched_coverage_is_not_fetched_again(service: LiveService, fhir: FhirTestServer) -> None:
    service.call(request(fhir.base, {"coverage": {"resourceType": "Bundle", "type": "searchset", "entry": []}}),
                 expect=400)  # the client's search found nothing: no Coverage accessible (CRD hook-13)
    assert fhir.requests == []


def test_coverage_is_not_fetched_for_orders_the_policy_does_not_judge(service: LiveService,
                                                                     fhir: FhirTestServer) -> None:
    body = request(fhir.base)
    body["context"]["draftOrders"]["entry"] = [{"resource": service_request("85025", "2025-03-03", rid="cbc")}]
    assert service.call(body)["cards"] == []
    assert fhir.requests == []  # nobody's coverage is read for a blood count
    service.call(request(fhir.base))
    assert len(fhir.requests) == 1  # and it is, once a liquid biopsy is on the order


@pytest.mark.parametrize("mode", ["slow", "401", "500", "garbage", "not-bundle", "drip"])
def test_failing_fhir_server_is_a_400_within_budget(service: LiveService, fhir: FhirTestServer, mode: str) -> None:
    """CRD hook-13: no Coverage could be obtained, so no coverage-information can be made; the answer
    says exactly what failed, within the budget."""
    fhir.mode = mode
    start = time.monotonic()
    answer = service.call(request(fhir.base), expect=400)
    elapsed = time.monotonic() - start
    assert elapsed < BUDGET + 0.5, f"{mode}: took {elapsed:.2f}s"
    assert "Coverage search on the fhirServer failed" in answer["issue"][0]["diagnostics"]


@pytest.mark.parametrize("mode", ["slow", "garbage"])
def test_failing_fhir_server_in_sandbox_mode_answers_from_the_policy(service_factory: Any, fhir: FhirTestServer,
                                                                     mode: str) -> None:
    svc = service_factory(FHIR_SERVERS=fhir.base, FHIR_ALLOW_HTTP=True, FHIR_BUDGET_SECONDS=BUDGET,
                          FHIR_CONNECT_TIMEOUT=0.5, MODE="sandbox")
    fhir.mode = mode
    answer, elapsed = timed(svc, request(fhir.base))
    assert elapsed < BUDGET + 0.5
    assert [c["indicator"] for c in answer["cards"]] == ["warning", "info", "info"]
    assert "could not be established" in answer["cards"][-1]["summary"]
    assert covered_values(answer) == []


def test_server_down_is_a_400_within_budget(service_factory: Any) -> None:
    down = "http://127.0.0.1:9/fhir"
    svc = service_factory(FHIR_SERVERS=down, FHIR_ALLOW_HTTP=True, FHIR_BUDGET_SECONDS=BUDGET)
    start = time.monotonic()
    answer = svc.call(request(down), expect=400)
    assert time.monotonic() - start < BUDGET + 0.5 and "connection refused" in answer["issue"][0]["diagnostics"]


def test_one_retry_after_a_server_error(service: LiveService, fhir: FhirTestServer) -> None:
    fhir.mode = "500-once"
    answer, _ = timed(service, request(fhir.base))
    assert covered_values(answer) == ["not-covered"] and len(fhir.requests) == 2


def test_no_retry_after_401(service: LiveService, fhir: FhirTestServer) -> None:
    fhir.mode = "401"
    service.call(request(fhir.base), expect=400)
    assert len(fhir.requests) == 1


def test_fhir_server_not_on_allow_list_is_never_called(service_factory: Any, fhir: FhirTestServer) -> None:
    svc = service_factory(FHIR_SERVERS="https://fhir.trusted.example/r4", FHIR_ALLOW_HTTP=True)
    answer = svc.call(request(fhir.base), expect=400)
    assert fhir.requests == [] and "may call" in answer["issue"][0]["diagnostics"]


def test_plain_http_is_refused_by_default(service_factory: Any, fhir: FhirTestServer) -> None:
    svc = service_factory(FHIR_SERVERS=fhir.base)
    svc.call(request(fhir.base), expect=400)
    assert fhir.requests == []


def test_no_fhir_server_and_no_prefetch_is_a_400(service: LiveService) -> None:
    body = hook_request(service_request("0530U", "2025-03-03"), coverages=None)
    assert "no fhirServer" in service.call(body, expect=400)["issue"][0]["diagnostics"]


def test_fetched_fep_coverage_is_honoured(service: LiveService, fhir: FhirTestServer) -> None:
    fhir.coverages = [coverage("fep-9", plan="FEP Blue Focus")]
    answer = service.call(request(fhir.base))
    assert "FEP" in answer["cards"][0]["summary"] and covered_values(answer) == ["conditional"]


def test_fetched_no_coverage_is_a_400(service: LiveService, fhir: FhirTestServer) -> None:
    fhir.coverages = []
    assert "No Coverage is accessible" in service.call(request(fhir.base), expect=400)["issue"][0]["diagnostics"]


def test_fhir_authorization_needs_fhir_server(service: LiveService) -> None:
    body = request("x")
    body.pop("fhirServer")
    out = service.call(body, expect=400)
    assert "fhirServer" in out["issue"][0]["diagnostics"]


def test_dispatched_orders_missing_from_prefetch_are_read_from_the_fhir_server(service: LiveService,
                                                                               fhir: FhirTestServer) -> None:
    fhir.resources["ServiceRequest/lab-7"] = service_request("0530U", "2025-03-03", rid="lab-7", status="active")
    body = dispatch_request(coverages=(coverage(),), dispatched=("ServiceRequest/lab-7", "DeviceRequest/d1"))
    body["fhirServer"] = fhir.base
    answer, elapsed = timed(service, body)
    assert covered_values(answer) == ["not-covered"] and elapsed < BUDGET + 0.5
    [(path, _)] = fhir.requests
    assert path.startswith("/fhir/ServiceRequest?") and "_id=lab-7" in path
