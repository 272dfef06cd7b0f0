"""FHIR JSON as this service sends it back: no empty values, codes trimmed."""

from __future__ import annotations

from typing import Any


def pruned(node: Any) -> Any:
    """A copy without empty strings, arrays or objects, which FHIR JSON does not allow, and with codes
    trimmed (intake compares them trimmed; FHIR codes have no surrounding whitespace). Orders are
    tolerated with such empties on the way in (the public sandbox sends ``coding: [{}]``), judged
    and validated in this form, and echoed in it."""
    if isinstance(node, dict):
        items = ((k, v.strip() if k == "code" and isinstance(v, str) else pruned(v)) for k, v in node.items())
        return {k: v for k, v in items if v not in ("", [], {}, None)}
    if isinstance(node, list):
        return [v for v in map(pruned, node) if v not in ("", [], {})]
    return node
