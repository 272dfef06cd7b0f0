"""``artifacts bundle`` and ``artifacts publish``: share the artifacts with any FHIR server, as one transaction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests

from cds_service.knowledge.loader import Artifact


def transaction_bundle(artifacts: list[Artifact]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{
            "fullUrl": a.url or f"{a.raw['resourceType']}/{a.raw['id']}",
            "resource": a.raw,
            "request": {"method": "PUT", "url": f"{a.raw['resourceType']}/{a.raw['id']}"},
        } for a in artifacts],
    }


@dataclass(frozen=True)
class PublishResult:
    reference: str
    status: int
    outcome: str  # "created", "updated" or the error message


class PublishError(Exception):
    pass


def publish(artifacts: list[Artifact], server: str, token: str | None = None,
            timeout: float = 30.0) -> list[PublishResult]:
    """POST every artifact to ``server`` as one FHIR transaction: the server applies all of them or
    none (a half-published policy would contradict itself). One result per artifact, in order."""
    base = server.rstrip("/")
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    bundle = transaction_bundle(artifacts)
    try:
        resp = requests.post(base, json=bundle, headers=headers, timeout=timeout)
    except requests.RequestException as exc:
        raise PublishError(f"could not reach {base} ({exc.__class__.__name__}); nothing was published") from exc
    if resp.status_code != 200:
        raise PublishError(f"{base} refused the transaction ({resp.status_code}: {_diagnostics(resp)}); "
                           "nothing was published")
    try:
        answered = resp.json().get("entry") or []
        statuses = [str(e["response"]["status"]) for e in answered]
    except (ValueError, AttributeError, KeyError, TypeError) as exc:
        raise PublishError(f"{base} answered the transaction with no transaction-response Bundle") from exc
    if len(statuses) != len(artifacts):
        raise PublishError(f"{base} answered {len(statuses)} entries for {len(artifacts)} artifacts")
    results = []
    for entry, status in zip(bundle["entry"], statuses, strict=True):
        code = int(status.split()[0]) if status.split() and status.split()[0].isdigit() else 0
        results.append(PublishResult(entry["request"]["url"], code, "created" if code == 201 else "updated"))
    return results


def _diagnostics(resp: requests.Response) -> str:
    try:
        body = resp.json()
        issues = body.get("issue", []) if isinstance(body, dict) else []
        text = "; ".join(str(i.get("diagnostics", "")) for i in issues if isinstance(i, dict))
        return text or resp.text[:300]
    except ValueError:
        return resp.text[:300] or resp.reason
