"""Load the FHIR knowledge artifacts from ``fhir_profiles/`` into an indexed ``Knowledge``.

Runs once at start-up. Every resource is parsed with fhir.resources (R4B models read R4
JSON); any problem raises ``KnowledgeError`` naming the file and what is wrong, so a broken
artifact stops the service from starting instead of producing wrong cards.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cds_service import terminology
from cds_service.fhir_errors import first_problem
from cds_service.knowledge.model import (
    CardTemplate,
    Coding,
    Knowledge,
    Link,
    ListedCode,
    Membership,
    Policy,
    Route,
)

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "fhir_profiles"
# The canonical base the committed artifacts are written with; CDS_CANONICAL_BASE may replace it.
ARTIFACT_BASE_MARKER = "https://liquid-biopsy-cds.example.org/fhir"


class KnowledgeError(Exception):
    """An artifact is missing, unreadable, invalid or inconsistent."""

    def __init__(self, file: str, problem: str) -> None:
        super().__init__(f"{file}: {problem}")
        self.file = file
        self.problem = problem


@dataclass(frozen=True)
class Artifact:
    path: Path
    raw: dict[str, Any]
    model: Any  # the fhir.resources model

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def url(self) -> str | None:
        return self.raw.get("url")


def _model_class(resource_type: str) -> Any:
    try:
        module = importlib.import_module(f"fhir.resources.R4B.{resource_type.lower()}")
        return getattr(module, resource_type)
    except (ImportError, AttributeError):
        return None


def parse_artifact(path: Path, canonical_base: str | None = None) -> Artifact:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KnowledgeError(path.name, f"cannot be read ({exc.strerror})") from exc
    if canonical_base and canonical_base != ARTIFACT_BASE_MARKER:
        text = text.replace(ARTIFACT_BASE_MARKER, canonical_base.rstrip("/"))
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KnowledgeError(path.name, f"is not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("resourceType"), str):
        raise KnowledgeError(path.name, "is not a FHIR resource (no resourceType)")
    cls = _model_class(raw["resourceType"])
    if cls is None:
        raise KnowledgeError(path.name, f"unknown resourceType {raw['resourceType']!r}")
    try:
        model = cls.model_validate(raw)
    except ValidationError as exc:
        where, message = first_problem(exc)
        raise KnowledgeError(path.name, f"invalid {raw['resourceType']}: {where.lstrip('.')}: {message}") from exc
    return Artifact(path, raw, model)


def read_artifacts(directory: Path, canonical_base: str | None = None) -> list[Artifact]:
    if not directory.is_dir():
        raise KnowledgeError(str(directory), "knowledge directory does not exist")
    paths = sorted(directory.glob("*.json"))
    if not paths:
        raise KnowledgeError(str(directory), "no FHIR artifacts (*.json) found")
    return [parse_artifact(p, canonical_base) for p in paths]


def digest(artifacts: Iterable[Artifact]) -> str:
    h = hashlib.sha256()
    for a in sorted(artifacts, key=lambda a: a.name):
        h.update(a.name.encode())
        h.update(json.dumps(a.raw, sort_keys=True).encode())
    return h.hexdigest()[:16]


def ext_values(element: dict[str, Any], url: str) -> Iterator[Any]:
    """Values of the simple extensions with ``url`` on a raw FHIR element."""
    for ext in element.get("extension", ()):
        if ext.get("url") == url:
            yield next((v for k, v in ext.items() if k.startswith("value")), ext)


def _date(value: str | None, file: str, what: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise KnowledgeError(file, f"{what}: {value!r} is not a full date (YYYY-MM-DD)") from exc


class _Index:
    """Artifacts by canonical URL, with helpers that fail with the file name."""

    def __init__(self, artifacts: list[Artifact]) -> None:
        self.by_url: dict[str, Artifact] = {}
        for a in artifacts:
            if a.url:
                if a.url in self.by_url:
                    raise KnowledgeError(a.name, f"canonical URL {a.url} also used by {self.by_url[a.url].name}")
                self.by_url[a.url] = a
        plans = [a for a in artifacts if a.raw["resourceType"] == "PlanDefinition"]
        if len(plans) != 1:
            raise KnowledgeError("fhir_profiles", f"expected exactly one PlanDefinition, found {len(plans)}")
        self.plan = plans[0]

    def resolve(self, canonical: str, referrer: Artifact, expected_type: str) -> Artifact:
        target = self.by_url.get(canonical.split("|", 1)[0])
        if target is None:
            raise KnowledgeError(referrer.name, f"reference {canonical} does not resolve to any artifact")
        if target.raw["resourceType"] != expected_type:
            raise KnowledgeError(referrer.name, f"reference {canonical} is a {target.raw['resourceType']}, "
                                 f"expected {expected_type}")
        return target


def load_knowledge(directory: Path | None = None, canonical_base: str | None = None) -> Knowledge:
    artifacts = read_artifacts(directory or DEFAULT_DIR, canonical_base)
    return build_knowledge(artifacts, canonical_base or ARTIFACT_BASE_MARKER)


def build_knowledge(artifacts: list[Artifact], canonical_base: str) -> Knowledge:
    index = _Index(artifacts)
    plan = index.plan
    base = canonical_base.rstrip("/")
    ext = f"{base}/StructureDefinition/"
    pd = plan.raw

    def role_of(ra: dict[str, Any]) -> str | None:
        return next(ext_values(ra, ext + "related-artifact-role"), None)

    related = pd.get("relatedArtifact", [])
    by_role: dict[str, list[dict[str, Any]]] = defaultdict(list)
    depends: dict[str, Artifact] = {}
    for ra in related:
        if ra.get("type") == "depends-on":
            target = index.by_url.get(ra.get("resource", "").split("|", 1)[0])
            if target is None:
                raise KnowledgeError(plan.name, f"relatedArtifact {ra.get('resource')} does not resolve")
            depends[target.raw["resourceType"] + ":" + target.raw["id"]] = target
        elif (role := role_of(ra)) is not None:
            by_role[role].append(ra)

    def single(role: str) -> dict[str, Any]:
        items = by_role.get(role, [])
        if len(items) != 1 or not items[0].get("url"):
            raise KnowledgeError(plan.name, f"expected one relatedArtifact with role {role!r} and a url")
        return items[0]

    def dependency(resource_type: str) -> list[Artifact]:
        return [a for k, a in depends.items() if k.startswith(resource_type + ":")]

    policy_doc = single("policy-document")
    fep = single("product-variation")
    successor = single("successor")
    policy_label = policy_doc.get("label") or ""
    if not policy_label:
        raise KnowledgeError(plan.name, "the policy-document relatedArtifact needs a label (the policy number)")

    end = (pd.get("effectivePeriod") or {}).get("end")
    last_day = _date(end[:10] if end else None, plan.name, "effectivePeriod.end")
    if last_day is None:
        raise KnowledgeError(plan.name, "effectivePeriod.end (last day in force) is required")

    # --- card templates and the code lists they are triggered by
    templates: dict[str, CardTemplate] = {}
    listed_vs: Artifact | None = None
    tests_vs: Artifact | None = None
    for action in pd.get("action", []):
        aid = action.get("id")
        if not aid or not action.get("title") or not action.get("description"):
            raise KnowledgeError(plan.name, f"action {aid!r} needs an id, a title and a description")
        codings = [c for cc in action.get("code", []) for c in cc.get("coding", [])]
        card_type = next((c for c in codings if c.get("system") == terminology.CARD_TYPE_SYSTEM), None)
        if card_type is None:
            raise KnowledgeError(plan.name, f"action {aid!r} needs a code from {terminology.CARD_TYPE_SYSTEM}")
        priority = action.get("priority", "routine")
        if priority not in terminology.INDICATOR_BY_PRIORITY:
            raise KnowledgeError(plan.name, f"action {aid!r} has unknown priority {priority!r}")
        templates[aid] = CardTemplate(aid, action["title"], action["description"],
                                      Coding(card_type["system"], card_type["code"], card_type.get("display", "")),
                                      priority)
        for inp in action.get("input", []):
            for cf in inp.get("codeFilter", []):
                vs = index.resolve(cf["valueSet"], plan, "ValueSet")
                if aid == "investigational":
                    listed_vs = vs
                elif tests_vs is None:
                    tests_vs = vs
    required = {"investigational", "retired", "fep", "other-policy", "no-active-coverage"}
    if missing := required - templates.keys():
        raise KnowledgeError(plan.name, f"missing actions {sorted(missing)}")
    if listed_vs is None or tests_vs is None:
        raise KnowledgeError(plan.name, "actions must name the code list (investigational) and the "
                             "liquid-biopsy test ValueSet in input.codeFilter.valueSet")

    # --- the code list with its history
    listed: dict[str, ListedCode] = {}
    cpt_system = ""
    for inc in listed_vs.raw.get("compose", {}).get("include", []):
        cpt_system = inc.get("system", cpt_system)
        for concept in inc.get("concept", []):
            code = concept["code"].strip().upper()
            memberships = []
            for m in (e for e in concept.get("extension", []) if e.get("url") == ext + "code-list-membership"):
                parts = {p["url"]: next(v for k, v in p.items() if k.startswith("value"))
                         for p in m.get("extension", [])}
                memberships.append(Membership(
                    _date(parts.get("joined"), listed_vs.name, f"{code} joined"),
                    _date(parts.get("removed"), listed_vs.name, f"{code} removed"),
                    parts.get("source", "")))
            if not memberships:
                raise KnowledgeError(listed_vs.name, f"code {code} has no code-list-membership extension")
            if code in listed:
                raise KnowledgeError(listed_vs.name, f"code {code} is listed twice; repeat the membership "
                                     "extension instead")
            listed[code] = ListedCode(code, concept.get("display", ""), tuple(memberships),
                                      tuple(ext_values(concept, ext + "related-policy")))
    for problem in membership_problems(listed):
        raise KnowledgeError(listed_vs.name, problem)

    other_codes: set[str] = set()
    for inc in tests_vs.raw.get("compose", {}).get("include", []):
        for vs_url in inc.get("valueSet", []):
            index.resolve(vs_url, tests_vs, "ValueSet")
        other_codes.update(c["code"].strip().upper() for c in inc.get("concept", []))
    keywords = tuple(k.lower() for k in ext_values(tests_vs.raw, ext + "recognition-keyword"))

    # --- the routing ConceptMap names the policy and purpose code systems
    concept_map = _one(dependency("ConceptMap"), plan, "routing ConceptMap")
    policy_cs = index.resolve(concept_map.raw.get("targetUri", ""), concept_map, "CodeSystem")
    purpose_sources = [g["source"] for g in concept_map.raw.get("group", [])
                       if index.by_url.get(g.get("source", "")) is not None]
    if len(purpose_sources) != 1:
        raise KnowledgeError(concept_map.name, "exactly one group must map from the purpose CodeSystem")
    purpose_cs = index.resolve(purpose_sources[0], concept_map, "CodeSystem")
    service_cs = _one([a for a in dependency("CodeSystem") if a not in (policy_cs, purpose_cs)], plan,
                      "service CodeSystem (override and coverage reasons)")

    policies: dict[str, Policy] = {}
    for c in policy_cs.raw.get("concept", []):
        props = {p["code"]: next(v for k, v in p.items() if k.startswith("value")) for p in c.get("property", [])}
        label = (c.get("designation") or [{}])[0].get("value", c["code"])
        if not props.get("url"):
            raise KnowledgeError(policy_cs.name, f"policy {c['code']} has no url property")
        policies[c["code"]] = Policy(c["code"], label, c.get("display", ""), props["url"],
                                     props.get("relationship", ""))
    for ra in by_role.get("cross-reference", []):
        match = next((p for p in policies.values() if p.label == ra.get("label")), None)
        if match is None:
            raise KnowledgeError(plan.name, f"cross-reference {ra.get('label')} is not in {policy_cs.name}")
        if ra.get("display") != f"{match.label} {match.title}":
            raise KnowledgeError(plan.name, f"cross-reference {match.label} title differs from {policy_cs.name}")
    for code in listed.values():
        for p in code.related_policies:
            if p not in policies:
                raise KnowledgeError(listed_vs.name, f"{code.code} names related policy {p}, not in {policy_cs.name}")

    purpose_display = {c["code"]: c.get("display", c["code"]) for c in purpose_cs.raw.get("concept", [])}
    routes_by_category, routes_by_purpose, icd_system = _routes(concept_map, purpose_cs, policy_cs, policies,
                                                                 purpose_display, ext)

    groups = {c["code"]: c.get("concept", []) for c in service_cs.raw.get("concept", [])}
    override_reasons = tuple(Coding(service_cs.url or "", c["code"], c.get("display", ""))
                             for c in groups.get("override-reason", []))
    coverage_reasons = {c["code"]: Coding(service_cs.url or "", c["code"], c.get("display", ""))
                        for c in groups.get("coverage-reason", [])}
    for needed in ("investigational-policy", "policy-retired-delegated"):
        if needed not in coverage_reasons:
            raise KnowledgeError(service_cs.name, f"coverage-reason {needed!r} is missing")

    return Knowledge(
        policy_label=policy_label,
        policy_title=pd.get("title", ""),
        policy_version=pd.get("version", ""),
        publisher=pd.get("publisher", ""),
        policy_link=Link(policy_doc.get("display", policy_label), policy_doc["url"]),
        retirement=last_day + timedelta(days=1),
        code_system_cpt=cpt_system,
        code_systems_accepted=terminology.PROCEDURE_CODE_SYSTEMS | {cpt_system},
        listed=listed,
        other_liquid_biopsy_codes=frozenset(other_codes),
        recognition_keywords=keywords,
        policies=policies,
        routes_by_category=routes_by_category,
        routes_by_purpose=routes_by_purpose,
        purpose_system=purpose_cs.url or "",
        purpose_display=purpose_display,
        icd10_system=icd_system,
        fep_manual=Link(fep.get("label", ""), fep["url"]),
        successor=Link(successor.get("label", ""), successor["url"]),
        plan_match_keywords=tuple(ext_values(pd, ext + "plan-match-keyword")),
        templates=templates,
        override_reasons=override_reasons,
        coverage_reasons=coverage_reasons,
        artifact_digest=digest(artifacts),
        canonical_base=base,
    )


def membership_problems(listed: dict[str, ListedCode]) -> Iterator[str]:
    """A code may not be both on and off the list on one date: its stays must be ordered and disjoint."""
    for entry in listed.values():
        stays = sorted(entry.memberships, key=lambda m: m.joined or date.min)
        for m in stays:
            if m.joined and m.removed and m.removed <= m.joined:
                yield f"code {entry.code}: removed {m.removed} is not after joined {m.joined}"
        for a, b in pairwise(stays):
            if a.removed is None or (b.joined is not None and b.joined < a.removed) or b.joined is None:
                yield f"code {entry.code}: membership periods overlap ({a.source!r} and {b.source!r})"


def _one(found: list[Artifact], plan: Artifact, what: str) -> Artifact:
    if len(found) != 1:
        raise KnowledgeError(plan.name, f"expected one depends-on {what}, found {len(found)}")
    return found[0]


def _routes(cm: Artifact, purpose_cs: Artifact, policy_cs: Artifact, policies: dict[str, Policy],
            purpose_display: dict[str, str], ext: str,
            ) -> tuple[dict[str, tuple[Route, ...]], dict[str, tuple[Route, ...]], str]:
    by_category: dict[str, list[Route]] = defaultdict(list)
    by_purpose: dict[str, list[Route]] = defaultdict(list)
    icd_system = ""
    for group in cm.raw.get("group", []):
        if group.get("target") != policy_cs.url:
            raise KnowledgeError(cm.name, f"group target {group.get('target')} is not {policy_cs.url}")
        is_purpose = group.get("source") == purpose_cs.url
        if not is_purpose:
            icd_system = group.get("source", "")
        for element in group.get("element", []):
            source = element["code"].strip()
            if is_purpose and source not in purpose_display:
                raise KnowledgeError(cm.name, f"source purpose {source!r} is not in {purpose_cs.name}")
            use = purpose_display.get(source, element.get("display", source)) if is_purpose \
                else element.get("display", source)
            for t in element.get("target", []):
                basis = next(ext_values(t, ext + "mapping-basis"), None)
                if basis not in ("policy-text", "inference"):
                    raise KnowledgeError(cm.name, f"{source}: target needs a mapping-basis of policy-text or inference")
                policy = t.get("code") if t.get("equivalence") != "unmatched" else None
                if policy is not None and policy not in policies:
                    raise KnowledgeError(cm.name, f"{source}: target policy {policy} is not in {policy_cs.name}")
                requires = frozenset(d["value"].strip().upper() for d in t.get("dependsOn", []))
                route = Route(source.upper() if not is_purpose else source, use, policy, basis,
                              t.get("comment", ""), requires)
                (by_purpose if is_purpose else by_category)[route.source].append(route)
    return ({k: tuple(v) for k, v in by_category.items()}, {k: tuple(v) for k, v in by_purpose.items()},
            icd_system)
