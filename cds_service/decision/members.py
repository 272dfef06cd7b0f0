"""Who the member is: which Coverage is primary, and whether its payer is one this endpoint serves.

The policy "is only applicable to certain programs and products administered by Capital Blue
Cross" (the companies its footer names); FEP members are referred to their own manual. Payers
and plans are data (tagged Organization and InsurancePlan artifacts, plus deployment settings).
"""

from __future__ import annotations

from cds_service.decision.model import (
    CoverageFacts,
    CoverageProblem,
    CoverageRecord,
    CoverageSource,
    MemberCoverage,
    PayerKind,
    Selection,
)
from cds_service.knowledge.lexicon import normalise, tokens
from cds_service.knowledge.model import Knowledge, Payer, ProductVariation


def identify(record: CoverageRecord, knowledge: Knowledge) -> MemberCoverage:
    """Whose coverage this is. A known identifier decides; else the payer's name; a product variation (FEP) is found
    by its names anywhere in the Coverage, or by its plan identifiers on a Coverage of a served payer."""
    label = record.payor_names[0] if record.payor_names else ""
    served = _served_payer(record, knowledge)
    variation = _variation(record, knowledge, served is not None)
    if variation is not None:
        return MemberCoverage(record, PayerKind.VARIATION, label or variation.name, variation)
    if served is not None:
        return MemberCoverage(record, PayerKind.SERVED, label or served.name)
    if any(tokens(n) for n in record.payor_names):
        return MemberCoverage(record, PayerKind.OTHER, label)
    # Only identifiers, none of them known: no evidence either way (the data does not hold every
    # identifier of every company), so the payer is unknown rather than another's.
    return MemberCoverage(record, PayerKind.UNKNOWN, "")


def _served_payer(record: CoverageRecord, knowledge: Knowledge) -> Payer | None:
    ids = set(record.payor_identifiers)
    for payer in knowledge.payers:
        if ids & payer.identifiers:
            return payer
    # An identifier we do not know is no evidence either way (the data does not hold every identifier
    # each company has, e.g. Capital Blue Cross's own NAIC code): the name decides.
    for name in record.payor_names:
        if (found := knowledge.lexicon.payer_names.find(normalise(name))) is not None and _whole_name(name, found):
            return knowledge.lexicon.payer_by_name[found]
    return None


def _whole_name(given: str, found: str) -> bool:
    """Short aliases (one word, e.g. 'CBC') identify a payer only when they are the whole display."""
    return len(tokens(found)) > 1 or tokens(given) == tokens(found)


def _variation(record: CoverageRecord, knowledge: Knowledge, served: bool) -> ProductVariation | None:
    """A plan with its own manual, by any of its names as a whole word in the plan or payer names
    ('FEP' in 'FEP Blue Standard'); on a served payer's Coverage also by a program it is offered in
    ('FEHB', 'PSHB': other carriers offer plans there too) or a plan identifier (an enrollment code)."""
    lexicon = knowledge.lexicon
    for name in (*record.plan_names, *record.payor_names):
        if (found := lexicon.variation_names.find(normalise(name))) is not None:
            return lexicon.variation_by_name[found]
    if served:
        for name in (*record.plan_names, *record.payor_names):
            if (found := lexicon.variation_programs.find(normalise(name))) is not None:
                return lexicon.variation_by_program[found]
        values = set(record.plan_values)
        return next((v for v in knowledge.variations if values & v.plan_identifiers), None)
    return None


# Coverages of ours answered for at once when the client does not say which is primary. Each is a verdict
# per judged order, echoed in every order's system action and recorded: without a bound a request of 100
# such Coverages and 300 orders made a 78 MB answer and held its worker for seconds.
MOST_COVERAGES_ANSWERED = 8


def select(facts: CoverageFacts, knowledge: Knowledge) -> Selection:
    """The coverages this endpoint answers for (CRD dev-28: the primary one; several only when the
    client cannot tell which is primary and more than one is ours), or why there are none."""
    if facts.source is CoverageSource.UNAVAILABLE:
        return Selection((), CoverageProblem.NONE_ACCESSIBLE, f"No Coverage could be obtained: {facts.problem}")
    candidates = [identify(r, knowledge) for r in facts.records if r.status != "entered-in-error"]
    if not candidates:
        return Selection((), CoverageProblem.NONE_ACCESSIBLE,
                         "No Coverage is accessible: the coverage prefetch and the FHIR server found none")
    active = [c for c in candidates if c.record.status == "active"]
    pool = active or candidates  # a member with only inactive coverage is still ours to answer (not covered)
    ordered = [c for c in pool if c.record.order is not None]
    if ordered:
        first = min(c.record.order for c in ordered if c.record.order is not None)
        pool = [c for c in ordered if c.record.order == first]
    ours = tuple(c for c in pool if c.payer in (PayerKind.SERVED, PayerKind.VARIATION))
    if len(ours) > MOST_COVERAGES_ANSWERED:
        return Selection((), CoverageProblem.SEVERAL_PRIMARY,
                         f"{len(ours)} Coverages of this payer could each be the primary one (none has the lowest "
                         f"'order'); this endpoint answers for at most {MOST_COVERAGES_ANSWERED}: send the primary one")
    if ours:
        return Selection(ours)
    unknown = [c for c in pool if c.payer is PayerKind.UNKNOWN]
    if unknown:
        return Selection((), CoverageProblem.UNKNOWN_PAYER,
                         f"{unknown[0].reference} names no payer (payor identifier or name) this endpoint can "
                         "identify; it serves " + ", ".join(p.name for p in knowledge.payers))
    others = "; ".join(f"{c.reference} ({c.payer_label})" for c in pool)
    primary = "The primary Coverage" if len(pool) == 1 else "None of the primary Coverages"
    return Selection((), CoverageProblem.OTHER_PAYER,
                     f"{primary} ({others}) is not of a payer this endpoint serves: "
                     + ", ".join(p.name for p in knowledge.payers))
