"""Which order a verdict is about, over real HTTP: orders without an id. Every 200 answer also passes
tests/crd_conformance.py (LiveService.call), which checks one coverage-assertion-id per Coverage per
updated order."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from cds_service.store import coverage_assertions
from tests.conftest import (
    LiveService,
    assertion_ids,
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
