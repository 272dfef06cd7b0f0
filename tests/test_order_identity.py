"""Which order a verdict is about, over real HTTP: orders without an id, the same order listed twice,
and a dispatched order the service cannot obtain. Every 200 answer also passes tests/crd_conformance.py
(LiveService.call), which checks one coverage-assertion-id per Coverage per updated order."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from cds_service.store import coverage_assertions
from tests.conftest import (
    DISPATCH,
    SELECT,
    LiveService,
    assertion_ids,
    bundle,
    coverage_info,
    dispatch_request,
    hook_request,
    service_request,
)
from tests.fhir_test_server import FhirTestServer


def without_id(code: str) -> dict[str, Any]:
    order = service_request(code, "2025-03-03")
    del order["id"]
    return order


def per_order(answer: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(the updated order's code, the assertion ids it carries) for each system action."""
    return [(a["resource"]["code"]["coding"][0]["code"], assertion_ids({"systemActions": [a]}))
            for a in answer["systemActions"]]


# ---------------------------------------------------------------- orders without an id


def test_orders_without_an_id_each_get_only_their_own_verdict(cds: LiveService) -> None:
    answer = cds.call(hook_request(without_id("0530U"), without_id("0091U")))
    [(first, [a]), (second, [b])] = per_order(answer)  # one coverage-information each (CRD resp-37)
    assert (first, second) == ("0530U", "0091U") and a != b
    assert not any("suggestions" in c for c in answer["cards"])  # an order without an id cannot be deleted


def test_an_order_without_an_id_never_takes_another_calls_assertion(cds: LiveService) -> None:
    """Nothing identifies an order without an id across calls: each call's verdict is its own assertion."""
    [first] = assertion_ids(cds.call(hook_request(without_id("0530U"))))
    [second] = assertion_ids(cds.call(hook_request(without_id("0530U"))))
    assert first != second
    with cds.pipeline.store.engine.connect() as conn:
        rows = conn.execute(select(coverage_assertions.c.order_reference, coverage_assertions.c.subject_key)).all()
    assert [tuple(r) for r in rows] == [("context.draftOrders.entry[0].resource", None)] * 2


def test_an_order_with_an_id_keeps_its_assertion_beside_orders_without_one(cds: LiveService) -> None:
    [(_, [kept]), _] = per_order(cds.call(hook_request(service_request("0530U", "2025-03-03"), without_id("0091U"))))
    again = per_order(cds.call(hook_request(without_id("0091U"), service_request("0530U", "2025-03-03"))))
    assert again[1] == ("0530U", [kept])


# ---------------------------------------------------------------- the same order twice


@pytest.mark.parametrize("refs", [("ServiceRequest/lb-dd", "ServiceRequest/lb-dd"),
                                  ("ServiceRequest/lb-dd", "https://ehr.example/fhir/ServiceRequest/lb-dd"),
                                  ("ServiceRequest/lb-dd/_history/1", "ServiceRequest/lb-dd/_history/2")],
                         ids=["same-reference", "relative-and-absolute", "versions"])
def test_an_order_dispatched_twice_is_judged_once(cds: LiveService, refs: tuple[str, str]) -> None:
    order = service_request("0530U", "2025-03-03", rid="lb-dd", status="active")
    answer = cds.call(dispatch_request(order, dispatched=refs), service=DISPATCH)
    assert len(per_order(answer)[0][1]) == 1 and len(answer["systemActions"]) == 1
    assert len(answer["cards"]) == 1


def test_the_same_draft_order_twice_is_judged_once(cds: LiveService) -> None:
    order = service_request("0530U", "2025-03-03", rid="dup-1")
    answer = cds.call(hook_request(order, dict(order)))
    assert [len(ids) for _, ids in per_order(answer)] == [1]
    assert [c["summary"] for c in answer["cards"]] == list(dict.fromkeys(c["summary"] for c in answer["cards"]))


def test_two_different_versions_of_one_draft_order_are_400(cds: LiveService) -> None:
    body = hook_request(service_request("0530U", "2025-03-03", rid="dup-2"),
                        service_request("0091U", "2025-03-03", rid="dup-2"))
    [issue] = cds.call(body, expect=400)["issue"]
    assert "ServiceRequest/dup-2" in issue["diagnostics"]
    assert issue["expression"] == ["context.draftOrders.entry[1].resource"]


# ---------------------------------------------------------------- a dispatched order the service cannot obtain


def missing_order(**fields: Any) -> dict[str, Any]:
    """order-dispatch for ServiceRequest/lb-1, which the prefetch does not carry."""
    return dispatch_request(dispatched=("ServiceRequest/lb-1",), **fields)


@pytest.mark.parametrize(("fields", "why"), [
    ({}, "names no fhirServer"),
    ({"prefetch": {"serviceRequests": bundle(service_request("0530U", "2025-03-03", rid="other",
                                                             status="active"))}}, "names no fhirServer"),
    ({"prefetch": {"serviceRequests": bundle()}}, "names no fhirServer"),
], ids=["no-prefetch", "another-order-prefetched", "empty-prefetch"])
def test_a_dispatched_order_neither_prefetched_nor_fetchable_is_412(cds: LiveService, fields: dict[str, Any],
                                                                    why: str) -> None:
    """CDS Hooks 2.0: required data neither prefetched nor obtainable from the FHIR server is a 412."""
    [issue] = cds.call(missing_order(**fields), service=DISPATCH, expect=412)["issue"]
    assert "ServiceRequest/lb-1" in issue["diagnostics"] and why in issue["diagnostics"]
    assert issue["expression"] == ["context.dispatchedOrders"] and issue["code"] == "required"


def test_a_dispatched_order_on_a_fhir_server_it_may_not_call_is_412(cds: LiveService) -> None:
    body = missing_order()
    body["fhirServer"] = "https://ehr.example/r4"
    [issue] = cds.call(body, service=DISPATCH, expect=412)["issue"]
    assert "may call" in issue["diagnostics"] and issue["expression"] == ["context.dispatchedOrders"]


@pytest.fixture
def fhir() -> Iterator[FhirTestServer]:
    server = FhirTestServer()
    yield server
    server.close()


@pytest.fixture
def with_fhir(service_factory: Any, fhir: FhirTestServer) -> LiveService:
    service: LiveService = service_factory(FHIR_SERVERS=fhir.base, FHIR_ALLOW_HTTP=True, FHIR_BUDGET_SECONDS=1.0,
                                           FHIR_CONNECT_TIMEOUT=0.5)
    return service


def test_a_dispatched_order_the_fhir_server_fails_to_give_is_412(with_fhir: LiveService,
                                                                 fhir: FhirTestServer) -> None:
    fhir.mode = "500"
    body = missing_order()
    body["fhirServer"] = fhir.base
    [issue] = with_fhir.call(body, service=DISPATCH, expect=412)["issue"]
    assert "search on the fhirServer failed" in issue["diagnostics"]


def test_a_dispatched_order_the_fhir_server_does_not_have_is_400(with_fhir: LiveService,
                                                                 fhir: FhirTestServer) -> None:
    body = missing_order()
    body["fhirServer"] = fhir.base
    [issue] = with_fhir.call(body, service=DISPATCH, expect=400)["issue"]
    assert "ServiceRequest/lb-1" in issue["diagnostics"] and issue["expression"] == ["context.dispatchedOrders"]
    fhir.resources["ServiceRequest/lb-1"] = service_request("0530U", "2025-03-03", rid="lb-1", status="active")
    body["hookInstance"] += "-2"
    assert coverage_info(with_fhir.call(body, service=DISPATCH))[0]["covered"]["valueCode"] == "not-covered"


def test_a_dispatched_order_that_is_not_a_service_request_needs_nothing(cds: LiveService) -> None:
    body = dispatch_request(dispatched=("DeviceRequest/d1",))
    assert cds.call(body, service=DISPATCH) == {"cards": [], "systemActions": []}


def test_coverage_is_still_a_400_when_it_cannot_be_obtained(cds: LiveService) -> None:
    order = service_request("0530U", "2025-03-03", rid="lb-2", status="active")
    [issue] = cds.call(dispatch_request(order, coverages=None), service=DISPATCH, expect=400)["issue"]
    assert issue["expression"] == ["prefetch.coverage"]
    assert "the 'coverage' prefetch was not provided and the request names no fhirServer" in issue["diagnostics"]


@pytest.mark.parametrize("selection", ["https://ehr.example/fhir/ServiceRequest/b", "ServiceRequest/b/_history/3"])
def test_a_selection_absolute_or_versioned_names_the_draft_order(cds: LiveService, selection: str) -> None:
    a = service_request("0530U", "2025-03-03", rid="a")
    b = service_request("0091U", "2025-03-03", rid="b")
    body = cds.call(hook_request(a, b, hook="order-select", selections=[selection]), service=SELECT)
    assert [action["resource"]["id"] for action in body["systemActions"]] == ["b"]
