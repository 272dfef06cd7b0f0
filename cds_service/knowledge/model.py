"""The policy knowledge the decision core consumes: immutable, indexed, built once at start-up.

Every value here comes from the FHIR artifacts in ``fhir_profiles/`` (see ``loader.py``);
nothing in this module knows a code, a date, a payer or a policy number.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from cds_service.coverage_information import Code, Covered, InfoNeeded
from cds_service.knowledge.lexicon import Phrases

Coding = Code  # a Coding of the artifacts, as the verdict spells it


@dataclass(frozen=True, slots=True)
class Membership:
    """One stay of a code on the list: ``joined`` is the first day on it, ``removed`` the first day off."""

    joined: date | None
    removed: date | None
    source: str

    def contains(self, day: date) -> bool:
        return (self.joined is None or self.joined <= day) and (self.removed is None or day < self.removed)


@dataclass(frozen=True, slots=True)
class ListedCode:
    code: str
    display: str
    memberships: tuple[Membership, ...]
    related_policies: tuple[str, ...]

    def on_list(self, day: date) -> bool:
        return any(m.contains(day) for m in self.memberships)

    def changes(self) -> set[date]:
        """Days the code joined or left the list."""
        return {d for m in self.memberships for d in (m.joined, m.removed) if d is not None}


def page_id(label: str) -> str:
    """The id of a policy's page on this service: 'MP 1.234' -> 'mp-1-234'."""
    return label.lower().replace(" ", "-").replace(".", "-")


@dataclass(frozen=True, slots=True)
class Link:
    label: str
    url: str  # absolute URL, or "" when no public address is known (the service links its own page)


@dataclass(frozen=True, slots=True)
class Policy:
    """A policy the main policy cross-references (from the medical-policies CodeSystem)."""

    number: str
    label: str
    title: str
    url: str  # "" when no public address is known
    relationship: str


@dataclass(frozen=True, slots=True)
class Route:
    """A use the main policy does not address, and the policy (if any) that governs it."""

    source: str  # the ICD-10-CM category or purpose code that triggers the route
    use: str  # human description of the use
    policy: str | None  # medical-policies code; None when no single policy is named
    basis: str  # "policy-text" or "inference"
    comment: str
    requires_categories: frozenset[str] = frozenset()  # co-diagnosis categories, all required (dependsOn)


@dataclass(frozen=True, slots=True)
class Purpose:
    code: str
    display: str
    reviewed: bool  # one of the uses the policy's evidence review covers
    selects_targeted_treatment: bool  # the Guidelines' cancer-specific exclusions apply to it
    analyte: str  # "ctdna", "ctc" or "" when the use is not specific to one
    excludes_the_test: bool = False  # left to others whatever the test is ordered for (tumor-informed ctDNA)


@dataclass(frozen=True, slots=True)
class CatalogueTest:
    """One test of the catalogue: what it is, what it analyses and what it is for."""

    id: str
    display: str
    names: tuple[str, ...]  # display and designations, as written
    codes: tuple[tuple[str, str], ...]  # (canonical system, code)
    analyte: str  # ctdna | ctc | non-tumor-cfdna | other
    tumor_informed: bool | None
    cancer: bool
    use: str | None  # purpose code
    non_cancer_use: str | None
    categories: frozenset[str]  # ICD-10-CM categories of the cancer the test is specific to
    evidence: str
    product: bool  # a laboratory's product (Signatera), not a kind of test (a CTC count)

    @property
    def short_name(self) -> str:
        """The display, or a shorter name of the test when the display is long (for card summaries)."""
        if len(self.display) <= 40:
            return self.display
        return next((n for n in self.names[1:] if len(n) <= 40), self.display)

    @property
    def is_liquid_biopsy(self) -> bool:
        """A ctDNA or CTC cancer test: the kind the policy judges."""
        return self.cancer and self.analyte in ("ctdna", "ctc")


@dataclass(frozen=True, slots=True)
class VerdictReason:
    """A reason a verdict can give, with the CRD values a verdict with that reason carries."""

    code: str
    display: str
    coding: Code  # the reason Coding sent (CRD's own code where CRD defines one)
    covered: Covered
    info_needed: tuple[InfoNeeded, ...]
    expires_with: frozenset[str]  # code-list | policy | coverage
    text: str  # reason-text template


@dataclass(frozen=True, slots=True)
class Payer:
    """An organisation whose members' coverages this endpoint answers for."""

    id: str
    name: str
    names: tuple[str, ...]  # name and aliases
    identifiers: frozenset[tuple[str, str]]  # (system, value)


@dataclass(frozen=True, slots=True)
class ProductVariation:
    """A plan the policy does not apply to; its own manual governs (the FEP)."""

    id: str
    name: str
    names: tuple[str, ...]
    plan_identifiers: frozenset[str]  # values that identify the plan in Coverage.class (enrollment codes)
    manual: Link
    programs: tuple[str, ...] = ()  # programs it is offered in (FEHB, PSHB), which other carriers offer too


@dataclass(frozen=True, slots=True)
class CardTemplate:
    action_id: str
    summary: str
    detail: str
    card_type: Code
    priority: str


@dataclass(frozen=True)
class Lexicon:
    """The compiled phrase sets recognition uses."""

    test_names: Phrases  # of products: a product named beside a kind of test ("Signatera tumor-informed") is it
    test_kind_names: Phrases
    test_by_name: dict[str, CatalogueTest]
    recognition: Phrases
    ambiguous: Phrases
    non_cancer: Phrases
    cancer_context: Phrases
    payer_names: Phrases
    payer_by_name: dict[str, Payer]
    variation_names: Phrases
    variation_by_name: dict[str, ProductVariation]
    variation_programs: Phrases
    variation_by_program: dict[str, ProductVariation]


@dataclass(frozen=True)
class Knowledge:
    policy_label: str
    policy_title: str
    policy_version: str
    publisher: str
    policy_link: Link  # the policy document (url "" when no public address is known)
    policy_library: Link
    retirement: date  # first day the policy no longer applies
    code_system_cpt: str
    code_system_aliases: dict[str, str]  # every URI/OID a code system is sent under -> its canonical URI
    procedure_systems: frozenset[str]  # canonical CPT and HCPCS
    listed: dict[str, ListedCode]
    catalogue: tuple[CatalogueTest, ...]
    tests_by_code: dict[tuple[str, str], CatalogueTest]
    judged_codes: frozenset[str]  # procedure codes of the liquid-biopsy tests (tests ValueSet)
    lexicon: Lexicon
    policies: dict[str, Policy]
    routes_by_category: dict[str, tuple[Route, ...]]
    routes_by_purpose: dict[str, tuple[Route, ...]]
    purpose_system: str
    purposes: dict[str, Purpose]
    icd10_system: str
    successor: Link
    payers: tuple[Payer, ...]
    variations: tuple[ProductVariation, ...]
    templates: dict[str, CardTemplate]
    override_reasons: tuple[Code, ...]
    reasons: dict[str, VerdictReason]
    artifact_digest: str
    canonical_base: str

    @property
    def last_day_in_force(self) -> date:
        return self.retirement - timedelta(days=1)

    @property
    def purpose_display(self) -> dict[str, str]:
        return {code: p.display for code, p in self.purposes.items()}

    def listed_on(self, day: date) -> frozenset[str]:
        """Codes on the investigational list on ``day`` (empty once the policy is retired)."""
        return frozenset(c for c in self.listed if self.is_listed(c, day))

    def is_listed(self, code: str, day: date) -> bool:
        """Whether ``code`` is on the investigational list on ``day`` (never once the policy is retired)."""
        entry = self.listed.get(code)
        return entry is not None and day < self.retirement and entry.on_list(day)

    def canonical_system(self, system: str) -> str:
        return self.code_system_aliases.get(system.strip(), system.strip())
