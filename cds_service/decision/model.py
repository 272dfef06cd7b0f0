"""Inputs and outputs of the decision: plain values, no FHIR models, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from typing import Any

from cds_service.knowledge.model import Route


@dataclass(frozen=True, slots=True)
class Order:
    """A draft ServiceRequest reduced to what the policy looks at."""

    reference: str  # "ServiceRequest/{id}"
    codes: tuple[str, ...]  # procedure codes (CPT/HCPCS), trimmed and upper-cased
    text: str  # code.text and coding displays, lower-cased, for keyword recognition
    date_of_service: date
    date_basis: str  # which element gave the date, in words
    diagnosis_categories: frozenset[str]  # ICD-10-CM categories from the order's reasons
    purposes: frozenset[str]  # liquid-biopsy purpose codes from reasonCode / category
    resource: dict[str, Any] = field(compare=False, repr=False)  # the original JSON, for CRD updates


@dataclass(frozen=True, slots=True)
class PlanCoverage:
    reference: str  # "Coverage/{id}"
    descriptors: tuple[str, ...]  # class values/names, payor displays: what a plan matcher reads


class CoverageStatus(StrEnum):
    FOUND = "found"  # at least one active Coverage
    NONE = "none"  # the data says the patient has no active coverage
    UNAVAILABLE = "unavailable"  # coverage could not be obtained


@dataclass(frozen=True, slots=True)
class CoverageFacts:
    status: CoverageStatus
    coverages: tuple[PlanCoverage, ...] = ()


class Outcome(StrEnum):
    INVESTIGATIONAL = "investigational"  # on the code list at the date of service
    RETIRED = "retired"  # date of service on/after the policy's retirement
    PRODUCT_VARIATION = "product-variation"  # the member's plan has its own policy manual (FEP)
    OTHER_POLICY = "other-policy"  # a use the policy does not address
    NOT_APPLICABLE = "not-applicable"


class Covered(StrEnum):
    NOT_COVERED = "not-covered"
    CONDITIONAL = "conditional"


@dataclass(frozen=True, slots=True)
class Assertion:
    """One coverage-information statement about one order under one Coverage."""

    coverage: str
    covered: Covered
    pa_needed: str | None
    reason: str  # key of Knowledge.coverage_reasons


@dataclass(frozen=True, slots=True)
class OrderDecision:
    order: Order
    outcome: Outcome
    code: str  # the code the decision is about ("" when recognised by text only)
    routes: tuple[Route, ...] = ()  # uses other policies govern
    own_manual_coverages: tuple[PlanCoverage, ...] = ()  # FEP coverages (MP does not apply to them)
    assertions: tuple[Assertion, ...] = ()


@dataclass(frozen=True, slots=True)
class Decision:
    orders: tuple[OrderDecision, ...]  # only orders the policy has something to say about
    coverage: CoverageFacts
    today: date

    @property
    def no_active_coverage(self) -> bool:
        return bool(self.orders) and self.coverage.status is CoverageStatus.NONE

    @property
    def summary(self) -> str:
        return ",".join(sorted({d.outcome.value for d in self.orders})) or "none"
