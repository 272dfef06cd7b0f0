"""``artifacts check``: validate the knowledge artifacts as a whole, reporting every problem found.

- every resource parses (fhir.resources R4B);
- every canonical reference under the artifacts' base resolves to an artifact;
- the knowledge builds (code history consistent, cross-references and routes resolve);
- every example conforms to its profile: required elements, code binding, constraints (FHIRPath).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fhirpathpy import evaluate
from fhirpathpy.models import models

from cds_service.knowledge.loader import (
    ARTIFACT_BASE_MARKER,
    DEFAULT_DIR,
    Artifact,
    KnowledgeError,
    build_knowledge,
    parse_artifact,
)

CANONICAL_KEYS = {"url", "valueSet", "resource", "system", "targetUri", "sourceCanonical", "sourceUri",
                  "baseDefinition", "profile", "valueCanonical", "targetProfile", "property", "source", "target"}


def check_artifacts(directory: Path | None = None) -> list[str]:
    directory = directory or DEFAULT_DIR
    problems: list[str] = []
    artifacts: list[Artifact] = []
    paths = sorted(directory.glob("*.json"))
    if not paths:
        return [f"{directory}: no FHIR artifacts (*.json) found"]
    for path in paths:
        try:
            artifacts.append(parse_artifact(path))
        except KnowledgeError as exc:
            problems.append(str(exc))
    urls = {a.url for a in artifacts if a.url}
    for a in artifacts:
        for ref in _canonicals(a.raw):
            target = ref.split("|", 1)[0].split("#", 1)[0]
            if target.startswith(ARTIFACT_BASE_MARKER + "/") and target not in urls:
                problems.append(f"{a.name}: reference {ref} does not resolve to any artifact")
    if not problems:
        try:
            build_knowledge(artifacts, ARTIFACT_BASE_MARKER)
        except KnowledgeError as exc:
            problems.append(str(exc))
    if not problems:
        problems += list(check_examples(directory / "examples", artifacts))
    return problems


def _canonicals(node: Any, key: str = "") -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k != "identifier":  # identifier systems name namespaces, not artifacts
                yield from _canonicals(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from _canonicals(v, key)
    elif isinstance(node, str) and key in CANONICAL_KEYS and node.startswith("http"):
        yield node


def check_examples(folder: Path, artifacts: list[Artifact]) -> Iterator[str]:
    profiles = {a.url: a for a in artifacts if a.raw["resourceType"] == "StructureDefinition"
                and a.raw.get("kind") == "resource"}
    value_sets = {a.url: a for a in artifacts if a.raw["resourceType"] == "ValueSet"}
    examples = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not examples:
        yield f"{folder}: no example instances"
    for path in examples:
        try:
            example = parse_artifact(path)
        except KnowledgeError as exc:
            yield str(exc)
            continue
        claimed = (example.raw.get("meta") or {}).get("profile") or []
        if not claimed:
            yield f"examples/{path.name}: meta.profile names no profile"
        for url in claimed:
            profile = profiles.get(url)
            if profile is None:
                yield f"examples/{path.name}: profile {url} is not among the artifacts"
                continue
            for problem in conformance_problems(example.raw, profile.raw, value_sets):
                yield f"examples/{path.name}: {problem}"


def conformance_problems(instance: dict[str, Any], profile: dict[str, Any],
                         value_sets: dict[str | None, Artifact]) -> Iterator[str]:
    for element in profile.get("differential", {}).get("element", []):
        path = element["path"].split(".", 1)[1] if "." in element["path"] else ""
        present = _present(instance, path) if path else True
        if element.get("min", 0) >= 1 and not present:
            yield f"{element['path']} is required by the profile"
        binding = element.get("binding") or {}
        if present and binding.get("strength") in ("required", "extensible") and path == "code":
            allowed = _expansion(binding["valueSet"], value_sets)
            codes = {str(c.get("code", "")).strip().upper() for c in instance["code"].get("coding", [])}
            if allowed and not codes & allowed:
                yield f"{element['path']} has no code from {binding['valueSet']}"
        for constraint in element.get("constraint", []):
            if evaluate(instance, constraint["expression"], {}, models["r4"]) != [True]:
                yield f"constraint {constraint['key']} failed: {constraint['human']}"


def _present(instance: dict[str, Any], path: str) -> bool:
    node: Any = instance
    for part in path.split("."):
        if isinstance(node, list):
            node = node[0] if node else None
        if not isinstance(node, dict):
            return False
        if part.endswith("[x]"):
            stem = part[:-3]
            node = next((v for k, v in node.items() if k.startswith(stem) and k != stem), None)
        else:
            node = node.get(part)
        if node in (None, [], {}):
            return False
    return True


def _expansion(url: str, value_sets: dict[str | None, Artifact]) -> set[str]:
    vs = value_sets.get(url)
    if vs is None:
        return set()
    codes: set[str] = set()
    for inc in vs.raw.get("compose", {}).get("include", []):
        codes.update(str(c["code"]).strip().upper() for c in inc.get("concept", []))
        for nested in inc.get("valueSet", []):
            codes |= _expansion(nested, value_sets)
    return codes
