"""The CDS Hooks 2.0 response rules, written once; every hook response in the tests is checked with them."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

INDICATORS = {"info", "warning", "critical"}
SELECTION = {"at-most-one", "any"}
ACTION_TYPES = {"create", "update", "delete"}
CRD_EXT = "http://hl7.org/fhir/us/davinci-crd/StructureDefinition/ext-coverage-information"


def _no_null_or_empty(node: Any, path: str, problems: list[str]) -> None:
    if node is None or node == "" or node == [] or node == {}:
        problems.append(f"{path} is null or empty")
        return
    if isinstance(node, dict):
        for k, v in node.items():
            _no_null_or_empty(v, f"{path}.{k}", problems)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _no_null_or_empty(v, f"{path}[{i}]", problems)


def _absolute(url: Any) -> bool:
    parsed = urlparse(url) if isinstance(url, str) else None
    return bool(parsed and parsed.scheme in ("http", "https") and parsed.netloc)


def response_problems(body: Any) -> list[str]:
    problems: list[str] = []
    if not isinstance(body, dict) or not isinstance(body.get("cards"), list):
        return ["response must be an object with a 'cards' list"]
    for key, value in body.items():
        if key != "cards":
            _no_null_or_empty(value, key, problems)
    for i, card in enumerate(body["cards"]):
        where = f"cards[{i}]"
        _no_null_or_empty(card, where, problems)
        summary = card.get("summary")
        if not isinstance(summary, str) or not summary or len(summary) >= 140:
            problems.append(f"{where}.summary must be a string under 140 characters")
        if card.get("indicator") not in INDICATORS:
            problems.append(f"{where}.indicator must be one of {sorted(INDICATORS)}")
        if not isinstance(card.get("uuid"), str):
            problems.append(f"{where}.uuid is needed so feedback can name the card")
        source = card.get("source")
        if not isinstance(source, dict) or not source.get("label"):
            problems.append(f"{where}.source.label is required")
        elif "topic" in source and not (source["topic"].get("system") and source["topic"].get("code")):
            problems.append(f"{where}.source.topic must be a Coding")
        for j, link in enumerate(card.get("links", [])):
            if link.get("type") not in ("absolute", "smart") or not link.get("label"):
                problems.append(f"{where}.links[{j}] needs a label and a type")
            if link.get("type") == "absolute" and not _absolute(link.get("url")):
                problems.append(f"{where}.links[{j}].url must be an absolute URL")
        suggestions = card.get("suggestions", [])
        if suggestions and card.get("selectionBehavior") not in SELECTION:
            problems.append(f"{where}.selectionBehavior is required with suggestions")
        for j, s in enumerate(suggestions):
            if not isinstance(s.get("uuid"), str) or not s.get("label"):
                problems.append(f"{where}.suggestions[{j}] needs a uuid and a label")
            for k, a in enumerate(s.get("actions", [])):
                if a.get("type") not in ACTION_TYPES:
                    problems.append(f"{where}.suggestions[{j}].actions[{k}].type is invalid")
                if a.get("type") == "delete" and not a.get("resourceId"):
                    problems.append(f"{where}.suggestions[{j}].actions[{k}] delete needs resourceId")
        for j, reason in enumerate(card.get("overrideReasons", [])):
            if not (reason.get("code") and reason.get("system")):
                problems.append(f"{where}.overrideReasons[{j}] must be a Coding")
    for i, action in enumerate(body.get("systemActions", [])):
        where = f"systemActions[{i}]"
        if action.get("type") not in ACTION_TYPES:
            problems.append(f"{where}.type is invalid")
        for ext in (action.get("resource") or {}).get("extension", []):
            if ext.get("url") != CRD_EXT:
                continue
            subs = {e["url"]: e for e in ext.get("extension", [])}
            for required in ("coverage", "covered", "date", "coverage-assertion-id"):
                if required not in subs:
                    problems.append(f"{where}: coverage-information lacks {required}")
            covered = subs.get("covered", {}).get("valueCode")
            if covered == "not-covered" and "pa-needed" in subs:
                problems.append(f"{where}: not-covered must not carry pa-needed")
            if covered in ("covered", "conditional") and "pa-needed" not in subs:
                problems.append(f"{where}: {covered} needs pa-needed")
    if "systemActions" in body and body.get("extension", {}).get("systemActions") != body["systemActions"]:
        problems.append("extension.systemActions must echo systemActions for the public sandbox")
    return problems


def assert_valid_response(body: Any) -> None:
    problems = response_problems(body)
    assert not problems, "CDS Hooks response rules broken:\n" + "\n".join(problems)
