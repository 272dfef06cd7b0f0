"""The case corpus (tests/corpus/cases.yaml): real-world requests with the answer the policy text
decides, run through the real HTTP interface. Every 200 answer also passes the CRD conformance
checks (LiveService.call)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import CPT, ICD, LiveService, bundle
from tests.crd_conformance import CRD_EXT

CASES = yaml.safe_load((Path(__file__).parent / "corpus" / "cases.yaml").read_text())
PURPOSES = "https://liquid-biopsy-cds.example.org/fhir/CodeSystem/liquid-biopsy-purpose"
DEFAULT_TODAY = "2026-12-03"


def _order(spec: dict[str, Any]) -> dict[str, Any]:
    res: dict[str, Any] = {"resourceType": "ServiceRequest", "id": spec.get("id", "sr-1"),
                           "status": spec.get("status", "draft"), "intent": spec.get("intent", "order"),
                           "subject": {"reference": "Patient/p1"}}
    code: dict[str, Any] = {}
    if "coding" in spec:
        code["coding"] = spec["coding"]
    elif "code" in spec:
        coding = {"code": str(spec["code"])}
        system = spec.get("system", CPT)
        if system is not None:
            coding["system"] = system
        code["coding"] = [coding]
    if "text" in spec:
        code["text"] = spec["text"]
    if code:
        res["code"] = code
    if "detail" in spec:  # orderDetail text
        res["orderDetail"] = [{"text": spec["detail"]}]
    if "dos" in spec:
        res["occurrenceDateTime"] = str(spec["dos"])
    if "period" in spec:
        start, end = spec["period"]
        res["occurrencePeriod"] = {k: str(v) for k, v in (("start", start), ("end", end)) if v}
    if "events" in spec:
        res["occurrenceTiming"] = {"event": [str(e) for e in spec["events"]]}
    for key in ("authoredOn", "doNotPerform"):
        if key in spec:
            res[key] = spec[key]
    reasons = [{"coding": [{"system": ICD, "code": c}]} for c in spec.get("icd", [])]
    reasons += [{"coding": [{"system": PURPOSES, "code": p}]} for p in spec.get("purposes", [])]
    if reasons:
        res["reasonCode"] = reasons
    return res


def _coverage(spec: dict[str, Any], i: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    res: dict[str, Any] = {"resourceType": "Coverage", "id": spec.get("id", f"cov-{i + 1}"),
                           "status": spec.get("status", "active"), "beneficiary": {"reference": "Patient/p1"},
                           "class": [{"type": {"coding": [{"code": "plan"}]}, "value": str(spec.get("plan", "PPO")),
                                      "name": str(spec.get("plan", "PPO"))}]}
    payor: dict[str, Any] = {}
    if spec.get("payor", "Capital Blue Cross") is not None:
        payor["display"] = spec.get("payor", "Capital Blue Cross")
    if "payor_id" in spec:
        payor["identifier"] = {"system": spec["payor_id"][0], "value": spec["payor_id"][1]}
    if "payor_ref" in spec:
        payor["reference"] = spec["payor_ref"]
    if payor:
        res["payor"] = [payor]
    if "period" in spec:
        period = spec["period"]
        res["period"] = (period if isinstance(period, dict)
                         else {k: str(v) for k, v in (("start", period[0]), ("end", period[1])) if v})
    if "classes" in spec:  # [[type, value], ...] as the EHR sends them
        res["class"] = [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/coverage-class",
                                              "code": kind}]}, "value": str(value)} for kind, value in spec["classes"]]
    if "classes_raw" in spec:  # as written, for shapes the shorthand cannot express
        res["class"] = spec["classes_raw"]
    if "order" in spec:
        res["order"] = spec["order"]
    if "contained_org" in spec:
        res["contained"] = [{"resourceType": "Organization", **spec["contained_org"]}]
    included = [{"resourceType": "Organization", **spec["included_org"]}] if "included_org" in spec else []
    return res, included


def build(case: dict[str, Any]) -> tuple[dict[str, Any], str]:
    hook = case.get("hook", "order-sign")
    orders = [_order(o) for o in case["orders"]]
    coverages, included = [], []
    for i, spec in enumerate(case.get("coverages", [{}])):
        res, orgs = _coverage(spec, i)
        coverages.append(res)
        included += orgs
    prefetch: dict[str, Any] = {}
    mode = case.get("coverage_prefetch", "bundle")
    if mode == "bundle":
        prefetch["coverage"] = bundle(*coverages, *included)
    elif mode is None:
        prefetch["coverage"] = None
    if case.get("conditions"):
        prefetch["conditions"] = bundle(*({"resourceType": "Condition", "id": c["id"],
                                           "subject": {"reference": "Patient/p1"},
                                           "code": {"coding": [{"system": ICD, "code": c["icd"]}]}}
                                          for c in case["conditions"]))
    context: dict[str, Any] = {"patientId": "p1"}
    if hook == "order-dispatch":
        context.update(dispatchedOrders=[f"ServiceRequest/{o['id']}" for o in orders], performer="Organization/lab")
        prefetch["serviceRequests"] = bundle(*orders)
    else:
        context.update(userId="Practitioner/1", draftOrders=bundle(*orders, type_="collection"))
        if hook == "order-select":
            context["selections"] = case.get("selections", [f"ServiceRequest/{o['id']}" for o in orders])
    body = {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context, "prefetch": prefetch}
    return body, hook


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One live service per (today, mode), shared by the cases of the module."""
    from cds_service import create_app
    from tests.conftest import LiveService, start_server

    made: dict[tuple[str, str], LiveService] = {}
    servers = []

    def get(today: str, mode: str) -> LiveService:
        if (today, mode) not in made:
            db = tmp_path_factory.mktemp("corpus") / "cds.sqlite3"
            app = create_app({"DATABASE_URL": f"sqlite:///{db}", "TODAY": today, "MODE": mode})
            server, thread, base = start_server(app)
            servers.append((server, thread))
            made[(today, mode)] = LiveService(base, app)
        return made[(today, mode)]

    yield get
    for server, thread in servers:
        server.shutdown()
        thread.join(timeout=5)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_case(services: Any, case: dict[str, Any]) -> None:
    assert case.get("policy"), "every case names the sentence of the policy that decides it"
    service: LiveService = services(str(case.get("today", DEFAULT_TODAY)), case.get("mode", "crd"))
    body, _ = build(case)
    expect = case["expect"]
    status = expect.get("status", 200)
    answer = service.call(body, expect=status)
    if status != 200:
        text = " ".join(i.get("diagnostics", "") for i in answer.get("issue", []))
        assert answer["resourceType"] == "OperationOutcome"
        for phrase in expect.get("problem_has", []):
            assert phrase in text, text
        return
    if "verdicts" in expect:
        got = _verdicts(answer)
        assert len(got) == len(expect["verdicts"]), got
        for want, have in zip(expect["verdicts"], got, strict=True):
            for key, value in want.items():
                assert have[key] == (sorted(value) if key == "info_needed" else str(value)), (key, have)
    if "cards" in expect:
        assert service.card_templates(body["hookInstance"]) == expect["cards"], [c["summary"] for c in answer["cards"]]
    if "system_actions" in expect:
        assert len(answer.get("systemActions", [])) == expect["system_actions"]
    _cards_agree_with_verdicts(service.card_templates(body["hookInstance"]), answer)
    summaries = " ".join(c["summary"] for c in answer["cards"])
    details = " ".join(c.get("detail", "") for c in answer["cards"])
    for phrase in expect.get("summary_has", []):
        assert phrase in summaries, summaries
    for phrase in expect.get("detail_has", []):
        assert phrase in details + summaries, details
    for phrase in expect.get("detail_lacks", []):
        assert phrase not in details + summaries, details


WARNINGS = {"investigational-code-list", "investigational-policy-statement"}


def _cards_agree_with_verdicts(templates: list[str], answer: dict[str, Any]) -> None:
    """No card contradicts the verdict: a warning that the test is not covered comes with a not-covered
    verdict (or with none at all, in sandbox mode); a card whose template names a verdict reason comes
    with a verdict of that reason, and no card says 'not covered' beside verdicts that do not."""
    verdicts = _verdicts(answer)
    reasons = {v["reason"] for v in verdicts}
    covered = {v["covered"] for v in verdicts}
    for template, card in zip(templates, answer["cards"], strict=True):
        if template in WARNINGS:
            assert card["indicator"] == "warning"
            assert not verdicts or "not-covered" in covered, (template, verdicts)
        if verdicts and template in {"policy-retired-delegated", "other-policy-governs", "use-not-addressed",
                                     "use-not-stated", "product-variation-manual", "technical",
                                     "date-of-service-spans-change", *WARNINGS}:
            assert template in reasons, (template, reasons)
        if verdicts and "not-covered" not in covered:
            assert "not covered" not in (card["summary"] + card.get("detail", "")).lower(), card


def _verdicts(answer: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for action in answer.get("systemActions", []):
        ref = f"ServiceRequest/{action['resource']['id']}"
        for ext in action["resource"].get("extension", []):
            if ext["url"] != CRD_EXT:
                continue
            subs = ext["extension"]
            one = {e["url"]: e for e in subs}
            out.append({
                "order": ref,
                "coverage": one["coverage"]["valueReference"]["reference"],
                "covered": one["covered"]["valueCode"],
                "reason": one["reason"]["valueCodeableConcept"]["coding"][0]["code"],
                "info_needed": sorted(e["valueCode"] for e in subs if e["url"] == "info-needed"),
                "expiry": one.get("expiry-date", {}).get("valueDate"),
                "billing": one.get("billingCode", {}).get("valueCoding", {}).get("code"),
            })
    return out
