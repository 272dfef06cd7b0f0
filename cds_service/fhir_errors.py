"""How a fhir.resources / pydantic validation failure is reported: its first problem, located FHIRPath-style."""

from __future__ import annotations

from pydantic import ValidationError


def first_problem(exc: ValidationError) -> tuple[str, str]:
    """The first problem's location, written '.code.coding[0].code', and its message."""
    first = exc.errors()[0]
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first.get("loc", ()))
    return path, str(first.get("msg"))
