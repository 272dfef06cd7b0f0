"""Fetching coverage the prefetch did not bring, from a real local FHIR server that misbehaves on demand.

Every case answers 200 within the budget; failures answer from the code list alone, with no
coverage facts invented.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import LiveService, coverage, coverage_info, hook_request, service_request
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
                                          FHIR_CONNECT_TIMEOUT=0.5, FHIR_READ_TIMEOUT=0.8)
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
    service.call(request(fhir.base, {"coverage": {"resourceType": "Bundle", "type": "searchset", "entry": []}}))
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
def test_failing_fhir_server_answers_within_budget_from_the_code_list(service: LiveService, fhir: FhirTestServer,
                                                                      mode: str) -> None:
    fhir.mode = mode
    answer, elapsed = timed(service, request(fhir.base))
    assert elapsed < BUDGET + 0.5, f"{mode}: took {elapsed:.2f}s"
    [card] = answer["cards"]
    assert card["indicator"] == "warning" and "could not be checked" in card["detail"]
    assert covered_values(answer) == []


def test_server_down_answers_within_budget(service_factory: Any) -> None:
    down = "http://127.0.0.1:9/fhir"
    svc = service_factory(FHIR_SERVERS=down, FHIR_ALLOW_HTTP=True, FHIR_BUDGET_SECONDS=BUDGET)
    answer, elapsed = timed(svc, request(down))
    assert elapsed < BUDGET + 0.5 and "could not be checked" in answer["cards"][0]["detail"]


def test_one_retry_after_a_server_error(service: LiveService, fhir: FhirTestServer) -> None:
    fhir.mode = "500-once"
    answer, _ = timed(service, request(fhir.base))
    assert covered_values(answer) == ["not-covered"] and len(fhir.requests) == 2


def test_no_retry_after_401(service: LiveService, fhir: FhirTestServer) -> None:
    fhir.mode = "401"
    service.call(request(fhir.base))
    assert len(fhir.requests) == 1


def test_fhir_server_not_on_allow_list_is_never_called(service_factory: Any, fhir: FhirTestServer) -> None:
    svc = service_factory(FHIR_SERVERS="https://fhir.trusted.example/r4", FHIR_ALLOW_HTTP=True)
    answer = svc.call(request(fhir.base))
    assert fhir.requests == [] and "could not be checked" in answer["cards"][0]["detail"]


def test_plain_http_is_refused_by_default(service_factory: Any, fhir: FhirTestServer) -> None:
    svc = service_factory(FHIR_SERVERS=fhir.base)
    svc.call(request(fhir.base))
    assert fhir.requests == []


def test_no_fhir_server_and_no_prefetch_answers_from_the_code_list(service: LiveService) -> None:
    body = hook_request(service_request("0530U", "2025-03-03"), coverages=None)
    assert "could not be checked" in service.call(body)["cards"][0]["detail"]


def test_fetched_fep_coverage_is_honoured(service: LiveService, fhir: FhirTestServer) -> None:
    fhir.coverages = [coverage("fep-9", plan="FEP Blue Focus")]
    answer = service.call(request(fhir.base))
    assert "FEP" in answer["cards"][0]["summary"] and covered_values(answer) == []


def test_fetched_no_active_coverage(service: LiveService, fhir: FhirTestServer) -> None:
    fhir.coverages = []
    answer = service.call(request(fhir.base))
    assert "No active" in answer["cards"][-1]["summary"]


def test_fhir_authorization_needs_fhir_server(service: LiveService) -> None:
    body = request("x")
    body.pop("fhirServer")
    out = service.call(body, expect=400)
    assert "fhirServer" in out["issue"][0]["diagnostics"]
