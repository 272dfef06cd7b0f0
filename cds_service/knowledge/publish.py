"""``artifacts bundle`` and ``artifacts publish``: share the artifacts with any FHIR server."""

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
            timeout: float = 10.0) -> list[PublishResult]:
    """PUT each artifact to ``server``; stops at the first failure with a message naming it."""
    base = server.rstrip("/")
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    results = []
    with requests.Session() as session:
        for a in artifacts:
            ref = f"{a.raw['resourceType']}/{a.raw['id']}"
            try:
                resp = session.put(f"{base}/{ref}", json=a.raw, headers=headers, timeout=timeout)
            except requests.RequestException as exc:
                raise PublishError(f"{ref}: could not reach {base} ({exc.__class__.__name__})") from exc
            if resp.status_code not in (200, 201):
                raise PublishError(f"{ref}: {base} answered {resp.status_code}: {_diagnostics(resp)}")
            results.append(PublishResult(ref, resp.status_code, "created" if resp.status_code == 201 else "updated"))
    return results


def _diagnostics(resp: requests.Response) -> str:
    try:
        body = resp.json()
        issues = body.get("issue", []) if isinstance(body, dict) else []
        text = "; ".join(str(i.get("diagnostics", "")) for i in issues if isinstance(i, dict))
        return text or resp.text[:300]
    except ValueError:
        return resp.text[:300] or resp.reason
