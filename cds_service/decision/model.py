"""Inputs and outputs of the decision: plain values, no FHIR models, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from typing import Any

from cds_service.coverage_information import CoverageInformation
from cds_service.knowledge.model import CatalogueTest, ProductVariation, Route

# ---------------------------------------------------------------- orders


@dataclass(frozen=True, slots=True)
class DateWindow:
    """When the service will be performed: a day, a period, or (not stated) any day from ``start`` on."""

    start: date
    end: date | None  # last day included; None when open-ended
    basis: str  # where it came from, in words
    stated: bool  # False when the order gives no date of service

    def contains(self, day: date) -> bool:
        return self.start <= day and (self.end is None or day <= self.end)

    def describe(self) -> str:
        if not self.stated:
            return f"not given: judged for any date from {self.start.isoformat()} on"
        if self.end is None:
            return f"from {self.start.isoformat()} on (no end given)"
        if self.end == self.start:
            return self.start.isoformat()
        return f"{self.start.isoformat()} to {self.end.isoformat()}"


@dataclass(frozen=True, slots=True)
class Diagnosis:
    category: str  # ICD-10-CM category (C34.90 -> C34)
    code: str  # as given
    display: str  # as given, or ""


@dataclass(frozen=True, slots=True)
class Order:
    """A ServiceRequest reduced to what the policy looks at."""

    reference: str  # "ServiceRequest/{id}", or where it sits in the request when it has no id
    codings: tuple[tuple[str, str, str], ...]  # (canonical system or "", code upper-cased, display as given)
    text: str  # code.text, coding displays and orderDetail text, as given
    window: DateWindow
    diagnoses: tuple[Diagnosis, ...]  # from reasonCode and reasonReference
    purposes: frozenset[str]  # liquid-biopsy purpose codes from reasonCode / category
    status: str
    intent: str
    do_not_perform: bool
    draft: bool  # a draft order of this ordering session (a suggestion may remove it)
    has_code_text: bool = False  # the text begins with code.text, the order's own name for the test
    name: str = ""  # the order's own name for the test: code.text and coding displays (the start of text)
    held: tuple[tuple[str, str, bytes], ...] = ()  # coverage-information it carries: (coverage, id, verdict)
    # The ServiceRequest's JSON; once the order is judged and validated, in the form it is echoed (pruned).
    resource: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def diagnosis_categories(self) -> frozenset[str]:
        return frozenset(d.category for d in self.diagnoses)

    @property
    def named(self) -> bool:
        """It has an id, so a suggestion or a later call can refer to it (an order without one is known
        only by its place in this request, which has no '/')."""
        return "/" in self.reference


# ---------------------------------------------------------------- coverage


@dataclass(frozen=True, slots=True)
class CoverageRecord:
    """A Coverage reduced to what decides membership and eligibility (read by intake, judged here)."""

    reference: str  # "Coverage/{id}"
    status: str
    order: int | None  # order of benefits (1 = primary)
    start: date | None
    end: date | None
    payor_identifiers: tuple[tuple[str, str], ...]  # (system, value) of the payor (reference or Organization)
    payor_names: tuple[str, ...]  # payor display / Organization name and aliases, as given
    plan_names: tuple[str, ...]  # class values and names, type text, as given
    plan_values: tuple[str, ...]  # class values (enrollment codes and the like)
    problem: str = ""  # why an element the decision needs could not be read ("" when readable)


class CoverageSource(StrEnum):
    PROVIDED = "provided"  # prefetch or the FHIR server gave Coverage resources
    NONE_FOUND = "none-found"  # the query found nothing
    UNAVAILABLE = "unavailable"  # it could not be obtained


@dataclass(frozen=True, slots=True)
class CoverageFacts:
    source: CoverageSource
    records: tuple[CoverageRecord, ...] = ()
    problem: str = ""  # why unavailable, in words


class PayerKind(StrEnum):
    SERVED = "served"  # a payer this endpoint serves (Capital Blue Cross and its subsidiaries)
    VARIATION = "variation"  # a product variation with its own manual (the FEP)
    OTHER = "other"  # identified, and not one this endpoint serves
    UNKNOWN = "unknown"  # no payor information to identify


@dataclass(frozen=True, slots=True)
class MemberCoverage:
    record: CoverageRecord
    payer: PayerKind
    payer_label: str  # the payer as the Coverage names it
    variation: ProductVariation | None = None

    @property
    def reference(self) -> str:
        return self.record.reference

    def in_force(self, day: date) -> bool:
        r = self.record
        return r.status == "active" and (r.start is None or r.start <= day) and (r.end is None or day <= r.end)

    @property
    def label(self) -> str:
        plan = next((p for p in self.record.plan_names if p and p != self.payer_label), "")
        return f"{self.payer_label} {plan}".strip() or self.record.reference


class CoverageProblem(StrEnum):
    NONE_ACCESSIBLE = "none-accessible"
    OTHER_PAYER = "other-payer"
    UNKNOWN_PAYER = "unknown-payer"
    SEVERAL_PRIMARY = "several-primary"


@dataclass(frozen=True, slots=True)
class Selection:
    """The coverages this endpoint answers for, or why there are none (CRD hook-13: a 400)."""

    coverages: tuple[MemberCoverage, ...]
    problem: CoverageProblem | None = None
    message: str = ""


# ---------------------------------------------------------------- what the decision finds


class Recognised(StrEnum):
    LIQUID_BIOPSY = "liquid-biopsy"  # a ctDNA / CTC cancer test: the policy's subject
    NOT_THIS_POLICY = "not-this-policy"  # cell-free DNA that is not a cancer test, or not ctDNA/CTC
    NONE = "none"


@dataclass(frozen=True, slots=True)
class Recognition:
    kind: Recognised
    code: str = ""  # the procedure code the finding is about ("" when recognised by name or words)
    test: CatalogueTest | None = None
    via: str = ""  # code | code-in-text | name | keyword
    evidence: str = ""  # what was matched, as written in the data


@dataclass(frozen=True, slots=True)
class Use:
    purposes: tuple[str, ...]  # purpose codes, stated or inferred
    basis: str  # stated | test | diagnosis | none
    description: str  # in words
    short: str  # for a card summary
    basis_words: str  # where the use comes from, in words
    reviewed: bool  # every purpose is one the policy's evidence review covers


@dataclass(frozen=True, slots=True)
class Segment:
    start: date
    end: date | None
    reason: str | None  # verdict reason code, None when the policy has nothing to say


@dataclass(frozen=True, slots=True)
class Verdict:
    """One order under one Coverage: the coverage-information (not yet issued an id) and its reason."""

    coverage: MemberCoverage
    reason: str
    information: CoverageInformation
    segments: tuple[Segment, ...]


@dataclass(frozen=True, slots=True)
class OrderJudgement:
    order: Order
    recognition: Recognition
    use: Use
    routes: tuple[Route, ...]
    policy_reason: str | None  # the policy's finding, coverage aside (None: nothing to say on the date)
    segments: tuple[Segment, ...]  # the policy finding over the date window
    verdicts: tuple[Verdict, ...] = ()

    @property
    def label(self) -> str:
        """The test as the order names it, with its code."""
        return test_label(self.order, self.recognition)


@dataclass(frozen=True, slots=True)
class Decision:
    judgements: tuple[OrderJudgement, ...]  # only orders the policy judges
    selection: Selection | None  # None when no order is judged (coverage was not needed)
    today: date

    @property
    def summary(self) -> str:
        return ",".join(sorted({v.reason for j in self.judgements for v in j.verdicts}
                               | {j.policy_reason or "none" for j in self.judgements if not j.verdicts})) or "none"


def test_label(order: Order, recognition: Recognition) -> str:
    """The test as the order names it (code.text, never re-cased), else the catalogue's name for it, else
    the coding's display, with the code when it has one: '0242U', 'Guardant360 CDx (0242U)', 'cfDNA panel'."""
    parts = order.text.split(" | ") if order.text else []
    code_text = parts[0].strip() if parts and order.has_code_text else ""
    catalogue = recognition.test.short_name if recognition.test else ""
    named = code_text or catalogue or (parts[0].strip() if parts else "")
    if len(named) > 48:
        named = named[:47].rstrip() + "…"
    code = recognition.code
    if named and code and code.lower() not in named.lower():
        return f"{named} ({code})"
    return named or code or order.reference
