"""The liquid-biopsy policy's rules as one pure function: (orders, coverage facts, knowledge, today) -> Decision.

No Flask, no I/O, no clock: the caller passes ``today``. Every fact comes from ``Knowledge``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import date
from functools import lru_cache

from cds_service.decision.model import (
    Assertion,
    CoverageFacts,
    CoverageStatus,
    Covered,
    Decision,
    Order,
    OrderDecision,
    Outcome,
    PlanCoverage,
)
from cds_service.knowledge.model import Knowledge, Route


def decide(
    orders: Sequence[Order],
    coverage: CoverageFacts,
    knowledge: Knowledge,
    today: date,
    plan_keywords: Sequence[str] | None = None,
    patient_categories: frozenset[str] = frozenset(),
) -> Decision:
    """Judge each order; orders the policy has nothing to say about are left out."""
    keywords = tuple(plan_keywords if plan_keywords is not None else knowledge.plan_match_keywords)
    own_manual = tuple(c for c in coverage.coverages if has_own_policy_manual(c, keywords))
    judged = (judge(o, coverage, own_manual, knowledge, patient_categories) for o in orders)
    return Decision(tuple(d for d in judged if d.outcome is not Outcome.NOT_APPLICABLE), coverage, today)


def judge(
    order: Order,
    coverage: CoverageFacts,
    own_manual: tuple[PlanCoverage, ...],
    knowledge: Knowledge,
    patient_categories: frozenset[str] = frozenset(),
) -> OrderDecision:
    outcome, code, routes = policy_outcome(order, knowledge, patient_categories)
    if outcome is Outcome.NOT_APPLICABLE:
        return OrderDecision(order, outcome, code)

    plan_coverages = tuple(c for c in coverage.coverages if c not in own_manual)
    if own_manual and not plan_coverages:
        # Every active plan has its own policy manual (FEP): this policy does not apply at all.
        return OrderDecision(order, Outcome.PRODUCT_VARIATION, code, routes, own_manual)

    assertions: tuple[Assertion, ...] = ()
    if coverage.status is CoverageStatus.FOUND:
        if outcome is Outcome.INVESTIGATIONAL:
            assertions = tuple(Assertion(c.reference, Covered.NOT_COVERED, None, "investigational-policy")
                               for c in plan_coverages)
        elif outcome is Outcome.RETIRED:
            assertions = tuple(Assertion(c.reference, Covered.CONDITIONAL, "conditional", "policy-retired-delegated")
                               for c in plan_coverages)
    return OrderDecision(order, outcome, code, routes, own_manual, assertions)


def applies(order: Order, knowledge: Knowledge, patient_categories: frozenset[str] = frozenset()) -> bool:
    """Whether the policy has anything to say about the order (whatever the member's coverage)."""
    return policy_outcome(order, knowledge, patient_categories)[0] is not Outcome.NOT_APPLICABLE


def policy_outcome(order: Order, knowledge: Knowledge,
                   patient_categories: frozenset[str]) -> tuple[Outcome, str, tuple[Route, ...]]:
    """What the policy says about the order before coverage is looked at: outcome, code, governing routes."""
    day = order.date_of_service
    routes = governing_routes(order, knowledge, patient_categories)
    listed_code = next((c for c in order.codes if knowledge.is_listed(c, day)), None)
    code = listed_code or next((c for c in order.codes if knowledge.is_liquid_biopsy_code(c)), None)
    recognised = code is not None or is_liquid_biopsy_text(order.text, knowledge.recognition_keywords)
    retired = day >= knowledge.retirement
    listed_at_retirement = code is not None and knowledge.is_listed(code, knowledge.last_day_in_force)

    if listed_code is not None:
        outcome = Outcome.INVESTIGATIONAL
    elif retired and recognised and (not routes or listed_at_retirement):
        outcome = Outcome.RETIRED
    elif recognised and routes:
        outcome = Outcome.OTHER_POLICY
    else:
        outcome = Outcome.NOT_APPLICABLE
    return outcome, code or "", routes


def governing_routes(order: Order, knowledge: Knowledge, patient_categories: frozenset[str]) -> tuple[Route, ...]:
    """Routes whose trigger is among the order's reasons and whose co-diagnoses the patient has."""
    known = order.diagnosis_categories | patient_categories
    candidates: Iterable[Route] = (
        *(r for cat in sorted(order.diagnosis_categories) for r in knowledge.routes_by_category.get(cat, ())),
        *(r for p in sorted(order.purposes) for r in knowledge.routes_by_purpose.get(p, ())),
    )
    seen: set[tuple[str | None, str]] = set()
    found: list[Route] = []
    for route in candidates:
        key = (route.policy, route.source)
        if route.requires_categories <= known and key not in seen:
            seen.add(key)
            found.append(route)
    return tuple(found)


def has_own_policy_manual(coverage: PlanCoverage, keywords: Sequence[str]) -> bool:
    pattern = _keyword_pattern(tuple(keywords))
    return pattern is not None and any(pattern.search(d) for d in coverage.descriptors)


def is_liquid_biopsy_text(text: str, keywords: Sequence[str]) -> bool:
    pattern = _keyword_pattern(tuple(keywords))
    return pattern is not None and bool(pattern.search(text))


@lru_cache(maxsize=32)
def _keyword_pattern(keywords: tuple[str, ...]) -> re.Pattern[str] | None:
    """Whole-word, case-insensitive alternation of the keywords (so 'FEP' does not match 'prefepare')."""
    words = [k.strip() for k in keywords if k.strip()]
    if not words:
        return None
    return re.compile(r"(?<![A-Za-z0-9])(?:" + "|".join(map(re.escape, words)) + r")(?![A-Za-z0-9])", re.I)
