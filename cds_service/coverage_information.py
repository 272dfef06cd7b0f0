"""The verdict: Da Vinci CRD 2.2.1 coverage-information, as one typed value.

Elements and vocabulary are those of the IG's ``CoverageInformation.fsh``; this module is the
only place that knows how the extension is spelled in FHIR (``to_fhir``) and read back from an
order an EHR re-sends (``from_fhir``). The decision core builds these values; the renderer only
serialises them; the store keeps them with their fingerprint.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import orjson

from cds_service import terminology

EXTENSION_URL = terminology.CRD_COVERAGE_INFORMATION


class Covered(StrEnum):
    COVERED = "covered"
    NOT_COVERED = "not-covered"
    CONDITIONAL = "conditional"
    INDETERMINATE = "indeterminate"


class PaNeeded(StrEnum):
    NO_AUTH = "no-auth"
    AUTH_NEEDED = "auth-needed"
    SATISFIED = "satisfied"
    PERFORMPA = "performpa"
    CONDITIONAL = "conditional"
    INDETERMINATE = "indeterminate"


class InfoNeeded(StrEnum):
    PERFORMER = "performer"
    LOCATION = "location"
    TIMEFRAME = "timeframe"
    CONTRACT_WINDOW = "contract-window"
    DETAIL_CODE = "detail-code"
    OTH = "OTH"


class DetailCategory(StrEnum):
    LIMITATION = "cat-limitation"
    DECISIONAL = "cat-decisional"
    OTHER = "cat-other"


@dataclass(frozen=True, slots=True)
class Code:
    """A Coding: system, code and (optional) display."""

    system: str
    code: str
    display: str = ""

    def as_fhir(self) -> dict[str, str]:
        out = {"system": self.system, "code": self.code}
        if self.display:
            out["display"] = self.display
        return out


@dataclass(frozen=True, slots=True)
class Reason:
    """A reason CodeableConcept: coded, and always with text (crd-ci-q7 for codes outside CRD's set)."""

    coding: Code
    text: str

    def as_fhir(self) -> dict[str, Any]:
        return {"coding": [self.coding.as_fhir()], "text": self.text}


@dataclass(frozen=True, slots=True)
class Detail:
    """A detail entry: category, code and one value (url, string or boolean), optional qualification."""

    category: DetailCategory
    code: Code
    value: str | bool
    value_type: str = "valueUrl"  # valueUrl | valueString | valueBoolean
    qualification: str = ""

    def as_fhir(self) -> dict[str, Any]:
        sub: list[dict[str, Any]] = [
            {"url": "category", "valueCode": self.category.value},
            {"url": "code", "valueCodeableConcept": {"coding": [self.code.as_fhir()]}},
            {"url": "value", self.value_type: self.value},
        ]
        if self.qualification:
            sub.append({"url": "qualification", "valueString": self.qualification})
        return {"url": "detail", "extension": sub}


@dataclass(frozen=True, slots=True)
class CoverageInformation:
    """One coverage assertion about one order under one Coverage (CRD 2.2.1 ext-coverage-information)."""

    coverage: str  # "Coverage/{id}" on the client's system
    covered: Covered
    date: dt.date  # when the assertion was made
    assertion_id: str
    pa_needed: PaNeeded | None = None
    doc_needed: tuple[str, ...] = ()
    info_needed: tuple[InfoNeeded, ...] = ()
    billing_codes: tuple[Code, ...] = ()
    reasons: tuple[Reason, ...] = ()
    details: tuple[Detail, ...] = field(default=())
    expiry_date: dt.date | None = None

    def to_fhir(self) -> dict[str, Any]:
        """The extension, its sub-extensions in the order the IG declares them."""
        sub: list[dict[str, Any]] = [
            {"url": "coverage", "valueReference": {"reference": self.coverage}},
            {"url": "covered", "valueCode": self.covered.value},
        ]
        if self.pa_needed is not None:
            sub.append({"url": "pa-needed", "valueCode": self.pa_needed.value})
        sub += [{"url": "doc-needed", "valueCode": d} for d in self.doc_needed]
        sub += [{"url": "info-needed", "valueCode": i.value} for i in self.info_needed]
        sub += [{"url": "billingCode", "valueCoding": c.as_fhir()} for c in self.billing_codes]
        sub += [{"url": "reason", "valueCodeableConcept": r.as_fhir()} for r in self.reasons]
        sub += [d.as_fhir() for d in self.details]
        sub.append({"url": "date", "valueDate": self.date.isoformat()})
        sub.append({"url": "coverage-assertion-id", "valueString": self.assertion_id})
        if self.expiry_date is not None:
            sub.append({"url": "expiry-date", "valueDate": self.expiry_date.isoformat()})
        return {"url": EXTENSION_URL, "extension": sub}

    def verdict_json(self) -> bytes:
        """What was asserted, without when or under which id: equal bytes mean the same verdict."""
        return _verdict_bytes(self.to_fhir()["extension"])

    @property
    def fingerprint(self) -> str:
        return verdict_fingerprint(self.verdict_json())

    def issued(self, assertion_id: str, on: dt.date) -> CoverageInformation:
        return replace(self, assertion_id=assertion_id, date=on)


def verdict_fingerprint(verdict_json: bytes) -> str:
    """The fingerprint of a verdict's content (``verdict_json``): same fingerprint, same assertion."""
    return hashlib.sha256(verdict_json).hexdigest()


def extensions_on(resource: dict[str, Any]) -> Iterable[dict[str, Any]]:
    """The coverage-information extensions an order already carries (as an EHR re-sends them)."""
    for ext in resource.get("extension") or ():
        if isinstance(ext, dict) and ext.get("url") == EXTENSION_URL and isinstance(ext.get("extension"), list):
            yield ext


def held_assertion(ext: dict[str, Any]) -> tuple[str, str, bytes] | None:
    """(coverage reference, assertion id, verdict bytes) of an extension an order carries, or None
    when it is not one this service could have written (missing coverage or id)."""
    subs = [e for e in ext["extension"] if isinstance(e, dict)]
    ids = [e.get("valueString") for e in subs if e.get("url") == "coverage-assertion-id"]
    refs = [(e.get("valueReference") or {}).get("reference") for e in subs if e.get("url") == "coverage"]
    if len(ids) != 1 or len(refs) != 1 or not isinstance(ids[0], str) or not isinstance(refs[0], str):
        return None
    try:
        verdict = _verdict_bytes(subs)
    except TypeError:  # not JSON we wrote (orjson refuses e.g. huge integers): not ours
        return None
    return refs[0], ids[0], verdict


def _verdict_bytes(sub_extensions: list[dict[str, Any]]) -> bytes:
    """The sub-extensions without the assertion's date and id, as comparable bytes (``verdict_json``)."""
    kept = [e for e in sub_extensions if e.get("url") not in ("date", "coverage-assertion-id")]
    return orjson.dumps(kept, option=orjson.OPT_SORT_KEYS)
