"""Which order a verdict is about, over real HTTP: orders without an id, the same order listed twice.
Every 200 answer also passes tests/crd_conformance.py (LiveService.call), which checks one
coverage-assertion-id per Coverage per updated order."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from cds_service.store import coverage_assertions
from tests.conftest import (
    DISPATCH,
    LiveService,
    assertion_ids,
    dispatch_request,
    hook_request,
    service_request,
)


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
                                  ("ServiceRequest/lb-dd", "https://ehr.example/fhir/ServiceRequest/lb-dd")],
                         ids=["same-reference", "relative-and-absolute"])
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
