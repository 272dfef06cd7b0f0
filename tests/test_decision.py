"""Fast unit tests of the pure decision core: phrase matching, recognition, who the member is,
date windows, and the verdict value (every verdict checked against CRD 2.2.1's own invariants)."""

from __future__ import annotations

from datetime import date
from itertools import product
from typing import Any

import pytest

from cds_service.coverage_information import Code, CoverageInformation, Covered, InfoNeeded, Reason, held_assertion
from cds_service.decision import (
    Context,
    CoverageFacts,
    CoverageProblem,
    CoverageRecord,
    CoverageSource,
    PayerKind,
    Recognised,
    decide,
    identify,
    judge,
    select,
)
from cds_service.decision.recognise import recognise
from cds_service.intake import ConditionIndex, OrderSource, date_window, day_range, to_order
from cds_service.knowledge import Knowledge
from cds_service.knowledge.lexicon import Phrases, normalise
from tests.conftest import CPT, ICD, service_request
from tests.crd_conformance import coverage_information_problems

TODAY = date(2026, 12, 3)
CTX = Context(TODAY, "https://cds.example.org")


def order(knowledge: Knowledge, resource: dict[str, Any], today: date = TODAY) -> Any:
    return to_order(OrderSource(resource, "test", True), knowledge, today, ConditionIndex([]))


def text_order(text: str, **extra: Any) -> dict[str, Any]:
    resource = service_request(None, **extra)
    resource["code"] = {"text": text}
    return resource


def record(ref: str = "Coverage/c", payor: str = "Capital Blue Cross", plan: str = "PPO", **kw: Any) -> CoverageRecord:
    base: dict[str, Any] = {"status": "active", "order": None, "start": None, "end": None, "payor_identifiers": (),
                            "payor_names": (payor,) if payor else (), "plan_names": (plan,), "plan_values": (plan,)}
    base.update(kw)
    return CoverageRecord(ref, **base)


# ---------------------------------------------------------------- phrases


@pytest.mark.parametrize("text", ["Circulating Tumor Cells", "circulating-tumour cell", "CIRCULATING  TUMOR\tCELLS",
                                  "circulating tumor cells, blood"])
def test_phrases_survive_case_hyphens_spacing_and_plurals(text: str) -> None:
    phrases = Phrases.of(["circulating tumor cell", "circulating tumour cell"])
    assert phrases.find(normalise(text)) is not None


def test_phrases_join_letters_and_digits_and_prefer_the_longest() -> None:
    phrases = Phrases.of(["Guardant360", "Guardant360 CDx", "ct DNA"])
    assert phrases.find(normalise("Guardant 360 CDx panel")) == "Guardant360 CDx"
    assert phrases.find(normalise("guardant360")) == "Guardant360"
    assert phrases.find(normalise("ctDNA")) == "ct DNA" and phrases.find(normalise("ct-DNA")) == "ct DNA"
    assert phrases.find(normalise("octdna")) is None  # whole words only


def test_short_names_are_normalised_once_and_long_text_is_not_kept() -> None:
    from cds_service.knowledge import lexicon

    before = lexicon._normalise_short.cache_info()
    assert normalise("Capital Blue Cross ") == normalise("Capital Blue Cross ") == "capital blue cross"
    after = lexicon._normalise_short.cache_info()
    assert after.hits >= before.hits + 1  # the second was a lookup
    long_text = "Blue " * 2000
    assert normalise(long_text) == " ".join(["blue"] * 2000)
    assert lexicon._normalise_short.cache_info().currsize == after.currsize  # not kept: the cache stays small


# ---------------------------------------------------------------- recognition


@pytest.mark.parametrize(("resource", "kind", "code"), [
    (service_request("0530U", system="urn:oid:2.16.840.1.113883.6.12"), Recognised.LIQUID_BIOPSY, "0530U"),
    (service_request("0530U", system="https://bluebutton.cms.gov/resources/codesystem/hcpcs"),
     Recognised.LIQUID_BIOPSY, "0530U"),
    (service_request("0242U", system="http://snomed.info/sct"), Recognised.NONE, ""),  # not a CPT code there
    (text_order("Send out 0239U"), Recognised.LIQUID_BIOPSY, "0239U"),
    (text_order("Panel 12345"), Recognised.NONE, ""),  # unknown numbers are not codes
    (text_order("Signatera MRD"), Recognised.LIQUID_BIOPSY, "0340U"),
    (text_order("LiquidHALLMARK"), Recognised.LIQUID_BIOPSY, "0530U"),  # its listed code
    (service_request("81420"), Recognised.NOT_THIS_POLICY, "81420"),
    (text_order("Karius Test"), Recognised.NOT_THIS_POLICY, "0152U"),
    (text_order("cfDNA"), Recognised.NONE, ""),
    (text_order("cfDNA", reasonCode=[{"coding": [{"system": ICD, "code": "C61"}]}]),
     Recognised.LIQUID_BIOPSY, ""),
    (text_order("cfDNA tumor panel, donor-derived"), Recognised.NOT_THIS_POLICY, ""),
    (text_order("liquid biopsy, transplant patient"), Recognised.LIQUID_BIOPSY, ""),
])
def test_recognition(knowledge: Knowledge, resource: dict[str, Any], kind: Recognised, code: str) -> None:
    found = recognise(order(knowledge, resource), knowledge)
    assert (found.kind, found.code) == (kind, code)


# ---------------------------------------------------------------- who the member is


@pytest.mark.parametrize(("rec", "kind"), [
    (record(payor="Capital Blue Cross"), PayerKind.SERVED),
    (record(payor="capital bluecross"), PayerKind.SERVED),
    (record(payor="Capital Advantage Assurance Co"), PayerKind.SERVED),
    (record(payor="Capital District Physicians Health Plan"), PayerKind.OTHER),
    (record(payor="CBC"), PayerKind.SERVED),
    (record(payor="CBC Partners"), PayerKind.OTHER),
    (record(payor="", payor_identifiers=(("urn:oid:2.16.840.1.113883.6.300", "95199"),)), PayerKind.SERVED),
    # an identifier the data does not hold could be any company's (Capital Blue Cross's own NAIC code is not there)
    (record(payor="", payor_identifiers=(("urn:oid:2.16.840.1.113883.6.300", "99999"),)), PayerKind.UNKNOWN),
    (record(payor=""), PayerKind.UNKNOWN),
    (record(plan="FEP Blue Focus"), PayerKind.VARIATION),
    (record(payor="BCBS FEP", plan="Basic"), PayerKind.VARIATION),
    (record(plan="112"), PayerKind.VARIATION),  # an FEP enrollment code on a Capital Coverage
    (record(payor="Highmark", plan="112"), PayerKind.OTHER),
    (record(payor="Prefepare Health", plan="PPO"), PayerKind.OTHER),  # 'FEP' only as a whole word
])
def test_identify(knowledge: Knowledge, rec: CoverageRecord, kind: PayerKind) -> None:
    assert identify(rec, knowledge).payer is kind


def test_select_prefers_the_primary_coverage(knowledge: Knowledge) -> None:
    def both(first: int, second: int) -> CoverageFacts:
        return CoverageFacts(CoverageSource.PROVIDED, (record("Coverage/a", order=first),
                                                       record("Coverage/b", "Aetna", order=second)))
    assert select(both(2, 1), knowledge).problem is CoverageProblem.OTHER_PAYER
    facts = both(1, 2)
    assert [c.reference for c in select(facts, knowledge).coverages] == ["Coverage/a"]
    inactive = CoverageFacts(CoverageSource.PROVIDED, (record("Coverage/x", status="cancelled"),))
    assert [c.reference for c in select(inactive, knowledge).coverages] == ["Coverage/x"]
    wrong = CoverageFacts(CoverageSource.PROVIDED, (record("Coverage/x", status="entered-in-error"),))
    assert select(wrong, knowledge).problem is CoverageProblem.NONE_ACCESSIBLE


# ---------------------------------------------------------------- dates


@pytest.mark.parametrize(("value", "first", "last"), [
    ("2025", date(2025, 1, 1), date(2025, 12, 31)),
    ("2024-02", date(2024, 2, 1), date(2024, 2, 29)),
    ("2025-03-03T23:30:00-05:00", date(2025, 3, 3), date(2025, 3, 3)),
])
def test_day_range_of_partial_dates_and_times(value: str, first: date, last: date) -> None:
    assert day_range(value) == (first, last)


def test_date_window_is_open_when_the_order_gives_no_date() -> None:
    window = date_window({"authoredOn": "2025-01-01"}, TODAY)
    assert (window.start, window.end, window.stated) == (TODAY, None, False)
    by = date_window({"occurrencePeriod": {"end": "2027-01-31"}}, TODAY)
    assert (by.start, by.end) == (TODAY, date(2027, 1, 31))


# ---------------------------------------------------------------- verdicts


DAYS = [date(2019, 1, 1), date(2022, 9, 30), date(2022, 10, 1), date(2024, 12, 31), date(2025, 1, 1),
        date(2025, 8, 4), date(2025, 8, 5), date(2026, 6, 30), date(2026, 7, 1), None]
CODES = ["0091U", "0337U", "0368U", "0530U", "86152", "0239U", "0340U", "0537U"]
COVERAGES = [record(), record(plan="FEP Blue Standard"), record(end=date(2025, 3, 31)),
             record(status="cancelled"), record(start=date(2025, 6, 1)), record(problem="period is not a Period")]


def test_the_oracle_reports_a_broken_invariant_every_time_it_is_asked(knowledge: Knowledge) -> None:
    """The invariant check is remembered per extension: a failing one must fail on every ask."""
    judged = judge(order(knowledge, service_request("0530U", "2025-03-03")), knowledge)
    assert judged is not None
    selection = select(CoverageFacts(CoverageSource.PROVIDED, (CoverageRecord(
        "Coverage/c0", **{k: getattr(COVERAGES[0], k) for k in COVERAGES[0].__dataclass_fields__
                          if k != "reference"}),)), knowledge)
    [v] = decide([judged], selection, knowledge, CTX).judgements[0].verdicts
    ext = v.information.issued("id-1", TODAY).to_fhir()
    ext["extension"].append({"url": "satisfied-pa-id", "valueString": "pa-1"})  # without pa-needed=satisfied
    for _ in range(2):
        assert any("crd-ci-q5" in p for p in coverage_information_problems(ext))


@pytest.mark.parametrize(("code", "day"), list(product(CODES, DAYS)))
def test_every_verdict_keeps_crd_invariants_and_its_reason_decides_its_values(knowledge: Knowledge, code: str,
                                                                              day: date | None) -> None:
    resource = service_request(code, day.isoformat() if day else None)
    judged = judge(order(knowledge, resource), knowledge)
    if judged is None:
        return  # e.g. a removed code between its removal and the retirement
    selection = select(CoverageFacts(CoverageSource.PROVIDED, tuple(
        CoverageRecord(f"Coverage/c{i}", **{k: getattr(r, k) for k in r.__dataclass_fields__ if k != "reference"})
        for i, r in enumerate(COVERAGES))), knowledge)
    decision = decide([judged], selection, knowledge, CTX)
    [j] = decision.judgements
    # every Coverage but the cancelled one (active ones are there): a verdict each
    assert [v.coverage.reference for v in j.verdicts] == [f"Coverage/c{i}" for i in (0, 1, 2, 4, 5)]
    for v in j.verdicts:
        ext = v.information.issued("id-1", TODAY).to_fhir()
        assert coverage_information_problems(ext) == [], (code, day, v.reason)
        spec = knowledge.reasons[v.reason]
        assert v.information.covered is spec.covered
        assert set(spec.info_needed) <= set(v.information.info_needed)
        if v.reason in ("investigational-code-list", "investigational-policy-statement"):
            assert v.information.expiry_date is not None and v.information.expiry_date >= j.order.window.start


def test_unlisted_test_is_judged_under_the_statement_with_its_own_reason(knowledge: Knowledge) -> None:
    j = judge(order(knowledge, service_request("0537U", "2025-03-03")), knowledge)
    assert j is not None and j.policy_reason == "investigational-policy-statement"


def test_stated_purpose_outranks_the_test_and_the_diagnosis(knowledge: Knowledge, purpose_system: str) -> None:
    resource = service_request("0239U", "2025-03-03", icd=("C50.9",), purposes=("ctdna-treatment-response-monitoring",),
                               purpose_system=purpose_system)
    j = judge(order(knowledge, resource), knowledge)
    assert j is not None and j.use.basis == "stated" and j.routes == ()
    assert j.policy_reason == "investigational-policy-statement"


def test_orders_that_will_not_be_performed_are_not_judged(knowledge: Knowledge) -> None:
    for extra in ({"status": "revoked"}, {"status": "completed"}, {"doNotPerform": True}, {"intent": "option"}):
        assert judge(order(knowledge, service_request("0530U", "2025-03-03", **extra)), knowledge) is None, extra


# ---------------------------------------------------------------- the verdict value


def test_coverage_information_round_trips_what_an_order_carries() -> None:
    info = CoverageInformation("Coverage/1", Covered.CONDITIONAL, date(2026, 1, 2), "a-1",
                               info_needed=(InfoNeeded.OTH,), reasons=(Reason(Code("s", "c"), "why"),))
    ext = info.to_fhir()
    assert held_assertion(ext) == ("Coverage/1", "a-1", info.verdict_json())
    assert info.fingerprint == info.issued("other", date(2027, 1, 1)).fingerprint  # id and date are not the verdict
    changed = CoverageInformation("Coverage/1", Covered.NOT_COVERED, date(2026, 1, 2), "a-1")
    assert changed.fingerprint != info.fingerprint
    assert held_assertion({"url": ext["url"], "extension": [{"url": "covered", "valueCode": "covered"}]}) is None


def test_icd10_system_matches_the_tests(knowledge: Knowledge) -> None:
    assert knowledge.icd10_system == ICD and knowledge.code_system_cpt == CPT
