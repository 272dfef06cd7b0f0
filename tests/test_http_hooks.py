"""The CDS Hooks interface over real HTTP: every decision rule and every bad request.

Every 200 hook response is checked against the CDS Hooks rules in tests/cds_rules.py.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests
from sqlalchemy import select

from cds_service.store import coverage_assertions, feedback, hook_calls
from tests.conftest import (
    CPT,
    ICD,
    SELECT,
    SIGN,
    LiveService,
    bundle,
    coverage,
    coverage_info,
    hook_request,
    service_request,
)

# ---------------------------------------------------------------- discovery


def test_discovery_lists_both_hooks_with_prefetch_and_crd_options(cds: LiveService) -> None:
    resp = requests.get(cds.url("/cds-services"), timeout=5)
    assert resp.status_code == 200
    services = {s["id"]: s for s in resp.json()["services"]}
    assert {s["hook"] for s in services.values()} == {"order-sign", "order-select"}
    for s in services.values():
        assert s["description"] and s["title"]
        assert s["prefetch"]["patient"] == "Patient/{{context.patientId}}"
        assert s["prefetch"]["coverage"] == "Coverage?patient={{context.patientId}}&status=active"
        codes = {o["code"] for o in s["extension"]["davinci-crd.configuration-options"]}
        assert codes == {"coverage-info", "external-reference"}


# ---------------------------------------------------------------- rule 3: investigational


def test_listed_code_gets_warning_card_and_not_covered_assertion(cds: LiveService) -> None:
    body = cds.call(hook_request(service_request("0530U", "2025-03-03", rid="lb-1")))
    [card] = body["cards"]
    assert card["indicator"] == "warning"
    assert "0530U" in card["summary"] and "investigational" in card["summary"] and "MP 2.267" in card["summary"]
    assert "2025-03-03" in card["detail"] and "occurrenceDateTime" in card["detail"]
    assert card["source"]["label"] == "Capital Blue Cross"
    assert card["source"]["topic"]["code"] == "coverage-info"
    assert card["links"][0]["label"].startswith("MP 2.267")
    assert {o["code"] for o in card["overrideReasons"]} >= {"clinical-trial",
                                                            "patient-accepts-financial-responsibility"}
    [suggestion] = card["suggestions"]
    assert suggestion["actions"] == [{"type": "delete", "description": suggestion["actions"][0]["description"],
                                      "resourceId": ["ServiceRequest/lb-1"]}]
    [info] = coverage_info(body)
    assert info["covered"]["valueCode"] == "not-covered" and "pa-needed" not in info
    assert info["coverage"]["valueReference"] == {"reference": "Coverage/cov-1"}
    assert info["billingCode"]["valueCoding"]["code"] == "0530U"
    assert info["date"]["valueDate"] == "2026-11-25"
    assert "MP 2.267" in info["reason"]["valueCodeableConcept"]["text"]
    assert body["systemActions"][0]["type"] == "update"
    assert body["systemActions"][0]["resource"]["id"] == "lb-1"


def test_codes_are_compared_ignoring_case_and_whitespace(cds: LiveService) -> None:
    body = cds.call(hook_request(service_request(" 0530u ", "2025-03-03")))
    assert body["cards"][0]["indicator"] == "warning" and "0530U" in body["cards"][0]["summary"]


def test_hcpcs_system_is_accepted(cds: LiveService) -> None:
    req = service_request("0530U", "2025-03-03", system="https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets")
    assert cds.call(hook_request(req))["cards"][0]["indicator"] == "warning"


def test_one_card_and_one_assertion_set_per_order_and_ids_unique(cds: LiveService) -> None:
    orders = [service_request(c, "2025-03-03", rid=f"o{i}") for i, c in enumerate(("0530U", "0091U", "0453U"))]
    body = cds.call(hook_request(*orders, coverages=(coverage("a"), coverage("b"))))
    assert len(body["cards"]) == 3
    infos = coverage_info(body)
    assert len(infos) == 6
    ids = [i["coverage-assertion-id"]["valueString"] for i in infos]
    assert len(set(ids)) == 6


@pytest.mark.parametrize(("field", "value", "basis"), [
    ("occurrencePeriod", {"start": "2025-03-04", "end": "2025-03-10"}, "occurrencePeriod"),
    ("occurrenceTiming", {"event": ["2025-03-05T09:00:00Z", "2025-04-05"]}, "occurrenceTiming"),
    ("authoredOn", "2025-03-06T10:00:00-05:00", "authored"),
])
def test_date_of_service_sources(cds: LiveService, field: str, value: Any, basis: str) -> None:
    body = cds.call(hook_request(service_request("0530U", None, **{field: value})))
    assert body["cards"][0]["indicator"] == "warning"
    assert basis in body["cards"][0]["detail"]


def test_date_before_code_joined_is_not_investigational(cds: LiveService) -> None:
    assert cds.call(hook_request(service_request("0530U", "2024-12-31")))["cards"] == []


def test_date_on_removal_day_is_not_investigational(cds: LiveService) -> None:
    assert cds.call(hook_request(service_request("86152", "2025-08-05")))["cards"] == []
    assert cds.call(hook_request(service_request("86152", "2025-08-04")))["cards"][0]["indicator"] == "warning"


# ---------------------------------------------------------------- rule 4: retired


def test_retired_policy_info_card_and_conditional_assertion(cds: LiveService) -> None:
    body = cds.call(hook_request(service_request("0530U", "2026-07-01")))
    [card] = body["cards"]
    assert card["indicator"] == "info"
    assert "retired" in card["summary"] and "2026-07-01" in card["summary"]
    assert "EviCore" in card["detail"]
    assert any("evicore" in link["url"] for link in card["links"])
    [info] = coverage_info(body)
    assert info["covered"]["valueCode"] == "conditional" and info["pa-needed"]["valueCode"] == "conditional"
    assert "retired" in info["reason"]["valueCodeableConcept"]["text"]


def test_order_without_date_is_judged_today_hence_retired(cds: LiveService) -> None:
    body = cds.call(hook_request(service_request("0530U", None)))
    assert "retired" in body["cards"][0]["summary"]
    assert "today" in body["cards"][0]["detail"]


# ---------------------------------------------------------------- rule 5: FEP


def test_fep_member_gets_fep_card_and_no_assertion(cds: LiveService) -> None:
    body = cds.call(hook_request(service_request("0530U", "2025-03-03"),
                                 coverages=(coverage(plan="FEP Blue Standard"),)))
    [card] = body["cards"]
    assert card["indicator"] == "info" and "FEP" in card["summary"]
    assert any(link["url"].startswith("https://www.fepblue.org/") for link in card["links"])
    assert "systemActions" not in body


def test_fep_detected_from_payor_display(cds: LiveService) -> None:
    body = cds.call(hook_request(service_request("0530U", "2025-03-03"),
                                 coverages=(coverage(payor="Federal Employee Program", plan="Standard"),)))
    assert "FEP" in body["cards"][0]["summary"] and "systemActions" not in body


# ---------------------------------------------------------------- rule 6: other policies


def test_unlisted_liquid_biopsy_for_nsclc_routes_to_mp_2_241(cds: LiveService) -> None:
    body = cds.call(hook_request(service_request("0239U", "2025-03-03", icd=("C34.90",))))
    [card] = body["cards"]
    assert card["indicator"] == "info" and "MP 2.241" in card["summary"]
    assert card["links"][0]["label"].startswith("MP 2.241")
    assert "own words" in card["detail"]
    assert "systemActions" not in body


def test_inferred_route_says_so(cds: LiveService) -> None:
    body = cds.call(hook_request(service_request("0239U", "2025-03-03", icd=("C61",))))
    assert "MP 2.280" in body["cards"][0]["summary"] and "inference" in body["cards"][0]["detail"]


def test_metastatic_colorectal_via_condition_reference(cds: LiveService) -> None:
    order = service_request("0239U", "2025-03-03", reasonReference=[{"reference": "Condition/crc"},
                                                                    {"reference": "Condition/mets"}])
    conditions = bundle(
        {"resourceType": "Condition", "id": "crc", "subject": {"reference": "Patient/p1"},
         "code": {"coding": [{"system": ICD, "code": "C18.7"}]}},
        {"resourceType": "Condition", "id": "mets", "subject": {"reference": "Patient/p1"},
         "code": {"coding": [{"system": ICD, "code": "C78.7"}]}})
    body = cds.call(hook_request(order, prefetch={"conditions": conditions}))
    assert "MP 2.316" in body["cards"][0]["summary"]


def test_purpose_code_routes(cds: LiveService, purpose_system: str) -> None:
    order = service_request("0239U", "2025-03-03", purposes=("comprehensive-genomic-profiling",),
                            purpose_system=purpose_system)
    assert "MP 2.259" in cds.call(hook_request(order))["cards"][0]["summary"]


def test_listed_code_for_routed_use_keeps_warning_and_adds_governing_link(cds: LiveService) -> None:
    body = cds.call(hook_request(service_request("0530U", "2025-03-03", icd=("C43.9",))))
    [card] = body["cards"]
    assert card["indicator"] == "warning"
    assert any(link["label"].startswith("MP 2.364") for link in card["links"])
    assert coverage_info(body)[0]["covered"]["valueCode"] == "not-covered"


def test_recognised_by_text_only(cds: LiveService) -> None:
    order = service_request(None, "2025-03-03", icd=("C34.1",))
    order["code"] = {"text": "Liquid biopsy (ctDNA) panel", "coding": [{"display": "ctDNA NGS"}]}
    assert "MP 2.241" in cds.call(hook_request(order))["cards"][0]["summary"]


# ---------------------------------------------------------------- rule 7: coverage


def test_no_active_coverage_card(cds: LiveService) -> None:
    body = cds.call(hook_request(service_request("0530U", "2025-03-03"),
                                 coverages=(coverage(status="cancelled"),)))
    assert [c["indicator"] for c in body["cards"]] == ["warning", "info"]
    assert "No active" in body["cards"][1]["summary"]
    assert "systemActions" not in body


def test_null_coverage_prefetch_means_none_found(cds: LiveService) -> None:
    body = cds.call(hook_request(service_request("0530U", "2025-03-03"), coverages=None,
                                 prefetch={"coverage": None}))
    assert "No active" in body["cards"][-1]["summary"]


@pytest.mark.parametrize("prefetch", [{}, {"coverage": {"resourceType": "OperationOutcome", "issue": []}}])
def test_unavailable_coverage_answers_from_code_list(cds: LiveService, prefetch: dict[str, Any]) -> None:
    body = cds.call(hook_request(service_request("0530U", "2025-03-03"), coverages=None, prefetch=prefetch))
    [card] = body["cards"]
    assert card["indicator"] == "warning" and "could not be checked" in card["detail"]
    assert "systemActions" not in body


# ---------------------------------------------------------------- rules 1 and 8


def test_only_unrelated_orders_answer_empty_cards(cds: LiveService) -> None:
    cbc = service_request("85025", "2025-03-03")
    cbc["code"] = {"coding": [{"system": "http://loinc.org", "code": "58410-2"}], "text": "CBC"}
    med = {"resourceType": "MedicationRequest", "id": "m1", "status": "draft", "intent": "order"}
    assert cds.call(hook_request(cbc, med)) == {"cards": []}


def test_bundle_without_type_and_other_resources_are_tolerated(cds: LiveService) -> None:
    body = hook_request(service_request("0530U", "2025-03-03"))
    body["context"]["draftOrders"].pop("type", None)
    body["context"]["draftOrders"]["entry"].insert(0, {"resource": {"resourceType": "DeviceRequest", "bogus": 1}})
    assert cds.call(body)["cards"][0]["indicator"] == "warning"


def test_order_select_judges_only_selected_orders(cds: LiveService) -> None:
    a = service_request("0530U", "2025-03-03", rid="a")
    b = service_request("0091U", "2025-03-03", rid="b")
    body = cds.call(hook_request(a, b, hook="order-select", selections=["ServiceRequest/b"]), service=SELECT)
    assert [c["summary"][:5] for c in body["cards"]] == ["0091U"]


def test_order_sign_ignores_selections(cds: LiveService) -> None:
    a = service_request("0530U", "2025-03-03", rid="a")
    b = service_request("0091U", "2025-03-03", rid="b")
    assert len(cds.call(hook_request(a, b, selections=["ServiceRequest/b"]))["cards"]) == 2


def test_sandbox_empty_coding_is_answered(cds: LiveService) -> None:
    order = {"resourceType": "ServiceRequest", "id": "x", "status": "draft", "intent": "plan",
             "subject": {"reference": "Patient/p1"}, "code": {"coding": [{}]}}
    assert cds.call(hook_request(order, hook="order-select"), service=SELECT) == {"cards": []}


def test_unknown_context_fields_are_ignored(cds: LiveService) -> None:
    assert cds.call(hook_request(service_request(), futureField={"x": 1}))["cards"]


# ---------------------------------------------------------------- CRD configuration


def test_configuration_can_turn_off_coverage_info(cds: LiveService) -> None:
    body = hook_request(service_request("0530U", "2025-03-03"))
    body["extension"] = {"davinci-crd.configuration": {"coverage-info": False}}
    assert cds.call(body) == {"cards": []}


def test_configuration_can_turn_off_external_reference(cds: LiveService) -> None:
    body = hook_request(service_request("0239U", "2025-03-03", icd=("C34.9",)))
    body["extension"] = {"davinci-crd.configuration": {"external-reference": False}}
    assert cds.call(body) == {"cards": []}


def test_configuration_value_must_be_boolean(cds: LiveService) -> None:
    body = hook_request(service_request())
    body["extension"] = {"davinci-crd.configuration": {"coverage-info": "no"}}
    out = cds.call(body, expect=400)
    assert out["resourceType"] == "OperationOutcome"


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
    (lambda b: b.update(hook="patient-view"), "order-sign"),
    (lambda b: b["context"].update(draftOrders=[1, 2]), "Bundle"),
    (lambda b: b["context"].pop("draftOrders"), "Bundle"),
    (lambda b: b["context"]["draftOrders"]["entry"][0]["resource"].pop("subject"), "subject"),
    (lambda b: b["context"]["draftOrders"]["entry"][0]["resource"].update(occurrenceDateTime="3 March"),
     "occurrenceDateTime"),
    (lambda b: b.update(prefetch=[1]), "prefetch"),
], ids=["no-hook", "no-hookInstance", "no-context", "wrong-hook", "orders-not-bundle", "no-orders",
        "sr-no-subject", "sr-bad-date", "prefetch-not-object"])
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
                           ("authoredOn", "2025-03-03T10:00:00")]:  # a time needs its zone
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
    assert cds.engine.store.count(hook_calls) == 0


# ---------------------------------------------------------------- audit, assertions, feedback


def test_hook_call_is_audited_and_assertions_stored_and_retrievable(cds: LiveService) -> None:
    req = hook_request(service_request("0530U", "2025-03-03", rid="lb-9"))
    body = cds.call(req)
    [info] = coverage_info(body)
    assertion_id = info["coverage-assertion-id"]["valueString"]
    with cds.engine.store.engine.connect() as conn:
        [call] = conn.execute(select(hook_calls)).mappings().all()
        [row] = conn.execute(select(coverage_assertions)).mappings().all()
    assert call["hook_instance"] == req["hookInstance"] and call["decision_summary"] == "investigational"
    assert call["orders"] == [{"reference": "ServiceRequest/lb-9", "codes": ["0530U"],
                               "date_of_service": "2025-03-03", "outcome": "investigational"}]
    assert row["assertion_id"] == assertion_id and row["covered"] == "not-covered" and row["code"] == "0530U"
    looked_up = cds.http.get(cds.url(f"/coverage-assertions/{assertion_id}"), timeout=5)
    assert looked_up.status_code == 200
    assert looked_up.json()["policy"] == "MP 2.267" and looked_up.json()["date_of_service"] == "2025-03-03"
    _outcome(cds.http.get(cds.url("/coverage-assertions/unknown"), timeout=5), 404)


def test_feedback_is_validated_and_stored(cds: LiveService) -> None:
    card = cds.call(hook_request(service_request()))["cards"][0]
    fb = {"feedback": [{"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-25T10:00:00Z",
                        "overrideReason": {"reason": card["overrideReasons"][0], "userComment": "trial"}}]}
    resp = cds.http.post(cds.url(f"/cds-services/{SIGN}/feedback"), json=fb, timeout=5)
    assert resp.status_code == 200 and resp.json() == {"stored": 1}
    [row] = cds.engine.store.feedback_for(card["uuid"])
    assert row["outcome"] == "overridden" and row["override_reason"]["userComment"] == "trial"


@pytest.mark.parametrize("entry", [
    {"outcome": "overridden", "outcomeTimestamp": "2026-11-25T10:00:00Z"},
    {"card": "c", "outcome": "maybe", "outcomeTimestamp": "2026-11-25T10:00:00Z"},
    {"card": "c", "outcome": "accepted", "outcomeTimestamp": "2026-11-25T10:00:00Z"},
    {"card": "c", "outcome": "overridden", "outcomeTimestamp": "yesterday"},
    {"card": "c", "outcome": "accepted", "outcomeTimestamp": "2026-11-25T10:00:00Z", "acceptedSuggestions": ["x"]},
], ids=["no-card", "bad-outcome", "accepted-without-suggestion", "bad-timestamp", "bad-suggestions"])
def test_bad_feedback_is_400_and_not_stored(cds: LiveService, entry: dict[str, Any]) -> None:
    resp = cds.http.post(cds.url(f"/cds-services/{SIGN}/feedback"), json={"feedback": [entry]}, timeout=5)
    _outcome(resp, 400)
    assert cds.engine.store.count(feedback) == 0


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


# ---------------------------------------------------------------- found by the fuzzer


def test_null_element_in_an_order_is_400(cds: LiveService) -> None:
    body = hook_request(service_request("0530U", "2025-03-03", subject=None))
    resp = cds.http.post(cds.url(f"/cds-services/{SIGN}"), json=body, timeout=5)
    assert "subject" in _outcome(resp, 400)


def test_empty_elements_are_tolerated_and_not_echoed(cds: LiveService) -> None:
    body = cds.call(hook_request(service_request("0530U", "2025-03-03", reasonCode=[], category=[{}])))
    resource = body["systemActions"][0]["resource"]
    assert "reasonCode" not in resource and "category" not in resource


def test_unreadable_coverage_prefetch_means_coverage_unavailable(cds: LiveService) -> None:
    broken = coverage()
    broken["class"] = True
    for prefetch in ({"coverage": bundle(broken)}, {"coverage": {"resourceType": "Bundle", "entry": True}}):
        body = cds.call(hook_request(service_request("0530U", "2025-03-03"), coverages=None, prefetch=prefetch))
        assert "could not be checked" in body["cards"][0]["detail"] and "systemActions" not in body
