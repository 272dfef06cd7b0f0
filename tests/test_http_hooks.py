"""The CDS Hooks interface over real HTTP: discovery, verdicts and cards as CRD 2.2.1 shapes them,
stable assertions, retries, the hook-13 coverage check and its sandbox mode, order-dispatch,
configuration, and every bad request. The policy's rules themselves are in the case corpus
(test_corpus.py). Every 200 hook response passes tests/crd_conformance.py (LiveService.call).
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

import pytest
import requests
from sqlalchemy import func, select

from cds_service.store import cards, coverage_assertions, feedback, hook_calls
from tests.conftest import (
    CPT,
    DISPATCH,
    SELECT,
    SIGN,
    LiveService,
    assertion_ids,
    bundle,
    coverage,
    coverage_info,
    dispatch_request,
    hook_request,
    service_request,
)
from tests.crd_conformance import CARD_TYPES, CRD_EXT, card_kind, discovery_problems

# ---------------------------------------------------------------- discovery


def test_discovery_declares_three_services_the_crd_version_and_card_type_options(cds: LiveService) -> None:
    resp = requests.get(cds.url("/cds-services"), timeout=5)
    assert resp.status_code == 200
    body = resp.json()
    assert discovery_problems(body) == []
    services = {s["hook"]: s for s in body["services"]}
    assert set(services) == {"order-sign", "order-select", "order-dispatch"}
    for s in services.values():
        assert s["extension"]["davinci-crd.version"] == ["2.2"]
        assert s["prefetch"]["coverage"] == "Coverage?patient={{context.patientId}}&status=active"
        codes = {o["code"] for o in s["extension"]["davinci-crd.configuration-options"]}
        assert codes == {"coverage-info", "guideline"} and codes <= CARD_TYPES
    assert "{{context.dispatchedOrders" in services["order-dispatch"]["prefetch"]["serviceRequests"]


# ---------------------------------------------------------------- the verdict and its cards


def test_listed_code_verdict_and_cards(cds: LiveService) -> None:
    body = cds.call(hook_request(service_request("0530U", "2025-03-03", rid="lb-1")))
    warning, remove = body["cards"]
    assert warning["indicator"] == "warning" and warning["source"]["topic"]["code"] == "coverage-info"
    assert "0530U" in warning["summary"] and "investigational" in warning["summary"]
    assert card_kind(warning) == "external-reference" and "suggestions" not in warning
    assert warning["links"][0]["url"].endswith("/policies/mp-2-267")
    assert all(r["display"] for r in warning["overrideReasons"])
    [suggestion] = remove["suggestions"]
    assert suggestion["actions"] == [{"type": "delete", "description": suggestion["actions"][0]["description"],
                                      "resourceId": "ServiceRequest/lb-1"}]
    assert "links" not in remove
    [info] = coverage_info(body)
    assert info["covered"]["valueCode"] == "not-covered" and "pa-needed" not in info
    assert info["coverage"]["valueReference"] == {"reference": "Coverage/cov-1"}
    assert info["billingCode"]["valueCoding"] == {"system": CPT, "code": "0530U"}
    assert info["reason"]["valueCodeableConcept"]["coding"][0]["code"] == "investigational-code-list"
    assert "0530U" in info["reason"]["valueCodeableConcept"]["text"]
    detail = {e["url"]: e for e in info["detail"]["extension"]}
    assert detail["category"]["valueCode"] == "cat-other"
    assert detail["code"]["valueCodeableConcept"]["coding"][0]["code"] == "policy-link"
    assert info["date"]["valueDate"] == "2026-11-25" and info["expiry-date"]["valueDate"] == "2026-06-30"
    assert body["systemActions"][0]["type"] == "update" and body["systemActions"][0]["resource"]["id"] == "lb-1"
    assert body["extension"]["systemActions"] == body["systemActions"]


def test_public_base_url_makes_the_policy_links(service_factory: Any) -> None:
    cds = service_factory(PUBLIC_BASE_URL="https://cds.example.org")
    body = cds.call(hook_request(service_request("0530U", "2025-03-03")))
    assert body["cards"][0]["links"][0]["url"] == "https://cds.example.org/policies/mp-2-267"
    detail = {e["url"]: e for e in coverage_info(body)[0]["detail"]["extension"]}
    assert detail["value"]["valueUrl"] == "https://cds.example.org/policies/mp-2-267"


def test_retired_verdict_says_what_information_is_needed(cds: LiveService) -> None:
    body = cds.call(hook_request(service_request("0530U", "2026-07-01")))
    [card] = body["cards"]
    assert card["indicator"] == "info" and "retired" in card["summary"]
    [info] = coverage_info(body)
    assert info["covered"]["valueCode"] == "conditional" and "pa-needed" not in info
    assert info["info-needed"]["valueCode"] == "OTH"
    # The delegated reviewer is named, and its address is in the verdict's detail, but the card (an
    # External Reference card) does not send the clinician to its provider portal (CRD resp-17).
    successor = cds.pipeline.knowledge.successor
    assert successor.label in card["detail"] and successor.url not in {link["url"] for link in card["links"]}
    assert successor.url in str(info["detail"])


def test_undated_order_is_not_given_a_date(cds: LiveService) -> None:
    body = cds.call(hook_request(service_request("0530U", None)))
    ext = body["systemActions"][0]["resource"]["extension"][0]["extension"]
    assert sorted(e["valueCode"] for e in ext if e["url"] == "info-needed") == ["OTH", "timeframe"]
    assert "not given" in body["cards"][0]["detail"]


def test_each_coverage_gets_its_own_assertion(cds: LiveService) -> None:
    orders = [service_request(c, "2025-03-03", rid=f"o{i}") for i, c in enumerate(("0530U", "0091U", "0453U"))]
    body = cds.call(hook_request(*orders, coverages=(coverage("a"), coverage("b"))))
    assert len(body["systemActions"]) == 3
    ids = assertion_ids(body)
    assert len(ids) == 6 and len(set(ids)) == 6


def test_an_other_payers_coverage_information_on_the_order_is_kept(cds: LiveService) -> None:
    theirs = {"url": CRD_EXT, "extension": [{"url": "coverage", "valueReference": {"reference": "Coverage/other"}},
                                            {"url": "covered", "valueCode": "covered"},
                                            {"url": "date", "valueDate": "2025-03-01"},
                                            {"url": "coverage-assertion-id", "valueString": "theirs-1"}]}
    order = service_request("0530U", "2025-03-03", extension=[theirs])
    body = cds.call(hook_request(order))
    extensions = body["systemActions"][0]["resource"]["extension"]
    assert extensions[0] == theirs and len(extensions) == 2


# ---------------------------------------------------------------- stable assertions and retries


def test_unchanged_order_resent_with_our_verdict_keeps_it_and_gets_no_new_action(cds: LiveService) -> None:
    first = cds.call(hook_request(service_request("0530U", "2025-03-03")))
    updated = first["systemActions"][0]["resource"]
    [assertion] = assertion_ids(first)

    again = cds.call(hook_request(updated))  # the EHR applied our update and re-signs
    assert again["systemActions"] == []  # CRD resp-35: nothing new
    assert again["cards"][0]["indicator"] == "warning"  # the clinician still sees why

    without = cds.call(hook_request(service_request("0530U", "2025-03-03")))  # it did not keep the extension
    assert assertion_ids(without) == [assertion]  # the same assertion, re-sent
    with cds.pipeline.store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(coverage_assertions)).scalar() == 1

    changed = cds.call(hook_request(updated, coverages=(coverage(plan="FEP Blue Standard"),)))
    [new] = assertion_ids(changed)
    assert new != assertion  # a changed verdict is a new assertion


def test_a_retry_of_the_same_hook_instance_gets_the_same_answer_and_is_stored_once(cds: LiveService) -> None:
    request = hook_request(service_request("0530U", "2025-03-03"))
    first = cds.call(request)
    second = cds.call(copy.deepcopy(request))
    assert second == first
    with cds.pipeline.store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(hook_calls)).scalar() == 1
        assert conn.execute(select(func.count()).select_from(cards)).scalar() == len(first["cards"])


def test_a_new_call_is_not_looked_up_in_the_record_first(cds: LiveService, monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries are rare: the record's unique retry key finds them, so a new call reads nothing first."""
    store = cds.pipeline.store
    lookups: list[str] = []
    recorded_response = store.recorded_response

    def looked_up(key: str) -> Any:
        lookups.append(key)
        return recorded_response(key)

    monkeypatch.setattr(store, "recorded_response", looked_up)
    request = hook_request(service_request("0530U", "2025-03-03"))
    first = cds.call(request)
    assert lookups == []
    assert cds.call(copy.deepcopy(request)) == first and len(lookups) == 1


def test_a_hook_instance_reused_for_another_request_is_409(cds: LiveService) -> None:
    request = hook_request(service_request("0530U", "2025-03-03"))
    cds.call(request)
    other = copy.deepcopy(request)
    other["context"]["draftOrders"]["entry"][0]["resource"]["occurrenceDateTime"] = "2025-04-04"
    answer = cds.call(other, expect=409)
    assert "hookInstance" in answer["issue"][0]["diagnostics"]


# ---------------------------------------------------------------- the coverage check (CRD hook-13) and sandbox mode


@pytest.mark.parametrize(("coverages", "prefetch", "message"), [
    (None, {}, "no fhirServer"),
    (None, {"coverage": None}, "No Coverage is accessible"),
    ((coverage(payor="Aetna"),), None, "Aetna"),
    ((coverage(payor=None),), None, "names no payer"),
    ((coverage("cap", order=2), coverage("aet", payor="Aetna", order=1)), None, "Coverage/aet"),
], ids=["not-provided", "none-found", "other-payer", "no-payer", "capital-is-secondary"])
def test_a_coverage_this_endpoint_does_not_handle_is_400(cds: LiveService, coverages: Any, prefetch: Any,
                                                         message: str) -> None:
    body = hook_request(service_request("0530U", "2025-03-03"), coverages=coverages, prefetch=prefetch)
    answer = cds.call(body, expect=400)
    assert answer["resourceType"] == "OperationOutcome"
    assert message in answer["issue"][0]["diagnostics"] and answer["issue"][0]["expression"] == ["prefetch.coverage"]
    assert cds.pipeline.store.count(hook_calls) == 0


def test_the_coverage_is_not_asked_for_when_no_order_is_judged(cds: LiveService) -> None:
    body = cds.call(hook_request(service_request("85025", "2025-03-03"), coverages=None))
    assert body == {"cards": [], "systemActions": []}


def test_sandbox_mode_serves_clients_without_a_coverage(service_factory: Any) -> None:
    sandbox = service_factory(MODE="sandbox")
    order = {"resourceType": "ServiceRequest", "id": "demo", "status": "draft", "intent": "plan",
             "subject": {"reference": "Patient/p1"}, "code": {"coding": [{"system": CPT, "code": "0530U"}]}}
    body = hook_request(order, coverages=None, selections=["ServiceRequest/demo"])
    answer = sandbox.call(body)
    assert [c["indicator"] for c in answer["cards"]] == ["info", "info"]
    assert "retired" in answer["cards"][0]["summary"] and "systemActions" in answer
    assert answer["systemActions"] == []
    other = sandbox.call(hook_request(service_request("0530U", "2025-03-03"), coverages=(coverage(payor="Aetna"),)))
    assert other["cards"] == []  # another payer's member: nothing to say


def test_mode_setting_is_checked(service_factory: Any) -> None:
    with pytest.raises(ValueError, match="MODE"):
        service_factory(MODE="lenient")


# ---------------------------------------------------------------- hooks


def test_order_select_judges_only_selected_orders(cds: LiveService) -> None:
    a = service_request("0530U", "2025-03-03", rid="a")
    b = service_request("0091U", "2025-03-03", rid="b")
    body = cds.call(hook_request(a, b, hook="order-select", selections=["ServiceRequest/b"]), service=SELECT)
    assert ["0091U" in c["summary"] for c in body["cards"]] == [True, True]
    assert [a["resource"]["id"] for a in body["systemActions"]] == ["b"]


def test_order_sign_ignores_selections(cds: LiveService) -> None:
    a = service_request("0530U", "2025-03-03", rid="a")
    b = service_request("0091U", "2025-03-03", rid="b")
    assert len(cds.call(hook_request(a, b, selections=["ServiceRequest/b"]))["systemActions"]) == 2


def test_order_select_needs_its_selections(cds: LiveService) -> None:
    answer = cds.call(hook_request(service_request(), hook="order-select"), service=SELECT, expect=400)
    assert "selections" in answer["issue"][0]["diagnostics"]


def test_order_dispatch_judges_the_dispatched_order_without_a_remove_suggestion(cds: LiveService) -> None:
    order = service_request("0530U", "2025-03-03", rid="lab-1", status="active")
    body = cds.call(dispatch_request(order), service=DISPATCH)
    assert [c["indicator"] for c in body["cards"]] == ["warning"]
    assert not any("suggestions" in c for c in body["cards"])
    [info] = coverage_info(body)
    assert info["covered"]["valueCode"] == "not-covered"


def test_order_dispatch_in_the_pre_publication_shape_inferno_sends(cds: LiveService) -> None:
    order = service_request("0530U", "2025-03-03", rid="lab-2", status="active")
    body = dispatch_request(coverages=(coverage(),), prefetch={"order": order})
    del body["context"]["dispatchedOrders"]
    body["context"]["order"] = "ServiceRequest/lab-2"
    answer = cds.call(body, service=DISPATCH)
    assert coverage_info(answer)[0]["covered"]["valueCode"] == "not-covered"


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda c: c.pop("dispatchedOrders"), "dispatchedOrders"),
    (lambda c: c.update(dispatchedOrders=["nope"]), "dispatchedOrders"),
    (lambda c: c.pop("performer"), "performer"),
    (lambda c: c.update(fulfillmentTasks={"resourceType": "Task"}), "fulfillmentTasks"),
])
def test_order_dispatch_context_is_checked(cds: LiveService, mutate: Any, expected: str) -> None:
    body = dispatch_request(service_request("0530U", "2025-03-03", rid="x", status="active"))
    mutate(body["context"])
    assert expected in cds.call(body, service=DISPATCH, expect=400)["issue"][0]["diagnostics"]


def test_unknown_context_fields_are_ignored(cds: LiveService) -> None:
    assert cds.call(hook_request(service_request(), futureField={"x": 1}))["cards"]


def test_sandbox_empty_coding_is_answered(cds: LiveService) -> None:
    order = {"resourceType": "ServiceRequest", "id": "x", "status": "draft", "intent": "plan",
             "subject": {"reference": "Patient/p1"}, "code": {"coding": [{}]}}
    body = hook_request(order, hook="order-select", selections=["ServiceRequest/x"])
    assert cds.call(body, service=SELECT) == {"cards": []}


def test_bundle_without_type_and_other_resources_are_tolerated(cds: LiveService) -> None:
    body = hook_request(service_request("0530U", "2025-03-03"))
    body["context"]["draftOrders"].pop("type", None)
    body["context"]["draftOrders"]["entry"].insert(0, {"resource": {"resourceType": "DeviceRequest", "bogus": 1}})
    assert cds.call(body)["cards"][0]["indicator"] == "warning"


# ---------------------------------------------------------------- CRD configuration and version


def test_configuration_can_turn_off_coverage_info(cds: LiveService) -> None:
    body = hook_request(service_request("0530U", "2025-03-03"))
    body["extension"] = {"davinci-crd.configuration": {"coverage-info": False}}
    assert cds.call(body) == {"cards": [], "systemActions": []}


def test_configuration_can_turn_off_guideline_cards(cds: LiveService) -> None:
    body = hook_request(service_request("0239U", "2025-03-03", icd=("C34.9",)))
    body["extension"] = {"davinci-crd.configuration": {"guideline": False, "max-cards": 10}}
    answer = cds.call(body)
    assert answer["cards"] == [] and len(answer["systemActions"]) == 1  # the verdict still comes


def test_configuration_value_must_be_boolean(cds: LiveService) -> None:
    body = hook_request(service_request())
    body["extension"] = {"davinci-crd.configuration": {"coverage-info": "no"}}
    assert cds.call(body, expect=400)["resourceType"] == "OperationOutcome"


def test_requested_crd_version(cds: LiveService) -> None:
    body = hook_request(service_request("0530U", "2025-03-03"))
    body["extension"] = {"davinci-crd.requestedVersion": "2.2"}
    assert cds.call(body)["systemActions"]
    body = hook_request(service_request("0530U", "2025-03-03"))
    body["extension"] = {"davinci-crd.requestedVersion": "1.0"}
    assert "not supported" in cds.call(body, expect=422)["issue"][0]["diagnostics"]


# ---------------------------------------------------------------- wrong requests


def _outcome(resp: requests.Response, status: int) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["resourceType"] == "OperationOutcome"
    return str(body["issue"][0]["diagnostics"])


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda b: b.pop("hook"), "hook"),
    (lambda b: b.pop("hookInstance"), "hookInstance"),
    (lambda b: b.pop("context"), "context"),
    (lambda b: b["context"].pop("patientId"), "patientId"),
    (lambda b: b.update(hook="patient-view"), "order-sign"),
    (lambda b: b["context"].update(draftOrders=[1, 2]), "Bundle"),
    (lambda b: b["context"].pop("draftOrders"), "Bundle"),
    (lambda b: b["context"]["draftOrders"]["entry"][0]["resource"].pop("subject"), "subject"),
    (lambda b: b["context"]["draftOrders"]["entry"][0]["resource"].update(subject={}), "subject"),
    (lambda b: b["context"]["draftOrders"]["entry"][0]["resource"].update(occurrenceDateTime="3 March"),
     "occurrenceDateTime"),
    (lambda b: b["context"]["draftOrders"]["entry"][0]["resource"].update(status=7), "status"),
    (lambda b: b.update(prefetch=[1]), "prefetch"),
    (lambda b: b.update(prefetch=False), "prefetch"),
    (lambda b: b.update(extension=None), "extension"),
    (lambda b: b.update(extension={"davinci-crd.configuration": None}), "configuration"),
    (lambda b: b.update(extension={"davinci-crd.requestedVersion": None}), "requestedVersion"),
    (lambda b: b.update(fhirServer=""), "fhirServer"),
    (lambda b: b.update(fhirAuthorization=None), "fhirAuthorization"),
    (lambda b: b["context"]["draftOrders"].update(entry=None), "entry"),
    (lambda b: b["context"]["draftOrders"]["entry"].append(7), "draftOrders entry"),
    (lambda b: b["context"]["draftOrders"]["entry"].append({"resource": {"id": "x"}}), "draftOrders entry"),
    (lambda b: b["context"]["draftOrders"]["entry"][0]["resource"].update(occurrenceDateTime="2025-02-30"),
     "occurrenceDateTime"),
], ids=["no-hook", "no-hookInstance", "no-context", "no-patient", "wrong-hook", "orders-not-bundle", "no-orders",
        "sr-no-subject", "sr-empty-subject", "sr-bad-date", "sr-bad-status", "prefetch-not-object", "prefetch-false",
        "extension-null", "configuration-null", "version-null", "fhir-server-empty", "fhir-authorization-null",
        "entry-null", "entry-not-object", "entry-resource-without-type", "sr-no-such-day"])
def test_bad_requests_get_400_operation_outcome(cds: LiveService, mutate: Any, expected: str) -> None:
    body = hook_request(service_request())
    mutate(body)
    resp = cds.http.post(cds.url(f"/cds-services/{SIGN}"), json=body, timeout=5)
    assert expected in _outcome(resp, 400)


def test_judged_orders_are_validated_in_full_others_only_in_what_is_read(cds: LiveService) -> None:
    sign = cds.url(f"/cds-services/{SIGN}")
    cbc = service_request("85025", rid="cbc", note="see chart")  # note is Annotation[]: fhir.resources rejects it
    assert cds.call(hook_request(cbc))["cards"] == []  # not this policy's order: not held to full validation

    listed = service_request("0530U", rid="lb", note="see chart")
    resp = cds.http.post(sign, json=hook_request(cbc, listed), timeout=5)
    assert "note" in _outcome(resp, 400)
    assert resp.json()["issue"][0]["expression"] == ["context.draftOrders.entry[1].resource.note"]

    # An element read to classify the order must be readable, whatever the order: a misread code or
    # date could turn a liquid biopsy into an order the policy seems to have nothing to say about.
    for element, value in [("code", {"coding": {"system": CPT, "code": "85025"}}),  # an object, not an array
                           ("code", {"coding": [{"system": CPT, "code": ""}]}),  # FHIR has no empty strings
                           ("occurrenceDateTime", "3 March 2025"), ("occurrenceDateTime", "2025-02-30"),
                           ("occurrencePeriod", {"start": "2025-03-03T10:00:00"}),  # a time needs its zone
                           ("doNotPerform", "yes")]:
        broken = {**service_request("85025", rid="cbc"), element: value}
        resp = cds.http.post(sign, json=hook_request(broken), timeout=5)
        assert element in _outcome(resp, 400), (element, value)
        assert resp.json()["issue"][0]["expression"][0].startswith(f"context.draftOrders.entry[0].resource.{element}")


def test_invalid_json_is_400(cds: LiveService) -> None:
    assert "not valid JSON" in _outcome(cds.post_raw(f"/cds-services/{SIGN}", b"{nope"), 400)


def test_non_json_body_is_415(cds: LiveService) -> None:
    _outcome(cds.post_raw(f"/cds-services/{SIGN}", b"hook=order-sign", "application/x-www-form-urlencoded"), 415)


def test_unknown_service_is_404(cds: LiveService) -> None:
    _outcome(cds.http.post(cds.url("/cds-services/nope"), json={}, timeout=5), 404)
    _outcome(cds.http.get(cds.url("/nowhere"), timeout=5), 404)


def test_wrong_method_is_405(cds: LiveService) -> None:
    _outcome(cds.http.get(cds.url(f"/cds-services/{SIGN}"), timeout=5), 405)
    _outcome(cds.http.delete(cds.url("/cds-services"), timeout=5), 405)


def test_body_over_limit_is_413(service_factory: Any) -> None:
    small = service_factory(MAX_CONTENT_LENGTH=2048)
    resp = small.post_raw(f"/cds-services/{SIGN}", b"{" + b" " * 4096 + b"}")
    _outcome(resp, 413)


def test_bad_request_writes_nothing(cds: LiveService) -> None:
    body = hook_request(service_request())
    body.pop("hookInstance")
    cds.http.post(cds.url(f"/cds-services/{SIGN}"), json=body, timeout=5)
    assert cds.pipeline.store.count(hook_calls) == 0


def test_null_element_in_an_order_is_400(cds: LiveService) -> None:
    body = hook_request(service_request("0530U", "2025-03-03", subject=None))
    resp = cds.http.post(cds.url(f"/cds-services/{SIGN}"), json=body, timeout=5)
    assert "subject" in _outcome(resp, 400)


@pytest.mark.parametrize("element", [{"_status": "true"}, {"status__ext": "[1]"}])
def test_an_order_fhir_resources_cannot_read_is_400_not_500(cds: LiveService, element: dict[str, Any]) -> None:
    body = hook_request(service_request("0530U", "2025-03-03", **element))
    resp = cds.http.post(cds.url(f"/cds-services/{SIGN}"), json=body, timeout=5)
    assert next(iter(element)) in _outcome(resp, 400)


def test_empty_elements_are_tolerated_and_not_echoed(cds: LiveService) -> None:
    body = cds.call(hook_request(service_request("0530U", "2025-03-03", reasonCode=[], category=[{}])))
    resource = body["systemActions"][0]["resource"]
    assert "reasonCode" not in resource and "category" not in resource


def test_unreadable_coverage_is_indeterminate_for_a_technical_reason(cds: LiveService) -> None:
    broken = coverage(period={"start": 20250101})
    body = cds.call(hook_request(service_request("0530U", "2025-03-03"), coverages=(broken,)))
    [info] = coverage_info(body)
    assert info["covered"]["valueCode"] == "indeterminate"
    assert info["reason"]["valueCodeableConcept"]["coding"][0]["code"] == "technical"
    assert "period" in info["reason"]["valueCodeableConcept"]["text"]


# ---------------------------------------------------------------- audit, assertions, feedback


def test_hook_call_is_recorded_with_its_response_and_assertions(cds: LiveService) -> None:
    req = hook_request(service_request("0530U", "2025-03-03", rid="lb-9"))
    body = cds.call(req)
    [info] = coverage_info(body)
    assertion_id = info["coverage-assertion-id"]["valueString"]
    with cds.pipeline.store.engine.connect() as conn:
        [call] = conn.execute(select(hook_calls)).mappings().all()
        [row] = conn.execute(select(coverage_assertions)).mappings().all()
        issued = conn.execute(select(cards.c.template)).scalars().all()
    assert call["hook_instance"] == req["hookInstance"] and call["response"] == body
    assert call["decision_summary"] == "investigational-code-list" and len(call["request_digest"]) == 64
    assert call["orders"][0]["reference"] == "ServiceRequest/lb-9"
    assert row["assertion_id"] == assertion_id and row["covered"] == "not-covered" and row["code"] == "0530U"
    assert row["information"] == body["systemActions"][0]["resource"]["extension"][0]
    assert sorted(issued) == ["investigational-code-list", "remove-order"]
    looked_up = cds.http.get(cds.url(f"/coverage-assertions/{assertion_id}"), timeout=5)
    assert looked_up.status_code == 200
    assert looked_up.json()["policy"] == "MP 2.267" and looked_up.json()["date_of_service"] == "2025-03-03"
    _outcome(cds.http.get(cds.url("/coverage-assertions/unknown"), timeout=5), 404)


def test_feedback_is_validated_and_stored(cds: LiveService) -> None:
    card = cds.call(hook_request(service_request("0530U", "2025-03-03")))["cards"][0]
    fb = {"feedback": [{"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-25T10:00:00Z",
                        "overrideReason": {"reason": card["overrideReasons"][0], "userComment": "trial"}}]}
    resp = cds.http.post(cds.url(f"/cds-services/{SIGN}/feedback"), json=fb, timeout=5)
    assert resp.status_code == 200 and resp.json() == {"stored": 1}
    [row] = cds.pipeline.store.feedback_for(card["uuid"])
    assert row["outcome"] == "overridden" and row["override_reason"]["userComment"] == "trial"


@pytest.mark.parametrize("entry", [
    {"outcome": "overridden", "outcomeTimestamp": "2026-11-25T10:00:00Z"},
    {"card": "c", "outcome": "maybe", "outcomeTimestamp": "2026-11-25T10:00:00Z"},
    {"card": "c", "outcome": "accepted", "outcomeTimestamp": "2026-11-25T10:00:00Z"},
    {"card": "c", "outcome": "overridden", "outcomeTimestamp": "yesterday"},
    {"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-11-25"},
    {"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-02-30T10:00:00Z"},
    {"card": "c", "outcome": "accepted", "outcomeTimestamp": "2026-11-25T10:00:00Z", "acceptedSuggestions": ["x"]},
], ids=["no-card", "bad-outcome", "accepted-without-suggestion", "bad-timestamp", "date-not-date-time",
        "no-such-day", "bad-suggestions"])
def test_bad_feedback_is_400_and_not_stored(cds: LiveService, entry: dict[str, Any]) -> None:
    resp = cds.http.post(cds.url(f"/cds-services/{SIGN}/feedback"), json={"feedback": [entry]}, timeout=5)
    _outcome(resp, 400)
    assert cds.pipeline.store.count(feedback) == 0


def test_feedback_is_tied_to_the_card_and_call_it_names(cds: LiveService) -> None:
    req = hook_request(service_request("0530U", "2025-03-03"))
    remove = next(c for c in cds.call(req)["cards"] if c.get("suggestions"))
    fb = {"feedback": [{"card": remove["uuid"], "outcome": "accepted", "outcomeTimestamp": "2026-11-25T10:00:00Z",
                        "acceptedSuggestions": [{"id": remove["suggestions"][0]["uuid"]}]}]}
    assert cds.http.post(cds.url(f"/cds-services/{SIGN}/feedback"), json=fb, timeout=5).status_code == 200
    with cds.pipeline.store.engine.connect() as conn:
        joined = conn.execute(select(hook_calls.c.hook_instance, cards.c.template, feedback.c.outcome)
                              .select_from(feedback.join(cards, cards.c.uuid == feedback.c.card)
                                           .join(hook_calls, hook_calls.c.id == cards.c.call_id))).all()
    assert [tuple(r) for r in joined] == [(req["hookInstance"], "remove-order", "accepted")]


def _feedback_problem(cds: LiveService, entry: dict[str, Any], service: str = SIGN, status: int = 422) -> str:
    before = cds.pipeline.store.count(feedback)
    good = {"card": entry["card"], "outcome": "overridden", "outcomeTimestamp": "2026-11-25T10:00:00Z"}
    resp = cds.http.post(cds.url(f"/cds-services/{service}/feedback"), json={"feedback": [good, entry]}, timeout=5)
    problem = _outcome(resp, status)
    assert cds.pipeline.store.count(feedback) == before  # nothing of the request is stored
    return problem


def test_feedback_about_cards_never_issued_is_404_and_about_what_they_did_not_offer_422(cds: LiveService) -> None:
    body = cds.call(hook_request(service_request("0530U", "2025-03-03")))
    warning = next(c for c in body["cards"] if c.get("overrideReasons"))
    ts = "2026-11-25T10:00:00Z"
    unknown = {"card": str(uuid.uuid4()), "outcome": "overridden", "outcomeTimestamp": ts}
    resp = cds.http.post(cds.url(f"/cds-services/{SIGN}/feedback"), json={"feedback": [unknown]}, timeout=5)
    assert "No card with uuid" in _outcome(resp, 404)
    assert cds.pipeline.store.count(feedback) == 0
    # A card of this call, but the feedback names another service, a suggestion or a reason it did not offer.
    assert "No card" in _feedback_problem(cds, {"card": warning["uuid"], "outcome": "overridden",
                                                "outcomeTimestamp": ts}, SELECT, 404)
    assert "offered no suggestion" in _feedback_problem(cds, {
        "card": warning["uuid"], "outcome": "accepted", "outcomeTimestamp": ts,
        "acceptedSuggestions": [{"id": str(uuid.uuid4())}]})
    assert "offered no override reason" in _feedback_problem(cds, {
        "card": warning["uuid"], "outcome": "overridden", "outcomeTimestamp": ts,
        "overrideReason": {"reason": {"code": "made-up", "system": "http://example.org"}}})


def test_an_override_reason_on_a_card_that_offered_none_is_422(cds: LiveService) -> None:
    body = cds.call(hook_request(service_request("0530U", "2026-08-03")))  # after retirement: an info card
    [info] = [c for c in body["cards"] if not c.get("overrideReasons")]
    assert "offered no override reason 'made-up' (it offered none)" in _feedback_problem(cds, {
        "card": info["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-25T10:00:00Z",
        "overrideReason": {"reason": {"code": "made-up", "system": "http://example.org"}}})
    assert cds.pipeline.store.count(feedback) == 0


def test_the_same_feedback_entry_twice_in_one_request_is_stored_once(cds: LiveService) -> None:
    card = cds.call(hook_request(service_request("0530U", "2025-03-03")))["cards"][0]["uuid"]
    entry = {"card": card, "outcome": "overridden", "outcomeTimestamp": "2026-11-25T10:00:00Z"}
    later = {**entry, "outcomeTimestamp": "2026-11-25T10:05:00Z"}
    resp = cds.http.post(cds.url(f"/cds-services/{SIGN}/feedback"), json={"feedback": [entry, later, entry, entry]},
                         timeout=5)
    assert resp.status_code == 200 and resp.json() == {"stored": 2}
    assert cds.pipeline.store.count(feedback) == 2


def test_feedback_for_unknown_service_is_404(cds: LiveService) -> None:
    _outcome(cds.http.post(cds.url("/cds-services/nope/feedback"), json={"feedback": []}, timeout=5), 404)


# ---------------------------------------------------------------- CORS


def test_cors_preflight_without_authorization(cds: LiveService) -> None:
    resp = cds.http.options(cds.url(f"/cds-services/{SIGN}"), headers={
        "Origin": "https://sandbox.cds-hooks.org", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"}, timeout=5)
    assert resp.status_code == 200
    assert resp.headers["Access-Control-Allow-Origin"] in ("*", "https://sandbox.cds-hooks.org")
    allowed = resp.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    real = cds.http.get(cds.url("/cds-services"), headers={"Origin": "https://sandbox.cds-hooks.org"}, timeout=5)
    assert "Access-Control-Allow-Origin" in real.headers
    server_to_server = cds.http.post(cds.url(f"/cds-services/{SIGN}"), json=hook_request(service_request("0530U")),
                                     timeout=10)
    assert server_to_server.status_code == 200
    assert not [h for h in server_to_server.headers if h.lower().startswith("access-control-")]  # no Origin, no CORS
    browser = cds.http.post(cds.url(f"/cds-services/{SIGN}"), json=hook_request(service_request("0530U")),
                            headers={"Origin": "https://sandbox.cds-hooks.org"}, timeout=10)
    assert browser.headers["Access-Control-Allow-Origin"] in ("*", "https://sandbox.cds-hooks.org")


def test_cors_is_not_worked_out_for_requests_without_an_origin(cds: LiveService,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """flask-cors runs only for browsers' requests (it cost a server-to-server call ~18 us to find it had
    nothing to add)."""
    import flask_cors.extension

    matched: list[str] = []
    match = flask_cors.extension.try_match_pattern

    def counted(path: str, *args: Any, **kwargs: Any) -> Any:
        matched.append(path)
        return match(path, *args, **kwargs)

    monkeypatch.setattr(flask_cors.extension, "try_match_pattern", counted)
    resp = cds.http.post(cds.url(f"/cds-services/{SIGN}"), json=hook_request(service_request("0530U")), timeout=10)
    assert resp.status_code == 200 and matched == []
    browser = cds.http.get(cds.url("/cds-services"), headers={"Origin": "https://sandbox.cds-hooks.org"}, timeout=5)
    assert "Access-Control-Allow-Origin" in browser.headers and matched == ["/cds-services"]


def test_conditions_in_prefetch_decide_metastatic_colorectal_cancer(cds: LiveService) -> None:
    order = service_request(None, "2025-03-03", reasonReference=[{"reference": "Condition/crc"}])
    order["code"] = {"text": "ctDNA KRAS/NRAS/BRAF"}
    conditions = bundle(
        {"resourceType": "Condition", "id": "crc", "subject": {"reference": "Patient/p1"},
         "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "C18.7"}]}},
        {"resourceType": "Condition", "id": "mets", "subject": {"reference": "Patient/p1"},
         "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "C78.7"}]}})
    body = cds.call(hook_request(order, prefetch={"conditions": conditions}))
    assert "MP 2.316" in body["cards"][0]["summary"]


# ---------------------------------------------------------------- payers are configurable per deployment


def test_deployment_settings_extend_who_the_payer_and_the_fep_are(service_factory: Any) -> None:
    svc = service_factory(PAYER_NAMES="CapBlue Health Plans", PAYER_IDENTIFIERS="http://x12.org/payer-id|99999",
                          PLAN_MATCH_KEYWORDS="Fed Blue Local")
    order = service_request("0530U", "2025-03-03")
    by_name = svc.call(hook_request(order, coverages=(coverage(payor="CapBlue Health Plans"),)))
    assert coverage_info(by_name)[0]["covered"]["valueCode"] == "not-covered"
    by_id = {**coverage(payor=None), "payor": [{"identifier": {"system": "http://x12.org/payer-id", "value": "99999"}}]}
    assert coverage_info(svc.call(hook_request(order, coverages=(by_id,))))[0]["covered"]["valueCode"] == "not-covered"
    fep = svc.call(hook_request(order, coverages=(coverage(plan="Fed Blue Local"),)))
    assert coverage_info(fep)[0]["reason"]["valueCodeableConcept"]["coding"][0]["code"] == "product-variation-manual"
    # without the settings, the same names are another payer's
    assert service_factory().call(hook_request(order, coverages=(coverage(payor="CapBlue Health Plans"),)),
                                  expect=400)


def test_bad_payer_identifier_setting_stops_start_up(service_factory: Any) -> None:
    with pytest.raises(ValueError, match="PAYER_IDENTIFIERS"):
        service_factory(PAYER_IDENTIFIERS="no-bar")


def test_the_playground_endpoint_answers_like_the_hook_and_keeps_nothing(cds: LiveService) -> None:
    body = hook_request(service_request("0530U", "2025-03-03"))
    tried = cds.http.post(cds.url(f"/playground/evaluate/{SIGN}"), json=body, timeout=5)
    assert tried.status_code == 200
    again = cds.http.post(cds.url(f"/playground/evaluate/{SIGN}"), timeout=5,
                          json={**hook_request(service_request("0091U")), "hookInstance": body["hookInstance"]})
    assert again.status_code == 200  # no retry bookkeeping: nothing was kept to compare with
    assert cds.pipeline.store.count(hook_calls) == 0 and cds.pipeline.store.count(coverage_assertions) == 0
    answered = cds.call(body)
    assert [c["summary"] for c in answered["cards"]] == [c["summary"] for c in tried.json()["cards"]]
    _outcome(cds.http.post(cds.url("/playground/evaluate/nope"), json=body, timeout=5), 404)
