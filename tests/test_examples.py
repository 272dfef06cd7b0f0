"""The example requests in examples/ produce the situation their names promise."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LiveService, coverage_info

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXPECTED = {  # file -> (HTTP status, indicators of the cards in order, covered values of the verdicts)
    "01-investigational-listed-code": (200, ["warning", "info"], ["not-covered"]),
    "02-retired-policy": (200, ["info"], ["conditional"]),
    "03-fep-member": (200, ["info"], ["conditional"]),
    "04-other-policy-nsclc": (200, ["info"], ["conditional"]),
    "05-listed-code-routed-use": (200, ["warning", "info"], ["not-covered"]),
    "06-coverage-not-in-force": (200, ["info"], ["not-covered"]),
    "07-other-payer": (400, [], []),
    "08-unrelated-order": (200, [], []),
    "09-order-select": (200, ["warning", "info"], ["not-covered"]),
    "10-unlisted-test-reviewed-use": (200, ["warning", "info"], ["not-covered"]),
    "11-order-dispatch": (200, ["warning"], ["not-covered"]),
    "12-prenatal-cell-free-dna": (200, [], []),
    "13-undated-order": (200, ["info"], ["conditional"]),
}


def test_every_example_is_listed() -> None:
    assert {p.stem for p in EXAMPLES.glob("*.json")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example(cds: LiveService, name: str) -> None:
    body = json.loads((EXAMPLES / f"{name}.json").read_text())
    status, indicators, covered = EXPECTED[name]
    response = cds.call(body, expect=status)
    if status != 200:
        assert response["resourceType"] == "OperationOutcome"
        return
    assert [c["indicator"] for c in response["cards"]] == indicators
    assert [i["covered"]["valueCode"] for i in coverage_info(response)] == covered


def _orders(body: dict[str, Any]) -> list[dict[str, Any]]:
    bundles = [body["context"].get("draftOrders") or {}, *(v for v in (body.get("prefetch") or {}).values()
                                                            if isinstance(v, dict))]
    return [e["resource"] for b in bundles for e in b.get("entry", [])
            if e.get("resource", {}).get("resourceType") == "ServiceRequest"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_orders_carry_what_crds_servicerequest_profile_requires(name: str) -> None:
    """The orders come back in the update actions, which Inferno's CRD kit validates against CRD's
    ServiceRequest profile (profile-servicerequest: status, intent, code, subject, authoredOn, requester)."""
    body = json.loads((EXAMPLES / f"{name}.json").read_text())
    for order in _orders(body):
        missing = [k for k in ("status", "intent", "code", "subject", "authoredOn", "requester") if k not in order]
        assert not missing, (name, order.get("id"), missing)
