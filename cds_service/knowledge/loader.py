"""Load the FHIR knowledge artifacts from ``fhir_profiles/`` into an indexed ``Knowledge``.

Runs once at start-up. Every resource is parsed with fhir.resources (R4B models read R4
JSON); any problem raises ``KnowledgeError`` naming the file and what is wrong, so a broken
artifact stops the service from starting instead of producing wrong cards. A service start may
pass a file that remembers the last set of artifacts found valid (by a digest of their text and
of the validating libraries' versions): the same set is then not validated again, which was a third
of a cold start (importing and building ~10 fhir.resources models: 0.33-0.44 s of 1.1-1.5 s here).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import date, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import fhir.resources
import pydantic
from pydantic import ValidationError

from cds_service import terminology
from cds_service.coverage_information import Covered, InfoNeeded
from cds_service.fhir_errors import first_problem
from cds_service.knowledge.lexicon import Phrases
from cds_service.knowledge.model import (
    CardTemplate,
    CatalogueTest,
    Coding,
    Knowledge,
    Lexicon,
    Link,
    ListedCode,
    Membership,
    Payer,
    Policy,
    ProductVariation,
    Purpose,
    Route,
    VerdictReason,
)

# An installed package carries the artifacts inside it; a source checkout has them at its top.
_INSTALLED = Path(__file__).resolve().parents[1] / "fhir_profiles"
DEFAULT_DIR = _INSTALLED if _INSTALLED.is_dir() else Path(__file__).resolve().parents[2] / "fhir_profiles"
# The canonical base the committed artifacts are written with; CDS_CANONICAL_BASE may replace it.
ARTIFACT_BASE_MARKER = "https://liquid-biopsy-cds.example.org/fhir"
# The digest of artifacts found valid (see read_artifacts): beside the artifacts, and in the service's
# instance folder.
VALIDATED_KNOWLEDGE = "knowledge-validated"


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
    return _parse(path, _read(path, canonical_base), validate=True)


def _read(path: Path, canonical_base: str | None) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KnowledgeError(path.name, f"cannot be read ({exc.strerror})") from exc
    if canonical_base and canonical_base != ARTIFACT_BASE_MARKER:
        text = text.replace(ARTIFACT_BASE_MARKER, canonical_base.rstrip("/"))
    return text


def _parse(path: Path, text: str, validate: bool) -> Artifact:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KnowledgeError(path.name, f"is not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("resourceType"), str):
        raise KnowledgeError(path.name, "is not a FHIR resource (no resourceType)")
    if validate:
        cls = _model_class(raw["resourceType"])
        if cls is None:
            raise KnowledgeError(path.name, f"unknown resourceType {raw['resourceType']!r}")
        try:
            cls.model_validate(raw)
        except ValidationError as exc:
            where, message = first_problem(exc)
            raise KnowledgeError(path.name, f"invalid {raw['resourceType']}: {where.lstrip('.')}: {message}") from exc
    return Artifact(path, raw)


def read_artifacts(directory: Path, canonical_base: str | None = None,
                   validated: Path | None = None) -> list[Artifact]:
    """Every artifact of ``directory``, validated with fhir.resources unless the same texts were found
    valid by the same library versions before: their digest is in ``directory``'s own
    VALIDATED_KNOWLEDGE (written by ``artifacts check --record``, shipped with the artifacts) or in
    ``validated`` (a file the service keeps; written after a validation that passed, and where it
    cannot be written every start validates)."""
    if not directory.is_dir():
        raise KnowledgeError(str(directory), "knowledge directory does not exist")
    paths = sorted(directory.glob("*.json"))
    if not paths:
        raise KnowledgeError(str(directory), "no FHIR artifacts (*.json) found")
    texts = [(p, _read(p, canonical_base)) for p in paths]
    key = _validation_key(texts)
    known = key in (_read_key(directory / VALIDATED_KNOWLEDGE), validated and _read_key(validated))
    artifacts = [_parse(p, text, validate=not known) for p, text in texts]
    if validated is not None and not known:
        _write_key(validated, key)
    return artifacts


def record_validation(directory: Path) -> Path:
    """Ship the digest of ``directory``'s artifacts (as written, no canonical base replaced) with them,
    once ``artifacts check`` found them all valid: a service's first start then skips validating them."""
    texts = [(p, _read(p, None)) for p in sorted(directory.glob("*.json"))]
    target = directory / VALIDATED_KNOWLEDGE
    target.write_text(_validation_key(texts) + "\n", encoding="ascii")
    return target


def _validation_key(texts: list[tuple[Path, str]]) -> str:
    h = hashlib.sha256(f"fhir.resources {fhir.resources.__version__}, pydantic {pydantic.VERSION}".encode())
    for path, text in texts:
        h.update(b"\0" + path.name.encode() + b"\0" + text.encode())
    return h.hexdigest()


def _read_key(file: Path) -> str | None:
    try:
        return file.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _write_key(file: Path, key: str) -> None:
    temporary = file.with_name(f"{file.name}.{os.getpid()}")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(key + "\n", encoding="ascii")
        os.replace(temporary, file)  # whole or not at all, even with two starts at once
    except OSError:  # e.g. a read-only instance folder: validated again next start
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)


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


def load_knowledge(directory: Path | None = None, canonical_base: str | None = None,
                   validated: Path | None = None) -> Knowledge:
    artifacts = read_artifacts(directory or DEFAULT_DIR, canonical_base, validated)
    return build_knowledge(artifacts, canonical_base or ARTIFACT_BASE_MARKER)


def _props(concept: dict[str, Any]) -> dict[str, list[Any]]:
    """A CodeSystem concept's property values by property code (every repetition)."""
    out: dict[str, list[Any]] = defaultdict(list)
    for prop in concept.get("property", []):
        out[prop["code"]].append(next(v for k, v in prop.items() if k.startswith("value")))
    return out


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

    def single(role: str, url_required: bool = True) -> dict[str, Any]:
        items = by_role.get(role, [])
        if len(items) != 1 or (url_required and not items[0].get("url")):
            raise KnowledgeError(plan.name, f"expected one relatedArtifact with role {role!r}"
                                 + (" and a url" if url_required else ""))
        return items[0]

    def dependency(resource_type: str) -> list[Artifact]:
        return [a for k, a in depends.items() if k.startswith(resource_type + ":")]

    policy_doc = single("policy-document", url_required=False)
    library = single("policy-library")
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
        if card_type["code"] not in terminology.CARD_TYPES:
            raise KnowledgeError(plan.name, f"action {aid!r}: {card_type['code']!r} is not a code of "
                                 f"{terminology.CARD_TYPE_SYSTEM}")
        priority = action.get("priority", "routine")
        if priority not in terminology.INDICATOR_BY_PRIORITY:
            raise KnowledgeError(plan.name, f"action {aid!r} has unknown priority {priority!r}")
        templates[aid] = CardTemplate(aid, action["title"], action["description"],
                                      Coding(card_type["system"], card_type["code"], card_type.get("display", "")),
                                      priority)
        for inp in action.get("input", []):
            for cf in inp.get("codeFilter", []):
                vs = index.resolve(cf["valueSet"], plan, "ValueSet")
                if aid == "investigational-code-list":
                    listed_vs = vs
                elif tests_vs is None:
                    tests_vs = vs
    if missing := set(CARD_TEMPLATES) - templates.keys():
        raise KnowledgeError(plan.name, f"missing actions {sorted(missing)}")
    if listed_vs is None or tests_vs is None:
        raise KnowledgeError(plan.name, "actions must name the code list (investigational-code-list) and the "
                             "liquid-biopsy test ValueSet in input.codeFilter.valueSet")

    # --- code systems as EHRs send them (NamingSystem), the code list with its history
    aliases = _code_system_aliases([a for a in artifacts if a.raw["resourceType"] == "NamingSystem"])
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
    if cpt_system not in aliases:
        raise KnowledgeError(listed_vs.name, f"code system {cpt_system} has no NamingSystem")

    judged_codes: set[str] = set(listed)
    for inc in tests_vs.raw.get("compose", {}).get("include", []):
        for vs_url in inc.get("valueSet", []):
            index.resolve(vs_url, tests_vs, "ValueSet")
        judged_codes.update(c["code"].strip().upper() for c in inc.get("concept", []))

    # --- the test catalogue (must agree with the tests ValueSet)
    catalogue_cs = _one([a for a in dependency("CodeSystem") if _is_catalogue(a)], plan, "test catalogue CodeSystem")
    catalogue, tests_by_code = _catalogue(catalogue_cs, aliases)
    for test in catalogue:
        for system, code in test.codes:
            if system == aliases[cpt_system] and test.is_liquid_biopsy and code not in judged_codes:
                raise KnowledgeError(tests_vs.name, f"{code} ({test.display}) is a liquid biopsy in "
                                     f"{catalogue_cs.name} but not in this ValueSet")
            if system == aliases[cpt_system] and not test.is_liquid_biopsy and code in judged_codes - set(listed):
                raise KnowledgeError(tests_vs.name, f"{code} is in this ValueSet but {catalogue_cs.name} says "
                                     f"{test.display} is not a ctDNA/CTC cancer test")

    # --- the routing ConceptMap names the policy and purpose code systems
    concept_map = _one(dependency("ConceptMap"), plan, "routing ConceptMap")
    policy_cs = index.resolve(concept_map.raw.get("targetUri", ""), concept_map, "CodeSystem")
    purpose_sources = [g["source"] for g in concept_map.raw.get("group", [])
                       if index.by_url.get(g.get("source", "")) is not None]
    if len(purpose_sources) != 1:
        raise KnowledgeError(concept_map.name, "exactly one group must map from the purpose CodeSystem")
    purpose_cs = index.resolve(purpose_sources[0], concept_map, "CodeSystem")
    service_cs = _one([a for a in dependency("CodeSystem") if a not in (policy_cs, purpose_cs, catalogue_cs)], plan,
                      "service CodeSystem (override and coverage reasons)")

    policies: dict[str, Policy] = {}
    for c in policy_cs.raw.get("concept", []):
        props = {k: v[0] for k, v in _props(c).items()}
        label = (c.get("designation") or [{}])[0].get("value", c["code"])
        policies[c["code"]] = Policy(c["code"], label, c.get("display", ""), props.get("url", ""),
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

    purposes = {}
    for c in purpose_cs.raw.get("concept", []):
        props = _props(c)
        purposes[c["code"]] = Purpose(c["code"], c.get("display", c["code"]),
                                      bool(props.get("reviewed-by-mp-2-267", [False])[0]),
                                      bool(props.get("selects-targeted-treatment", [False])[0]),
                                      str(props.get("analyte", [""])[0]),
                                      bool(props.get("excludes-the-test", [False])[0]))
    for test in catalogue:
        if test.use is not None and test.use not in purposes:
            raise KnowledgeError(catalogue_cs.name, f"{test.id}: use {test.use!r} is not in {purpose_cs.name}")
    routes_by_category, routes_by_purpose, icd_system = _routes(concept_map, purpose_cs, policy_cs, policies,
                                                                 {k: p.display for k, p in purposes.items()}, ext)
    icd_system = aliases.get(icd_system, icd_system)
    procedure_systems = frozenset(set(aliases.values()) - {icd_system})  # CPT and HCPCS, as NamingSystems say

    groups = {c["code"]: c.get("concept", []) for c in service_cs.raw.get("concept", [])}
    override_reasons = tuple(Coding(service_cs.url or "", c["code"], c.get("display", ""))
                             for c in groups.get("override-reason", []))
    reasons = _reasons(service_cs, groups.get("coverage-reason", []))
    if missing := set(REASONS) - reasons.keys():
        raise KnowledgeError(service_cs.name, f"coverage-reason {sorted(missing)} missing")

    # --- who the endpoint serves: payers (tagged Organizations) and product variations (tagged InsurancePlans)
    tag_system = service_cs.url or ""
    tagged = [a for a in artifacts
              if a.raw["resourceType"] == "Organization" and _tagged(a, tag_system, "served-payer")]
    tagged.sort(key=lambda a: "partOf" in a.raw)  # the parent company (part of no other) first
    payers = tuple(_payer(a) for a in tagged)
    if not payers:
        raise KnowledgeError("fhir_profiles", "no Organization is tagged served-payer: the endpoint would serve nobody")
    plan_ref = next(ext_values(fep, ext + "variation-plan"), None)
    variation_plan = next((a for a in artifacts if a.raw["resourceType"] == "InsurancePlan"
                           and isinstance(plan_ref, dict)
                           and plan_ref.get("reference") == f"InsurancePlan/{a.raw['id']}"), None)
    if variation_plan is None or not _tagged(variation_plan, tag_system, "product-variation"):
        raise KnowledgeError(plan.name, "the product-variation relatedArtifact needs a variation-plan reference to an "
                             "InsurancePlan tagged product-variation")
    manual = Link(fep.get("label", ""), fep["url"])
    variations = (_variation(variation_plan, manual),)

    keywords = {kind: tuple(ext_values(tests_vs.raw, ext + kind)) for kind in
                ("recognition-keyword", "ambiguous-keyword", "non-cancer-keyword", "cancer-context-keyword")}
    test_by_name = {name: t for t in catalogue for name in t.names}
    payer_by_name = {name: p for p in payers for name in p.names}
    variation_by_name = {name: v for v in variations for name in v.names}
    variation_by_program = {name: v for v in variations for name in v.programs}
    lexicon = Lexicon(
        test_names=Phrases.of(name for name, t in test_by_name.items() if t.product),
        test_kind_names=Phrases.of(name for name, t in test_by_name.items() if not t.product),
        test_by_name=test_by_name,
        recognition=Phrases.of(keywords["recognition-keyword"]), ambiguous=Phrases.of(keywords["ambiguous-keyword"]),
        non_cancer=Phrases.of(keywords["non-cancer-keyword"]),
        cancer_context=Phrases.of(keywords["cancer-context-keyword"]),
        payer_names=Phrases.of(payer_by_name), payer_by_name=payer_by_name,
        variation_names=Phrases.of(variation_by_name), variation_by_name=variation_by_name,
        variation_programs=Phrases.of(variation_by_program), variation_by_program=variation_by_program,
    )

    return Knowledge(
        policy_label=policy_label,
        policy_title=pd.get("title", ""),
        policy_version=pd.get("version", ""),
        publisher=pd.get("publisher", ""),
        policy_link=Link(policy_doc.get("display", policy_label), policy_doc.get("url", "")),
        policy_library=Link(library.get("label", ""), library["url"]),
        retirement=last_day + timedelta(days=1),
        code_system_cpt=aliases[cpt_system],
        code_system_aliases=aliases,
        procedure_systems=procedure_systems,
        listed=listed,
        catalogue=catalogue,
        tests_by_code=tests_by_code,
        judged_codes=frozenset(judged_codes),
        lexicon=lexicon,
        policies=policies,
        routes_by_category=routes_by_category,
        routes_by_purpose=routes_by_purpose,
        purpose_system=purpose_cs.url or "",
        purposes=purposes,
        icd10_system=icd_system,
        successor=Link(successor.get("label", ""), successor["url"]),
        payers=payers,
        variations=variations,
        templates=templates,
        override_reasons=override_reasons,
        reasons=reasons,
        artifact_digest=digest(artifacts),
        canonical_base=base,
    )


# Card templates and verdict reasons the service renders; the artifacts must define each.
CARD_TEMPLATES = (
    "investigational-code-list", "investigational-policy-statement", "policy-retired-delegated",
    "other-policy-governs", "use-not-addressed", "use-not-stated", "product-variation-manual", "no-active-coverage",
    "technical", "date-of-service-spans-change", "remove-order", "no-coverage-found",
    "coverage-not-established",
)
REASONS = (
    "investigational-code-list", "investigational-policy-statement", "policy-retired-delegated",
    "other-policy-governs", "use-not-addressed", "use-not-stated", "product-variation-manual", "no-active-coverage",
    "technical", "date-of-service-spans-change",
)


def with_deployment_payers(knowledge: Knowledge, names: tuple[str, ...] = (), identifiers: tuple[str, ...] = (),
                           variation_names: tuple[str, ...] = ()) -> Knowledge:
    """The knowledge with a deployment's extra names and identifiers (system|value) for the served
    payer (the parent company: the Organization no other is part of) and for the product variation."""
    if not (names or identifiers or variation_names):
        return knowledge
    parent = knowledge.payers[0]
    extra_ids = set()
    for item in identifiers:
        system, sep, value = item.partition("|")
        if not sep or not value.strip():
            raise ValueError(f"setting PAYER_IDENTIFIERS: {item!r} is not system|value")
        extra_ids.add((system.strip(), value.strip()))
    payer = replace(parent, names=tuple(dict.fromkeys([*parent.names, *names])),
                    identifiers=parent.identifiers | extra_ids)
    payers = (payer, *knowledge.payers[1:])
    variation = knowledge.variations[0]
    variations = (replace(variation, names=tuple(dict.fromkeys([*variation.names, *variation_names]))),
                  *knowledge.variations[1:])
    payer_by_name = {n: p for p in payers for n in p.names}
    variation_by_name = {n: v for v in variations for n in v.names}
    lexicon = replace(knowledge.lexicon, payer_names=Phrases.of(payer_by_name), payer_by_name=payer_by_name,
                      variation_names=Phrases.of(variation_by_name), variation_by_name=variation_by_name)
    return replace(knowledge, payers=payers, variations=variations, lexicon=lexicon)


def _code_system_aliases(naming_systems: list[Artifact]) -> dict[str, str]:
    """Every identifier a code system is sent under (URI, urn:oid:) -> its preferred URI."""
    aliases: dict[str, str] = {}
    for ns in naming_systems:
        ids = ns.raw.get("uniqueId", [])
        preferred = [u["value"] for u in ids if u.get("preferred") and u.get("type") == "uri"]
        if len(preferred) != 1:
            raise KnowledgeError(ns.name, "needs exactly one preferred uri uniqueId")
        for u in ids:
            value = f"urn:oid:{u['value']}" if u.get("type") == "oid" else u["value"]
            if aliases.get(value, preferred[0]) != preferred[0]:
                raise KnowledgeError(ns.name, f"{value} is also an identifier of {aliases[value]}")
            aliases[value] = preferred[0]
    return aliases


def _catalogue(cs: Artifact, aliases: dict[str, str]) -> tuple[tuple[CatalogueTest, ...],
                                                                dict[tuple[str, str], CatalogueTest]]:
    tests: list[CatalogueTest] = []
    by_code: dict[tuple[str, str], CatalogueTest] = {}
    for c in cs.raw.get("concept", []):
        props = _props(c)
        if not props.get("source"):
            raise KnowledgeError(cs.name, f"{c['code']}: every test needs a source")
        codes = tuple((aliases.get(b["system"], b["system"]), b["code"].strip().upper())
                      for b in props.get("billing-code", []))
        names = tuple(dict.fromkeys([c.get("display", c["code"]), *(d["value"] for d in c.get("designation", []))]))
        test = CatalogueTest(
            id=c["code"], display=c.get("display", c["code"]), names=names, codes=codes,
            analyte=props["analyte"][0], tumor_informed=(props.get("tumor-informed") or [None])[0],
            cancer=bool(props["cancer"][0]), use=(props.get("use") or [None])[0],
            non_cancer_use=(props.get("non-cancer-use") or [None])[0],
            categories=frozenset(str(v).upper() for v in props.get("cancer-category", [])),
            evidence=(props.get("evidence") or [""])[0], product=bool(props.get("laboratory")))
        for key in codes:
            if key in by_code:
                raise KnowledgeError(cs.name, f"{key[1]} belongs to both {by_code[key].id} and {test.id}")
            by_code[key] = test
        tests.append(test)
    return tuple(tests), by_code


def _reasons(cs: Artifact, concepts: list[dict[str, Any]]) -> dict[str, VerdictReason]:
    out = {}
    for c in concepts:
        props = _props(c)
        try:
            covered = Covered(props["covered"][0])
            info = tuple(InfoNeeded(i) for i in props.get("info-needed", []))
        except (KeyError, ValueError) as exc:
            raise KnowledgeError(cs.name, f"coverage-reason {c['code']}: covered/info-needed must be CRD "
                                 f"codes ({exc})") from exc
        crd = (props.get("crd-reason") or [None])[0]
        coding = (Coding(crd["system"], crd["code"], crd.get("display", "")) if crd
                  else Coding(cs.url or "", c["code"], c.get("display", "")))
        if not props.get("reason-text"):
            raise KnowledgeError(cs.name, f"coverage-reason {c['code']} needs a reason-text")
        out[c["code"]] = VerdictReason(c["code"], c.get("display", c["code"]), coding, covered, info,
                                       frozenset(props.get("expires-with", [])), props["reason-text"][0])
    return out


def _is_catalogue(a: Artifact) -> bool:
    """The catalogue is the CodeSystem whose concepts are tests (they have billing codes)."""
    return any(p.get("code") == "billing-code" for p in a.raw.get("property", []))


def _tagged(a: Artifact, system: str, code: str) -> bool:
    return any(t.get("system") == system and t.get("code") == code for t in (a.raw.get("meta") or {}).get("tag", []))


def _payer(a: Artifact) -> Payer:
    raw = a.raw
    if not raw.get("name"):
        raise KnowledgeError(a.name, "a served payer needs a name")
    return Payer(raw["id"], raw["name"], tuple(dict.fromkeys([raw["name"], *raw.get("alias", [])])),
                 frozenset((i["system"], i["value"]) for i in raw.get("identifier", []) if i.get("system")))


def _variation(a: Artifact, manual: Link) -> ProductVariation:
    raw = a.raw
    values = frozenset(i["value"] for p in raw.get("plan", []) for i in p.get("identifier", []))
    programs = tuple(t["text"] for t in raw.get("type", []) if isinstance(t.get("text"), str))
    return ProductVariation(raw["id"], raw.get("name", raw["id"]),
                            tuple(dict.fromkeys([raw.get("name", raw["id"]), *raw.get("alias", [])])), values, manual,
                            programs)


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
