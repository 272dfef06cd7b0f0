"""The policy knowledge the decision core consumes: immutable, indexed, built once at start-up.

Every value here comes from the FHIR artifacts in ``fhir_profiles/`` (see ``loader.py``);
nothing in this module knows a code, a date or a policy number.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta


@dataclass(frozen=True, slots=True)
class Coding:
    system: str
    code: str
    display: str = ""

    def as_fhir(self) -> dict[str, str]:
        out = {"system": self.system, "code": self.code}
        if self.display:
            out["display"] = self.display
        return out


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


def page_id(label: str) -> str:
    """The id of a policy's page on this service: 'MP 1.234' -> 'mp-1-234'."""
    return label.lower().replace(" ", "-").replace(".", "-")


@dataclass(frozen=True, slots=True)
class Link:
    label: str
    url: str


@dataclass(frozen=True, slots=True)
class Policy:
    """A policy the main policy cross-references (from the medical-policies CodeSystem)."""

    number: str
    label: str
    title: str
    url: str
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
class CardTemplate:
    action_id: str
    summary: str
    detail: str
    card_type: Coding
    priority: str


@dataclass(frozen=True, slots=True)
class Knowledge:
    policy_label: str
    policy_title: str
    policy_version: str
    publisher: str
    policy_link: Link
    retirement: date  # first day the policy no longer applies
    code_system_cpt: str
    code_systems_accepted: frozenset[str]
    listed: dict[str, ListedCode]
    other_liquid_biopsy_codes: frozenset[str]
    recognition_keywords: tuple[str, ...]
    policies: dict[str, Policy]
    routes_by_category: dict[str, tuple[Route, ...]]
    routes_by_purpose: dict[str, tuple[Route, ...]]
    purpose_system: str
    purpose_display: dict[str, str]
    icd10_system: str
    fep_manual: Link
    successor: Link
    plan_match_keywords: tuple[str, ...]
    templates: dict[str, CardTemplate]
    override_reasons: tuple[Coding, ...]
    coverage_reasons: dict[str, Coding]
    artifact_digest: str
    canonical_base: str

    @property
    def last_day_in_force(self) -> date:
        return self.retirement - timedelta(days=1)

    def listed_on(self, day: date) -> frozenset[str]:
        """Codes on the investigational list on ``day`` (empty once the policy is retired)."""
        if day >= self.retirement:
            return frozenset()
        return frozenset(c for c in self.listed if self.is_listed(c, day))

    def is_listed(self, code: str, day: date) -> bool:
        """Whether ``code`` is on the investigational list on ``day`` (never once the policy is retired)."""
        entry = self.listed.get(code)
        return entry is not None and day < self.retirement and entry.on_list(day)

    def is_liquid_biopsy_code(self, code: str) -> bool:
        return code in self.listed or code in self.other_liquid_biopsy_codes
