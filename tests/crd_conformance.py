"""Conformance checks every hook response in the tests goes through: the oracle, kept in one place.

- CDS Hooks 2.0 response rules and the checks of the Inferno Da Vinci CRD server test kit
  (inferno-framework/davinci-crd-test-kit, lib/davinci_crd_test_kit: cards_validation.rb,
  cards_identification.rb, suggestion_actions_validation.rb, server_tests/*), ported;
- every coverage-information against CRD 2.2.1's own definition (tests/crd/coverage-information-2.2.1.json,
  extracted from HL7/davinci-crd at tag 2.2.1): element cardinalities, value types, required
  bindings, and the IG's FHIRPath invariants evaluated with fhirpathpy;
- the updated order validated with fhir.resources (FHIR R4), and changed in nothing but its
  coverage-information extensions (CRD resp-37).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import orjson
from fhir.resources.R4B.servicerequest import ServiceRequest
from fhirpathpy import compile as compile_fhirpath
from fhirpathpy.models import models

IG = json.loads((Path(__file__).parent / "crd" / "coverage-information-2.2.1.json").read_text())
CRD_EXT = IG["url"]
CARD_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/cdshooks-card-type"
# THO cdshooks-card-type 1.0.0: the 15 concepts of CRD's cardType ValueSet.
CARD_TYPES = {"coverage-info", "unsolicited-determ", "claim", "insurance", "limits", "network", "appropriate-use",
              "cost", "therapy-alternatives-opt", "therapy-alternatives-req", "clinical-reminder",
              "duplicate-therapy", "contraindication", "guideline", "off-guideline"}
PRIMARY_HOOKS = {"order-sign", "order-dispatch", "appointment-book"}  # Inferno: systemActions must be present
VALUE_TYPES = {"code": "valueCode", "Coding": "valueCoding", "CodeableConcept": "valueCodeableConcept",
               "date": "valueDate", "string": "valueString", "canonical": "valueCanonical", "boolean": "valueBoolean",
               "url": "valueUrl", "SimpleQuantity": "valueQuantity", "Period": "valuePeriod",
               "ContactDetail": "valueContactDetail"}


def _value_keys(types: list[str]) -> set[str]:
    return {"valueReference" if t.startswith("Reference(") else VALUE_TYPES[t] for t in types}


def _codes(value_set: str) -> set[tuple[str, str]]:
    return {(s, c) for s, c in IG["valueSets"][value_set]["codes"]}


def _member_of(inputs: list[Any], url: str) -> list[bool]:
    """FHIRPath memberOf() for the IG's own value sets (fhirpathpy has no terminology service)."""
    members = next({(s, c) for s, c in vs["codes"]} for vs in IG["valueSets"].values() if vs["url"] == url)
    out = []
    for concept in inputs:
        codings = concept.get("coding", []) if isinstance(concept, dict) else []
        out.append(any((c.get("system"), c.get("code")) in members for c in codings))
    return out


FHIRPATH_OPTIONS = {"userInvocationTable": {"memberOf": {"fn": _member_of, "arity": {1: ["String"]}}}}
# Each invariant, evaluated on the extension in its context (an order carrying it), compiled once.
INVARIANTS = [(inv, compile_fhirpath(f"ServiceRequest.extension('{CRD_EXT}').all({inv['expression']})",
                                     model=models["r4"], options=FHIRPATH_OPTIONS)) for inv in IG["invariants"]]


# ---------------------------------------------------------------- coverage-information


def coverage_information_problems(ext: dict[str, Any], where: str = "coverage-information") -> list[str]:
    problems: list[str] = []
    subs = ext.get("extension")
    if ext.get("url") != CRD_EXT or not isinstance(subs, list):
        return [f"{where}: not a coverage-information extension"]
    by_url: dict[str, list[dict[str, Any]]] = {}
    for s in subs:
        by_url.setdefault(s.get("url"), []).append(s)
    for url in by_url:
        if url not in IG["elements"]:
            problems.append(f"{where}: unknown sub-extension {url!r}")
    for name, spec in IG["elements"].items():
        found = by_url.get(name, [])
        if len(found) < spec["min"]:
            problems.append(f"{where}: {name} is required ({spec['min']}..{spec['max']})")
        if spec["max"] != "*" and len(found) > int(spec["max"]):
            problems.append(f"{where}: {name} repeats ({spec['min']}..{spec['max']})")
        for s in found:
            if name == "detail":
                problems += _detail_problems(s, f"{where}.detail")
                continue
            keys = {k for k in s if k.startswith("value")}
            if len(keys) != 1 or not keys <= _value_keys(spec["types"]):
                problems.append(f"{where}: {name} must carry one of {sorted(_value_keys(spec['types']))}, has {keys}")
                continue
            if spec["binding"]:
                system_codes = _codes(spec["binding"])
                if not any(s["valueCode"] == c for _, c in system_codes):
                    problems.append(f"{where}: {name} {s['valueCode']!r} is not in {spec['binding']}")
    reference = (by_url.get("coverage", [{}])[0].get("valueReference") or {}).get("reference", "")
    if not str(reference).startswith("Coverage/"):
        problems.append(f"{where}: coverage must reference a Coverage, got {reference!r}")
    for key, description in _failed_invariants(orjson.dumps(ext, option=orjson.OPT_SORT_KEYS)):
        problems.append(f"{where}: invariant {key} fails: {description}")
    return problems


@functools.lru_cache(maxsize=4096)
def _failed_invariants(ext_json: bytes) -> tuple[tuple[str, str], ...]:
    """The invariants an extension (as canonical JSON) fails. Remembered: fhirpathpy takes ~7 ms an
    extension, and the fuzz tests check thousands of answers whose verdicts mostly repeat."""
    resource = {"resourceType": "ServiceRequest", "extension": [orjson.loads(ext_json)]}
    return tuple((inv["key"], inv["description"]) for inv, check in INVARIANTS if check(resource, None) != [True])


def _detail_problems(detail: dict[str, Any], where: str) -> list[str]:
    problems = []
    subs = {s.get("url"): s for s in detail.get("extension", [])}
    for name, spec in IG["detail"].items():
        if spec["min"] and name not in subs:
            problems.append(f"{where}: {name} is required")
        if name in subs:
            keys = {k for k in subs[name] if k.startswith("value")}
            if len(keys) != 1 or not keys <= _value_keys(spec["types"]):
                problems.append(f"{where}: {name} has value {keys}, allowed {sorted(_value_keys(spec['types']))}")
            elif spec["binding"] and not any(subs[name]["valueCode"] == c for _, c in _codes(spec["binding"])):
                problems.append(f"{where}: {name} {subs[name]['valueCode']!r} is not in {spec['binding']}")
    if "code" in subs:
        codings = subs["code"].get("valueCodeableConcept", {}).get("coding", [])
        if not codings or not all(c.get("system") and c.get("code") for c in codings):
            problems.append(f"{where}: code must be coded")
    if "value" in subs and "valueUrl" in subs["value"] and not _absolute(subs["value"]["valueUrl"]):
        problems.append(f"{where}: value url must be absolute")
    return problems


# ---------------------------------------------------------------- response


def _no_null(node: Any, path: str, problems: list[str]) -> None:
    if node is None or node == "" or node == {}:
        problems.append(f"{path} is null or empty")
        return
    if isinstance(node, dict):
        for k, v in node.items():
            _no_null(v, f"{path}.{k}", problems)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _no_null(v, f"{path}[{i}]", problems)


def _absolute(url: Any) -> bool:
    parsed = urlparse(url) if isinstance(url, str) else None
    return bool(parsed and parsed.scheme in ("http", "https") and parsed.netloc)


def card_kind(card: dict[str, Any]) -> str | None:
    """The CRD response type Inferno identifies a card as (cards_identification.rb), in its order."""
    suggestions, links = card.get("suggestions"), card.get("links")
    if suggestions and all(a.get("type") == "create" for s in suggestions for a in s.get("actions") or []):
        return "additional-orders"
    if links is not None and all(link.get("type") == "absolute" for link in links):
        return "external-reference"
    if not links and not suggestions:
        return "instructions"
    if links is not None and all(link.get("type") == "smart" for link in links):
        return "launch-smart-app"
    if suggestions and any(any(a.get("type") == "update" for a in s.get("actions") or [])
                           or ({"delete", "create"} <= {a.get("type") for a in s.get("actions") or []})
                           for s in suggestions):
        return "propose-alternate-request"
    return None


def response_problems(body: Any, request: dict[str, Any] | None = None) -> list[str]:
    """Every rule a hook response must keep. ``request``: the hook request it answers (needed for the
    checks that compare with the orders sent)."""
    problems: list[str] = []
    if not isinstance(body, dict) or not isinstance(body.get("cards"), list):
        return ["response must be an object with a 'cards' list"]
    hook = (request or {}).get("hook")
    for key, value in body.items():
        if key != "cards" and not (key == "systemActions" and value == []):
            _no_null(value, key, problems)
    if hook in PRIMARY_HOOKS and "systemActions" not in body:
        problems.append(f"systemActions must be present for the {hook} hook (Inferno)")
    for i, card in enumerate(body["cards"]):
        problems += _card_problems(card, f"cards[{i}]", request)
    drafts = _draft_refs(request) if request else None
    sent = _sent_orders(request) if request else {}
    updated: set[str] = set()
    for i, action in enumerate(body.get("systemActions", [])):
        problems += _action_problems(action, f"systemActions[{i}]", drafts, sent)
        resource = action.get("resource") if isinstance(action, dict) else None
        if isinstance(resource, dict) and isinstance(resource.get("id"), str):
            ref = f"{resource.get('resourceType')}/{resource['id']}"
            if ref in updated:
                problems.append(f"systemActions[{i}]: a second action for {ref} (one update per order)")
            updated.add(ref)
    if body.get("systemActions") and body.get("extension", {}).get("systemActions") != body["systemActions"]:
        problems.append("extension.systemActions must echo systemActions for the public sandbox")
    return problems


def _card_problems(card: dict[str, Any], where: str, request: dict[str, Any] | None) -> list[str]:
    problems: list[str] = []
    _no_null(card, where, problems)
    for field, field_type in (("summary", str), ("indicator", str), ("source", dict), ("uuid", str)):
        if not isinstance(card.get(field), field_type):
            problems.append(f"{where}.{field} is required ({field_type.__name__})")
    summary = card.get("summary")
    if isinstance(summary, str) and len(summary) >= 140:
        problems.append(f"{where}.summary must be under 140 characters")
    if card.get("indicator") not in ("info", "warning", "critical"):
        problems.append(f"{where}.indicator must be info, warning or critical")
    source = card.get("source") or {}
    if not isinstance(source.get("label"), str) or not source.get("label"):
        problems.append(f"{where}.source.label is required")
    topic = source.get("topic")
    if not (isinstance(topic, dict) and isinstance(topic.get("code"), str) and isinstance(topic.get("system"), str)):
        problems.append(f"{where}.source.topic is required: a Coding with system and code (CRD resp-5)")
    elif topic["system"] != CARD_TYPE_SYSTEM or topic["code"] not in CARD_TYPES:
        problems.append(f"{where}.source.topic {topic.get('code')!r} is not a code of {CARD_TYPE_SYSTEM}")
    for j, reason in enumerate(card.get("overrideReasons", [])):
        if not all(isinstance(reason.get(k), str) for k in ("code", "system", "display")):
            problems.append(f"{where}.overrideReasons[{j}] needs code, system and display (Inferno)")
    for j, link in enumerate(card.get("links", [])):
        if not all(isinstance(link.get(k), str) for k in ("label", "type", "url")):
            problems.append(f"{where}.links[{j}] needs a label, a type and a url")
        if link.get("type") not in ("absolute", "smart"):
            problems.append(f"{where}.links[{j}].type must be absolute or smart")
        if link.get("type") == "absolute" and (not _absolute(link.get("url")) or link.get("appContext")):
            problems.append(f"{where}.links[{j}]: an absolute link needs an absolute URL and no appContext")
    suggestions = card.get("suggestions", [])
    if suggestions and card.get("selectionBehavior") not in ("at-most-one", "any"):
        problems.append(f"{where}.selectionBehavior is required with suggestions")
    drafts = _draft_refs(request) if request else None
    for j, s in enumerate(suggestions):
        if not isinstance(s.get("label"), str) or not isinstance(s.get("uuid"), str):
            problems.append(f"{where}.suggestions[{j}] needs a label and a uuid (CRD resp-3)")
        actions = s.get("actions")
        if not isinstance(actions, list) or not actions:
            problems.append(f"{where}.suggestions[{j}].actions must be a non-empty array")
            continue
        for k, a in enumerate(actions):
            problems += _action_fields(a, f"{where}.suggestions[{j}].actions[{k}]", drafts)
    kind = card_kind(card)
    if kind == "external-reference":
        if suggestions:
            problems.append(f"{where}: an External Reference card carries no suggestions (CRD resp-22)")
        if not card.get("links"):
            problems.append(f"{where}: an External Reference card has at least one link (CRD resp-18)")
    if kind == "instructions" and not card.get("detail"):
        problems.append(f"{where}: an Instructions card needs a detail (CRD resp-24)")
    return problems


def _action_fields(action: dict[str, Any], where: str, drafts: set[str] | None) -> list[str]:
    problems = []
    if action.get("type") not in ("create", "update", "delete"):
        problems.append(f"{where}.type must be create, update or delete")
    if not isinstance(action.get("description"), str) or not action["description"]:
        problems.append(f"{where}.description is required")
    if action.get("type") in ("create", "update") and not isinstance(action.get("resource"), dict):
        problems.append(f"{where}.resource is required for {action.get('type')}")
    if action.get("type") == "delete":
        rid = action.get("resourceId")
        if not isinstance(rid, str) or "/" not in rid:
            problems.append(f"{where}.resourceId must be a string reference Type/id (CDS Hooks)")
        elif drafts is not None and rid not in drafts:
            problems.append(f"{where}.resourceId {rid} is not an order of context.draftOrders")
    return problems


def _action_problems(action: dict[str, Any], where: str, drafts: set[str] | None,
                     sent: dict[str, list[dict[str, Any]]]) -> list[str]:
    problems = _action_fields(action, where, drafts)
    resource = action.get("resource") or {}
    ours = [e for e in resource.get("extension", []) if isinstance(e, dict) and e.get("url") == CRD_EXT]
    if not ours:
        return problems
    if action.get("type") != "update":
        problems.append(f"{where}: a coverage-information action is an update (Inferno)")
    ref = f"{resource.get('resourceType')}/{resource.get('id')}"
    if sent and ref not in sent:
        problems.append(f"{where}: {ref} is not an order of the request")
    try:
        ServiceRequest.model_validate(resource)
    except Exception as exc:  # pydantic ValidationError: report, do not raise
        problems.append(f"{where}: the updated order is not a valid FHIR ServiceRequest: {exc}")
    ids_by_coverage: dict[str, set[str]] = {}
    for n, ext in enumerate(ours):
        problems += coverage_information_problems(ext, f"{where}.coverage-information[{n}]")
        subs = {e["url"]: e for e in ext.get("extension", [])}
        cov = (subs.get("coverage", {}).get("valueReference") or {}).get("reference", "")
        ids_by_coverage.setdefault(cov, set()).add(subs.get("coverage-assertion-id", {}).get("valueString", ""))
    for cov, ids in ids_by_coverage.items():
        if len(ids) != 1:
            problems.append(f"{where}: repetitions for {cov} carry different coverage-assertion-ids")
    flat = [i for ids in ids_by_coverage.values() for i in ids]
    if len(flat) != len(set(flat)):
        problems.append(f"{where}: differing coverages share a coverage-assertion-id (CRD resp-32)")
    if ref in sent and not any(_without_ours(resource) == _without_ours(_pruned(s)) for s in sent[ref]):
        problems.append(f"{where}: the update changes more than the coverage-information (CRD resp-37)")
    return problems


def _without_ours(resource: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in resource.items() if k != "extension"}
    others = [e for e in resource.get("extension", []) if not (isinstance(e, dict) and e.get("url") == CRD_EXT)]
    if others:
        out["extension"] = others
    return out


def _pruned(node: Any) -> Any:
    """The request's order as FHIR JSON allows it: no empty values, codes trimmed."""
    if isinstance(node, dict):
        kept = {k: v.strip() if k == "code" and isinstance(v, str) else _pruned(v) for k, v in node.items()}
        return {k: v for k, v in kept.items() if v not in ("", [], {}, None)}
    if isinstance(node, list):
        return [_pruned(v) for v in node if _pruned(v) not in ("", [], {})]
    return node


def _draft_refs(request: dict[str, Any]) -> set[str] | None:
    bundle = (request.get("context") or {}).get("draftOrders")
    if not isinstance(bundle, dict):
        return None
    return {f"{e['resource'].get('resourceType')}/{e['resource'].get('id')}" for e in bundle.get("entry", [])
            if isinstance(e, dict) and isinstance(e.get("resource"), dict)}


def _sent_orders(request: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The orders a request carries (draftOrders, or prefetched dispatched orders), by reference (orders
    without an id all under 'ServiceRequest/None': an update of one of them matches one of those)."""
    found: dict[str, list[dict[str, Any]]] = {}
    bundle = (request.get("context") or {}).get("draftOrders") or {}
    entries = list(bundle.get("entry", [])) if isinstance(bundle, dict) else []
    for value in (request.get("prefetch") or {}).values():
        if isinstance(value, dict) and value.get("resourceType") == "Bundle":
            entries += value.get("entry", [])
    for e in entries:
        r = e.get("resource") if isinstance(e, dict) else None
        if isinstance(r, dict) and r.get("resourceType") == "ServiceRequest":
            found.setdefault(f"ServiceRequest/{r.get('id')}", []).append(r)
    return found


def assert_valid_response(body: Any, request: dict[str, Any] | None = None) -> None:
    problems = response_problems(body, request)
    assert not problems, "CDS Hooks / CRD response rules broken:\n" + "\n".join(problems)


# ---------------------------------------------------------------- discovery


def discovery_problems(body: Any) -> list[str]:
    problems: list[str] = []
    services = body.get("services") if isinstance(body, dict) else None
    if not isinstance(services, list):
        return ["discovery must be an object with a 'services' array"]
    for i, s in enumerate(services):
        where = f"services[{i}]"
        for field in ("hook", "description", "id"):
            if not isinstance(s.get(field), str) or not s[field]:
                problems.append(f"{where}.{field} is required (string)")
        ext = s.get("extension") or {}
        versions = ext.get("davinci-crd.version")
        if not (isinstance(versions, list) and versions and all(isinstance(v, str) for v in versions)):
            problems.append(f"{where}: davinci-crd.version must list the CRD versions supported (CRD dev-1)")
        elif any(v.count(".") != 1 for v in versions):
            problems.append(f"{where}: davinci-crd.version entries are major.minor (e.g. 2.2)")
        options = ext.get("davinci-crd.configuration-options", [])
        for key in ("code", "name", "description"):
            values = [o.get(key) for o in options]
            if len(values) != len(set(values)):
                problems.append(f"{where}: configuration option {key}s must be unique (CRD dev-8)")
        for j, o in enumerate(options):
            if not all(isinstance(o.get(k), str) and o[k] for k in ("code", "type", "name", "description")):
                problems.append(f"{where}.configuration-options[{j}] needs code, type, name and description (dev-4)")
            if o.get("type") not in ("boolean", "integer"):
                problems.append(f"{where}.configuration-options[{j}].type must be boolean or integer")
            if o.get("code") not in CARD_TYPES:
                problems.append(f"{where}.configuration-options[{j}].code {o.get('code')!r} is not a card type "
                                "(CRD dev-5/dev-7)")
    return problems
