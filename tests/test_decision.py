"""Fast unit tests of the pure decision core: every rule and every dated fact, at its boundaries."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from cds_service.decision import (
    CoverageFacts,
    CoverageStatus,
    Covered,
    Order,
    Outcome,
    PlanCoverage,
    applies,
    decide,
)
from cds_service.knowledge import Knowledge

TODAY = date(2026, 11, 25)
COMMERCIAL = PlanCoverage("Coverage/c1", ("PPO Gold", "Capital Blue Cross"))
FEP = PlanCoverage("Coverage/fep", ("FEP Blue Standard",))
FOUND = CoverageFacts(CoverageStatus.FOUND, (COMMERCIAL,))


def order(code: str | None, day: date, icd: tuple[str, ...] = (), purposes: tuple[str, ...] = (),
          text: str = "", rid: str = "sr-1") -> Order:
    return Order(f"ServiceRequest/{rid}", (code,) if code else (), text.lower(), day, "test",
                 frozenset(icd), frozenset(purposes), {"resourceType": "ServiceRequest", "id": rid})


def outcome(knowledge: Knowledge, o: Order, cov: CoverageFacts = FOUND, **kw: object) -> Outcome:
    d = decide([o], cov, knowledge, TODAY, **kw)  # type: ignore[arg-type]
    return d.orders[0].outcome if d.orders else Outcome.NOT_APPLICABLE


D = date.fromisoformat
# Written by hand from the policy's history (section IX): (code, first day on the list, first day off it).
HISTORY = [
    ("0091U", None, None),
    ("0337U", D("2022-10-01"), None),
    ("0338U", D("2022-10-01"), None),
    ("0368U", D("2023-04-01"), None),
    ("0453U", D("2024-07-01"), None),
    ("0491U", D("2024-10-01"), None),
    ("0492U", D("2024-10-01"), None),
    ("0530U", D("2025-01-01"), None),
    ("81277", None, D("2023-10-06")),
    ("86152", None, D("2025-08-05")),
    ("86153", None, D("2025-08-05")),
]
RETIRED = D("2026-07-01")


def boundary_cases() -> list[tuple[str, date, bool]]:
    cases = []
    for code, joined, removed in HISTORY:
        if joined:
            cases += [(code, joined - timedelta(days=1), False), (code, joined, True),
                      (code, joined + timedelta(days=1), True)]
        if removed:
            cases += [(code, removed - timedelta(days=1), True), (code, removed, False),
                      (code, removed + timedelta(days=1), False)]
        if not removed:  # still listed when the policy retired
            cases += [(code, RETIRED - timedelta(days=1), True), (code, RETIRED, False)]
    cases.append(("0091U", D("2020-03-16"), True))  # on the list from before the 2020-03-17 review
    cases.append(("0091U", D("2020-03-17"), True))
    return cases


@pytest.mark.parametrize(("code", "day", "listed"), boundary_cases(),
                         ids=lambda v: v.isoformat() if isinstance(v, date) else str(v))
def test_code_list_at_every_dated_change(knowledge: Knowledge, code: str, day: date, listed: bool) -> None:
    got = outcome(knowledge, order(code, day))
    assert (got is Outcome.INVESTIGATIONAL) is listed


@pytest.mark.parametrize("o", [
    *(order(code, day) for code, day, _ in boundary_cases()),
    order("85025", D("2025-03-03")), order(None, D("2025-03-03"), text="Guardant360 ctDNA panel"),
    order(None, D("2026-08-01"), text="Guardant360 ctDNA panel"), order("0239U", D("2025-03-03"), icd=("C34",)),
    order("0239U", D("2025-03-03")), order("0530U", D("2026-08-01"), icd=("C34",)),
], ids=str)
@pytest.mark.parametrize("cov", [FOUND, CoverageFacts(CoverageStatus.FOUND, (FEP,)),
                                 CoverageFacts(CoverageStatus.NONE)], ids=["commercial", "fep", "none"])
def test_applies_says_before_coverage_whether_the_decision_will_judge_the_order(
        knowledge: Knowledge, o: Order, cov: CoverageFacts) -> None:
    # The pipeline validates in full, and fetches coverage for, exactly the orders applies() picks.
    assert applies(o, knowledge) == bool(decide([o], cov, knowledge, TODAY).orders)


def test_investigational_asserts_not_covered_per_coverage(knowledge: Knowledge) -> None:
    second = PlanCoverage("Coverage/c2", ("HMO",))
    d = decide([order("0530U", D("2025-03-01"))], CoverageFacts(CoverageStatus.FOUND, (COMMERCIAL, second)),
               knowledge, TODAY)
    [od] = d.orders
    assert od.outcome is Outcome.INVESTIGATIONAL and od.code == "0530U"
    assert [(a.coverage, a.covered, a.pa_needed) for a in od.assertions] == [
        ("Coverage/c1", Covered.NOT_COVERED, None), ("Coverage/c2", Covered.NOT_COVERED, None)]


@pytest.mark.parametrize("day", [D("2026-07-01"), D("2026-07-02"), TODAY])
def test_retired_policy_gives_conditional_assertion(knowledge: Knowledge, day: date) -> None:
    [od] = decide([order("0530U", day)], FOUND, knowledge, TODAY).orders
    assert od.outcome is Outcome.RETIRED
    assert [(a.covered, a.pa_needed, a.reason) for a in od.assertions] == [
        (Covered.CONDITIONAL, "conditional", "policy-retired-delegated")]


def test_day_before_retirement_is_still_investigational(knowledge: Knowledge) -> None:
    assert outcome(knowledge, order("0530U", D("2026-06-30"))) is Outcome.INVESTIGATIONAL


def test_removed_code_is_not_investigational_but_gets_the_retirement_notice(knowledge: Knowledge) -> None:
    # 81277 left the list in 2023: no verdict from the list afterwards, but it is still a
    # liquid-biopsy code, so after the retirement the clinician is told where such tests are reviewed.
    assert outcome(knowledge, order("81277", D("2024-01-01"))) is Outcome.NOT_APPLICABLE
    assert outcome(knowledge, order("81277", D("2026-08-01"))) is Outcome.RETIRED


def test_fep_only_coverage_means_policy_does_not_apply(knowledge: Knowledge) -> None:
    d = decide([order("0530U", D("2025-03-01"))], CoverageFacts(CoverageStatus.FOUND, (FEP,)), knowledge, TODAY)
    [od] = d.orders
    assert od.outcome is Outcome.PRODUCT_VARIATION
    assert od.assertions == () and od.own_manual_coverages == (FEP,)


@pytest.mark.parametrize("descriptor", ["FEP Blue Basic", "federal employee program", "Plan (fep)"])
def test_fep_matcher_is_case_insensitive_on_words(knowledge: Knowledge, descriptor: str) -> None:
    cov = CoverageFacts(CoverageStatus.FOUND, (PlanCoverage("Coverage/x", (descriptor,)),))
    assert outcome(knowledge, order("0530U", D("2025-03-01")), cov) is Outcome.PRODUCT_VARIATION


def test_fep_matcher_needs_whole_words(knowledge: Knowledge) -> None:
    cov = CoverageFacts(CoverageStatus.FOUND, (PlanCoverage("Coverage/x", ("PREFEPARED plan",)),))
    assert outcome(knowledge, order("0530U", D("2025-03-01")), cov) is Outcome.INVESTIGATIONAL


def test_fep_keywords_are_configurable(knowledge: Knowledge) -> None:
    cov = CoverageFacts(CoverageStatus.FOUND, (PlanCoverage("Coverage/x", ("Federal Blue",)),))
    got = outcome(knowledge, order("0530U", D("2025-03-01")), cov, plan_keywords=("federal blue",))
    assert got is Outcome.PRODUCT_VARIATION


def test_mixed_fep_and_commercial_asserts_only_for_commercial(knowledge: Knowledge) -> None:
    [od] = decide([order("0530U", D("2025-03-01"))], CoverageFacts(CoverageStatus.FOUND, (COMMERCIAL, FEP)),
                  knowledge, TODAY).orders
    assert od.outcome is Outcome.INVESTIGATIONAL
    assert [a.coverage for a in od.assertions] == ["Coverage/c1"] and od.own_manual_coverages == (FEP,)


@pytest.mark.parametrize(("icd", "policy", "basis"), [
    (("C34",), "2.241", "policy-text"),
    (("C43",), "2.364", "policy-text"),
    (("C71",), "2.364", "inference"),
    (("C61",), "2.280", "inference"),
    (("C18", "C78"), "2.316", "policy-text"),
    (("C20", "C77"), "2.316", "policy-text"),
])
def test_unlisted_liquid_biopsy_routed_by_diagnosis(knowledge: Knowledge, icd: tuple[str, ...], policy: str,
                                                    basis: str) -> None:
    [od] = decide([order("0239U", D("2025-03-01"), icd=icd)], FOUND, knowledge, TODAY).orders
    assert od.outcome is Outcome.OTHER_POLICY and od.assertions == ()
    assert [(r.policy, r.basis) for r in od.routes] == [(policy, basis)]


def test_colorectal_without_secondary_neoplasm_is_not_metastatic(knowledge: Knowledge) -> None:
    assert outcome(knowledge, order("0239U", D("2025-03-01"), icd=("C18",))) is Outcome.NOT_APPLICABLE


def test_secondary_neoplasm_may_come_from_the_patient_record(knowledge: Knowledge) -> None:
    d = decide([order("0239U", D("2025-03-01"), icd=("C18",))], FOUND, knowledge, TODAY,
               patient_categories=frozenset({"C78"}))
    assert [r.policy for r in d.orders[0].routes] == ["2.316"]


@pytest.mark.parametrize(("purpose", "policy", "icd"), [
    ("comprehensive-genomic-profiling", "2.259", ()),
    ("prostate-cancer-detection-risk", "2.280", ()),
    ("ar-v7-ctc-metastatic-prostate", "2.280", ()),
    ("ctdna-relapse-prediction", "2.315", ("C18",)),
    ("immune-checkpoint-inhibitor-selection", None, ()),
])
def test_unlisted_liquid_biopsy_routed_by_purpose(knowledge: Knowledge, purpose: str, policy: str | None,
                                                  icd: tuple[str, ...]) -> None:
    [od] = decide([order("0239U", D("2025-03-01"), icd=icd, purposes=(purpose,))], FOUND, knowledge, TODAY).orders
    assert od.outcome is Outcome.OTHER_POLICY
    assert policy in [r.policy for r in od.routes]


def test_listed_code_with_routed_use_stays_investigational_and_carries_route(knowledge: Knowledge) -> None:
    [od] = decide([order("0530U", D("2025-03-01"), icd=("C34",))], FOUND, knowledge, TODAY).orders
    assert od.outcome is Outcome.INVESTIGATIONAL
    assert [r.policy for r in od.routes] == ["2.241"]


def test_liquid_biopsy_recognised_by_text(knowledge: Knowledge) -> None:
    o = order(None, D("2025-03-01"), icd=("C34",), text="Circulating tumor DNA panel, plasma")
    assert outcome(knowledge, o) is Outcome.OTHER_POLICY


def test_unrelated_orders_get_nothing(knowledge: Knowledge) -> None:
    d = decide([order("85025", D("2025-03-01"), icd=("C34",), text="CBC with differential")], FOUND,
               knowledge, TODAY)
    assert d.orders == ()


def test_no_active_coverage_keeps_policy_outcome_without_assertions(knowledge: Knowledge) -> None:
    d = decide([order("0530U", D("2025-03-01"))], CoverageFacts(CoverageStatus.NONE), knowledge, TODAY)
    assert d.orders[0].outcome is Outcome.INVESTIGATIONAL and d.orders[0].assertions == ()
    assert d.no_active_coverage


def test_unavailable_coverage_keeps_policy_outcome_without_assertions(knowledge: Knowledge) -> None:
    d = decide([order("0530U", D("2025-03-01"))], CoverageFacts(CoverageStatus.UNAVAILABLE), knowledge, TODAY)
    assert d.orders[0].outcome is Outcome.INVESTIGATIONAL and d.orders[0].assertions == ()
    assert not d.no_active_coverage
