"""FHIR JSON as this service sends it back: no empty values, codes trimmed."""

from __future__ import annotations

from typing import Any


def pruned(node: Any) -> Any:
    """A copy without empty strings, arrays or objects, which FHIR JSON does not allow, and with codes
    trimmed (intake compares them trimmed; FHIR codes have no surrounding whitespace). Orders are
    tolerated with such empties on the way in (the public sandbox sends ``coding: [{}]``), judged
    and validated in this form, and echoed in it."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if isinstance(v, (dict, list)):
                v = pruned(v)
            elif k == "code" and isinstance(v, str):
                v = v.strip()
            if v not in ("", [], {}, None):
                out[k] = v
        return out
    if isinstance(node, list):
        kept = (pruned(v) if isinstance(v, (dict, list)) else v for v in node)
        return [v for v in kept if v not in ("", [], {})]
    return node
