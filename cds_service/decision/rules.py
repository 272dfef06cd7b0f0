"""The policy's rules as pure functions: orders -> judgements; judgements x coverages -> verdicts.

No Flask, no I/O, no clock: the caller passes ``today``. Every fact comes from ``Knowledge``.
Reading order: ``judge`` (what the policy says about an order, coverage aside), ``decide`` (one
CRD coverage-information per judged order and Coverage). Dates are judged over the order's date
window: a verdict that changes within it (a code-list change, the retirement, the coverage
period) is ``conditional`` with ``info-needed: timeframe`` instead of a guess.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import date, timedelta

from cds_service import terminology
from cds_service.coverage_information import (
    Code,
    CoverageInformation,
    Covered,
    Detail,
    DetailCategory,
    InfoNeeded,
    Reason,
)
from cds_service.decision.model import (
    Decision,
    MemberCoverage,
    Order,
    OrderJudgement,
    PayerKind,
    Recognised,
    Recognition,
    Segment,
    Selection,
    Use,
    Verdict,
)
from cds_service.decision.recognise import recognise
from cds_service.knowledge.model import Knowledge, Policy, Route, page_id

# Orders that will be performed. completed (already done), revoked, entered-in-error and doNotPerform
# orders are not judged; an 'option' is an alternative inside a RequestGroup, not a request itself.
PERFORMED_STATUSES = frozenset({"draft", "active", "on-hold", "unknown"})
NOT_REQUESTS = frozenset({"option"})

SPANS = "date-of-service-spans-change"
ONE_DAY = timedelta(days=1)


@dataclass(frozen=True)
class Context:
    today: date
    pages_base: str  # absolute base URL of this service (its policy pages stand in for unknown public URLs)


# ---------------------------------------------------------------- what the policy says about an order


def will_be_performed(order: Order) -> bool:
    return order.status in PERFORMED_STATUSES and not order.do_not_perform and order.intent not in NOT_REQUESTS


def judge(order: Order, knowledge: Knowledge,
          patient_categories: frozenset[str] = frozenset()) -> OrderJudgement | None:
    """The policy's finding on one order before coverage is looked at, or None when it has nothing to say."""
    if not will_be_performed(order):
        return None
    recognition = recognise(order, knowledge)
    if recognition.kind is not Recognised.LIQUID_BIOPSY:
        return None
    use = use_of(order, recognition, knowledge)
    routes = governing_routes(order, recognition, use, knowledge, patient_categories)
    if use.basis == "diagnosis" and routes:  # the Guidelines exclude selecting targeted treatment in these cancers
        excluded = "; ".join(dict.fromkeys(r.use.lower() for r in routes))
        use = replace(use, description=f"selecting targeted treatment in {excluded}",
                      short=f"targeted treatment in {routes[0].use.lower()}")
    draft = OrderJudgement(order, recognition, use, routes, None, ())
    segments = segments_over(order, lambda day: policy_reason(draft, day, knowledge), _policy_changes(draft, knowledge))
    if all(s.reason is None for s in segments):
        return None
    return OrderJudgement(order, recognition, use, routes, summary_reason(segments), segments)


def use_of(order: Order, recognition: Recognition, knowledge: Knowledge) -> Use:
    """Why the test is ordered: a stated purpose outranks the test's own use, which outranks a diagnosis.
    Except where the test's own use is one the Guidelines leave to others and the order's statement
    does not change that: the test itself ("does not address tumor-informed ctDNA testing for cancer
    management", AR-V7 CTCs in metastatic prostate cancer: purposes marked excludes-the-test), or
    comprehensive genomic profiling ordered to select targeted treatment. The test's use then stands
    beside the stated one, so a policy named for either governs (and, stated, it takes a listed code
    off the list, as any stated excluded use does)."""
    test = recognition.test
    stated = tuple(sorted(p for p in order.purposes if p in knowledge.purposes))
    if stated and test is not None and test.use is not None and _test_use_stands(test.use, stated, knowledge):
        return _use((test.use, *(p for p in stated if p != test.use)), "stated",
                    f"stated in the order, beside the use {test.display} is made for", knowledge)
    if stated:
        return _use(stated, "stated", "stated in the order", knowledge)
    if test is not None and test.use is not None:
        return _use((test.use,), "test", f"the use {test.display} is made for; the order states none", knowledge)
    cancers = [d for d in order.diagnoses if d.category.startswith(terminology.NEOPLASM_CATEGORY_PREFIXES)]
    if cancers:
        names = "; ".join(dict.fromkeys(f"{d.display} ({d.code})" if d.display else d.code for d in cancers))
        return Use((), "diagnosis", f"ctDNA/CTC testing in cancer {names}", f"testing in cancer {cancers[0].code}",
                   f"inferred from the diagnosis {cancers[0].code}; the order states no purpose", True)
    return Use((), "none", "an unstated use", "an unstated use", "the order states neither a purpose nor a diagnosis",
               False)


def _test_use_stands(test_use: str, stated: tuple[str, ...], knowledge: Knowledge) -> bool:
    purposes = knowledge.purposes
    if purposes[test_use].reviewed:
        return False
    return purposes[test_use].excludes_the_test or (
        purposes[test_use].selects_targeted_treatment and any(purposes[p].selects_targeted_treatment for p in stated))


def _use(purposes: tuple[str, ...], basis: str, words: str, knowledge: Knowledge) -> Use:
    displays = [_in_sentence(knowledge.purposes[p].display) for p in purposes]
    return Use(purposes, basis, "; ".join(displays), displays[0], words,
               all(knowledge.purposes[p].reviewed for p in purposes))


def _in_sentence(display: str) -> str:
    """'Comprehensive genomic profiling ...' -> 'comprehensive genomic profiling ...'; 'ctDNA ...', 'AR-V7 ...' kept."""
    first = display.split(" ", 1)[0]
    return display[0].lower() + display[1:] if first[:1].isupper() and first[1:].islower() else display


def governing_routes(order: Order, recognition: Recognition, use: Use, knowledge: Knowledge,
                     patient_categories: frozenset[str]) -> tuple[Route, ...]:
    """Uses the policy leaves to other policies that this order's use falls under. A purpose routes
    by itself; a diagnosis routes only a targeted-treatment use (the Guidelines exclude targeted
    treatment in named cancers, not monitoring or screening in them)."""
    test_categories = recognition.test.categories if recognition.test else frozenset()
    categories = order.diagnosis_categories | test_categories
    known = categories | patient_categories
    targeted = not use.purposes or any(knowledge.purposes[p].selects_targeted_treatment for p in use.purposes)
    candidates: Iterable[Route] = (
        *(r for p in use.purposes for r in knowledge.routes_by_purpose.get(p, ())),
        *(r for cat in sorted(categories) for r in knowledge.routes_by_category.get(cat, ()) if targeted),
    )
    found: dict[tuple[str | None, str], Route] = {}
    for route in candidates:
        if route.requires_categories <= known:
            found.setdefault((route.policy, route.source), route)
    return tuple(found.values())


def policy_reason(j: OrderJudgement, day: date, knowledge: Knowledge) -> str | None:
    """The policy's finding for a service on ``day`` (a verdict reason code), or None."""
    code = j.recognition.code
    listed = knowledge.listed.get(code)
    on_list = knowledge.is_listed(code, day)
    retired = day >= knowledge.retirement
    # A code on the list when the policy was retired goes to the delegated review with it.
    delegated = retired and listed is not None and listed.on_list(knowledge.last_day_in_force)
    if j.routes and (j.use.basis == "stated" or not (on_list or delegated)):
        # "If a separate policy exists, then conclusions reached there supersede conclusions here";
        # a listed code keeps its listing unless the order itself states the excluded use.
        return "other-policy-governs" if any(r.policy for r in j.routes) else "use-not-addressed"
    if retired:
        return "policy-retired-delegated"
    if on_list:
        return "investigational-code-list"
    if listed is not None and any(m.removed is not None and m.removed <= day for m in listed.memberships):
        return None  # the payer took the code off the list: the policy no longer speaks to it
    if j.use.reviewed:
        return "investigational-policy-statement"
    return "use-not-stated" if j.use.basis == "none" else None


def _policy_changes(j: OrderJudgement, knowledge: Knowledge) -> set[date]:
    listed = knowledge.listed.get(j.recognition.code)
    return {knowledge.retirement, *(listed.changes() if listed else ())}


def segments_over(order: Order, reason_at: Callable[[date], str | None],
                  changes: Iterable[date]) -> tuple[Segment, ...]:
    """The order's date window cut where the finding may change, with the finding of each part."""
    window = order.window
    points = sorted(d for d in set(changes) if window.start < d and (window.end is None or d <= window.end))
    starts = [window.start, *points]
    segments: list[Segment] = []
    for i, start in enumerate(starts):
        end = starts[i + 1] - ONE_DAY if i + 1 < len(starts) else window.end
        reason = reason_at(start)
        if segments and segments[-1].reason == reason:
            segments[-1] = Segment(segments[-1].start, end, reason)
        else:
            segments.append(Segment(start, end, reason))
    return tuple(segments)


def summary_reason(segments: Sequence[Segment]) -> str | None:
    reasons = {s.reason for s in segments}
    if len(reasons) == 1:
        return segments[0].reason
    return SPANS


# ---------------------------------------------------------------- verdicts


def decide(judgements: Sequence[OrderJudgement], selection: Selection, knowledge: Knowledge, ctx: Context) -> Decision:
    out = []
    for j in judgements:
        verdicts = tuple(v for c in selection.coverages if (v := verdict(j, c, knowledge, ctx)) is not None)
        out.append(OrderJudgement(j.order, j.recognition, j.use, j.routes, j.policy_reason, j.segments, verdicts))
    return Decision(tuple(out), selection, ctx.today)


def verdict(j: OrderJudgement, coverage: MemberCoverage, knowledge: Knowledge, ctx: Context) -> Verdict | None:
    record = coverage.record

    def reason_at(day: date) -> str | None:
        if record.problem:
            return "technical"
        if not coverage.in_force(day):
            return "no-active-coverage"
        if coverage.payer is PayerKind.VARIATION:
            return "product-variation-manual"
        return policy_reason(j, day, knowledge)

    # the day after the coverage ends (none when it ends on the last day there is: 9999-12-31 means "no end")
    after = record.end + ONE_DAY if record.end is not None and record.end < date.max else None
    changes = _policy_changes(j, knowledge) | {d for d in (record.start, after) if d}
    segments = segments_over(j.order, reason_at, changes)
    reason = summary_reason(segments)
    if reason is None:
        return None
    spec = knowledge.reasons[reason]
    info = list(spec.info_needed)
    if reason == SPANS and any(s.reason == "no-active-coverage" for s in segments):
        info.append(InfoNeeded.CONTRACT_WINDOW)
    if not j.order.window.stated and spec.covered is Covered.CONDITIONAL and InfoNeeded.TIMEFRAME not in info:
        info.append(InfoNeeded.TIMEFRAME)  # the date was not given: say so rather than present a guess
    values = wording(j, knowledge, coverage, segments)
    information = CoverageInformation(
        coverage=coverage.reference,
        covered=spec.covered,
        date=ctx.today,
        assertion_id="",
        info_needed=tuple(info),
        billing_codes=(Code(knowledge.code_system_cpt, j.recognition.code),) if j.recognition.code else (),
        reasons=(Reason(spec.coding, fill(spec.text, values)),),
        details=details(reason, j, coverage, knowledge, ctx),
        expiry_date=expiry(spec.expires_with, j, coverage, knowledge),
    )
    return Verdict(coverage, reason, information, segments)


def expiry(expires_with: frozenset[str], j: OrderJudgement, coverage: MemberCoverage,
           knowledge: Knowledge) -> date | None:
    """The last day the verdict holds, where it is known: the code leaving the list, the policy's last
    day in force, the end of the coverage period (CRD: 'if the payer knows of an expiry date')."""
    ends: list[date] = []
    start = j.order.window.start
    listed = knowledge.listed.get(j.recognition.code)
    if "code-list" in expires_with and listed is not None:
        ends += [m.removed - ONE_DAY for m in listed.memberships if m.contains(start) and m.removed is not None]
    if "policy" in expires_with:
        ends.append(knowledge.last_day_in_force)
    if "coverage" in expires_with and coverage.record.end is not None:
        ends.append(coverage.record.end)
    return min(ends) if ends else None


def details(reason: str, j: OrderJudgement, coverage: MemberCoverage, knowledge: Knowledge,
            ctx: Context) -> tuple[Detail, ...]:
    main = Detail(DetailCategory.OTHER, _detail_code("policy-link"), policy_url(knowledge.policy_label, "", ctx),
                  qualification=f"{knowledge.policy_label} {knowledge.policy_title}")
    if reason == "policy-retired-delegated":
        retired = Detail(DetailCategory.OTHER, main.code, main.value,
                         qualification=f"{main.qualification}; retired effective {knowledge.retirement.isoformat()}")
        return (retired, Detail(DetailCategory.OTHER, _detail_code("instructions"),
                                f"Review is delegated to {knowledge.successor.label}: {knowledge.successor.url}",
                                "valueString"))
    if reason == "other-policy-governs":
        return tuple(Detail(DetailCategory.OTHER, main.code, policy_url(p.label, p.url, ctx),
                            qualification=f"{p.label} {p.title}") for p in governing_policies(j, knowledge))
    if reason == "product-variation-manual" and coverage.variation is not None:
        manual = coverage.variation.manual
        return (Detail(DetailCategory.OTHER, main.code, manual.url, qualification=manual.label),)
    if reason in ("no-active-coverage", "technical"):
        return ()
    return (main,)


def _detail_code(code: str) -> Code:
    return Code(terminology.CRD_COVERAGE_DETAIL, code)


def policy_url(label: str, public_url: str, ctx: Context) -> str:
    """The policy's public address when one is known, else this service's page for it."""
    return public_url or f"{ctx.pages_base}/policies/{page_id(label)}"


def governing_policies(j: OrderJudgement, knowledge: Knowledge) -> list[Policy]:
    return list(dict.fromkeys(knowledge.policies[r.policy] for r in j.routes if r.policy))


# ---------------------------------------------------------------- wording shared by verdicts and cards


class Wording(dict[str, str]):
    """The placeholders of reason texts and card templates, each computed when a template first asks for
    it (a template uses a handful of the ~25; computing all of them was a tenth of a hook call). An
    unknown placeholder stays visible rather than failing."""

    def __init__(self, compute: dict[str, Callable[[], str]]) -> None:
        super().__init__()
        self._compute = compute

    @classmethod
    def of(cls, values: dict[str, str]) -> Wording:
        wording = cls({})
        wording.update(values)
        return wording

    def __missing__(self, key: str) -> str:
        if key not in self._compute:
            return "{" + key + "}"
        value = self[key] = self._compute[key]()
        return value


def fill(template: str, values: Wording) -> str:
    return template.format_map(values)


def wording(j: OrderJudgement, knowledge: Knowledge, coverage: MemberCoverage | None = None,
            segments: Sequence[Segment] = ()) -> Wording:
    """The placeholders of reason texts and card templates, for one order (and Coverage)."""
    window = j.order.window
    test = j.recognition.test

    def governing() -> list[Policy]:
        return governing_policies(j, knowledge)

    compute: dict[str, Callable[[], str]] = {
        "test": lambda: j.label,
        "code": lambda: j.recognition.code,
        "analyte": lambda: ({"ctdna": "ctDNA", "ctc": "CTC"}.get(test.analyte, "ctDNA/CTC") if test
                            else "ctDNA/CTC"),
        "policy": lambda: knowledge.policy_label,
        "policy_title": lambda: knowledge.policy_title,
        "retirement_date": lambda: knowledge.retirement.isoformat(),
        "successor": lambda: knowledge.successor.label,
        "payer": lambda: knowledge.publisher,
        "date_of_service": window.describe,
        "date_basis": lambda: window.basis,
        "when": lambda: (f"the date of service {window.describe()}" if window.stated and window.end == window.start
                         else f"dates of service {window.describe()}" if window.stated
                         else f"any date of service from {window.start.isoformat()} on (the order gives none)"),
        "date_short": lambda: (f"date of service {window.describe()}" if window.stated and window.end == window.start
                               else f"dates of service {window.describe()}" if window.stated
                               else "no date of service given"),
        "use": lambda: j.use.description,
        "use_short": lambda: j.use.short,
        "use_basis": lambda: j.use.basis_words,
        "governing": lambda: " and ".join(p.label for p in governing()) or "another policy",
        "governing_sentence": lambda: (" ".join(f"{p.label} ({p.title}) governs it." for p in governing()[:1])
                                       + "".join(f" So does {p.label} ({p.title})." for p in governing()[1:])),
        "route_basis": lambda: ("; ".join(dict.fromkeys(_basis_words(r, knowledge) for r in j.routes))
                                or j.use.basis_words),
        "basis_sentence": lambda: "\n\n".join(dict.fromkeys(_basis_sentence(r, knowledge) for r in j.routes)),
        "segments": lambda: "\n".join(_segment_line(s, knowledge) for s in (segments or j.segments)),
    }
    if coverage is not None:
        compute.update({
            "coverage_label": lambda: f"The {coverage.label} coverage ({coverage.reference})",
            "coverage_state": lambda: _coverage_state(coverage),
            "plan": lambda: coverage.label,
            "manual": lambda: coverage.variation.manual.label if coverage.variation else "",
            "problem": lambda: coverage.record.problem,
        })
    return Wording(compute)


def _basis_words(route: Route, knowledge: Knowledge) -> str:
    if route.basis == "policy-text":
        return "the policy's own words"
    return f"an inference, not {knowledge.policy_label}'s words"


def _basis_sentence(route: Route, knowledge: Knowledge) -> str:
    lead = ("This routing follows" if route.basis == "policy-text" else "This routing is an inference, not")
    return f"*{lead} {knowledge.policy_label}'s own words:* {route.comment}"


def _segment_line(segment: Segment, knowledge: Knowledge) -> str:
    if segment.end is None:
        span = f"from {segment.start.isoformat()}"
    elif segment.end == segment.start:
        span = segment.start.isoformat()
    else:
        span = f"{segment.start.isoformat()} to {segment.end.isoformat()}"
    what = knowledge.reasons[segment.reason].display if segment.reason else f"{knowledge.policy_label} does not apply"
    return f"- {span}: {what}"


def _coverage_state(coverage: MemberCoverage) -> str:
    r = coverage.record
    if r.status != "active":
        return f"has status {r.status}"
    if r.start and r.end:
        return f"is in force from {r.start.isoformat()} to {r.end.isoformat()}"
    if r.start:
        return f"is in force from {r.start.isoformat()}"
    if r.end:
        return f"ended on {r.end.isoformat()}"
    return "is in force"
