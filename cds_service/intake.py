"""Turn a CDS Hooks request body into the decision core's inputs (pure: no I/O).

Everything a client can get wrong is reported as ``RequestError`` (rendered as a 400
OperationOutcome by the web layer); everything the specification says to ignore is ignored.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from datetime import date
from typing import Annotated, Any, NoReturn

from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import AfterValidator, ConfigDict, StringConstraints, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from cds_service.decision import CoverageFacts, CoverageStatus, Order, PlanCoverage
from cds_service.fhir_errors import first_problem
from cds_service.knowledge import Knowledge


class RequestError(Exception):
    """The request cannot be processed; ``expression`` points at the offending element."""

    def __init__(self, message: str, expression: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.expression = expression
        self.status = status


@dataclass(frozen=True)
class HookCall:
    hook: str
    hook_instance: str
    context: dict[str, Any]
    orders: tuple[Order, ...]
    prefetch: dict[str, Any]
    fhir_server: str | None
    fhir_authorization: dict[str, Any] | None
    configuration: dict[str, Any] = field(default_factory=dict)
    patient_categories: frozenset[str] = frozenset()  # ICD-10-CM categories of the patient's Conditions
    order_locations: tuple[str, ...] = ()  # where each order sits in the request, for error messages

    def validate_orders(self, judged: Collection[Order]) -> None:
        """Validate in full (fhir.resources) the orders the policy judges; raises RequestError.

        Orders the policy has nothing to say about were only checked in the elements read to
        classify them (``READ_ELEMENTS``): full validation costs ~0.1 ms per order, and a flaw in,
        say, a blood count's ``note`` is no reason to withhold a liquid-biopsy warning."""
        chosen = {id(order) for order in judged}
        for order, where in zip(self.orders, self.order_locations, strict=True):
            if id(order) in chosen:
                _validate_service_request(order.resource, where)


def parse_hook_call(body: Any, expected_hook: str, knowledge: Knowledge, today: date) -> HookCall:
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object", "$")
    hook = body.get("hook")
    if not isinstance(hook, str) or not hook:
        raise RequestError("Missing required field 'hook'", "hook")
    if hook != expected_hook:
        raise RequestError(f"This service answers the '{expected_hook}' hook, not '{hook}'", "hook")
    instance = body.get("hookInstance")
    if not isinstance(instance, str) or not instance.strip():
        raise RequestError("Missing required field 'hookInstance'", "hookInstance")
    context = body.get("context")
    if not isinstance(context, dict):
        raise RequestError("Missing required object 'context'", "context")
    fhir_server = body.get("fhirServer")
    if fhir_server is not None and not isinstance(fhir_server, str):
        raise RequestError("'fhirServer' must be a URL string", "fhirServer")
    fhir_auth = body.get("fhirAuthorization")
    if fhir_auth is not None:
        if not isinstance(fhir_auth, dict) or not isinstance(fhir_auth.get("access_token"), str):
            raise RequestError("'fhirAuthorization' must be an object with an 'access_token'", "fhirAuthorization")
        if not fhir_server:
            raise RequestError("'fhirServer' is required with 'fhirAuthorization'", "fhirServer")
    prefetch = body.get("prefetch") or {}
    if not isinstance(prefetch, dict):
        raise RequestError("'prefetch' must be an object", "prefetch")
    extension = body.get("extension")
    configuration = extension.get("davinci-crd.configuration") if isinstance(extension, dict) else None

    bundle = context.get("draftOrders")
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise RequestError("'context.draftOrders' must be a FHIR Bundle", "context.draftOrders")
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise RequestError("'context.draftOrders.entry' must be a list", "context.draftOrders.entry")

    selections = context.get("selections") if hook == "order-select" else None
    if selections is not None and not (isinstance(selections, list) and all(isinstance(s, str) for s in selections)):
        raise RequestError("'context.selections' must be a list of references", "context.selections")
    selected = {s.strip() for s in selections} if selections else None

    conditions = ConditionIndex(entries, prefetch)
    orders, locations = [], []
    for i, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or resource.get("resourceType") != "ServiceRequest":
            continue  # other resource types are passed over silently
        where = f"context.draftOrders.entry[{i}].resource"
        try:
            READ_ELEMENTS.validate_python(resource)
        except ValidationError as exc:
            _raise_first(exc, where)
        order = to_order(resource, knowledge, today, conditions)
        if selected is None or order.reference in selected:
            orders.append(order)
            locations.append(where)

    return HookCall(hook, instance, context, tuple(orders), prefetch, fhir_server, fhir_auth,
                    configuration if isinstance(configuration, dict) else {},
                    conditions.categories(knowledge.icd10_system), tuple(locations))


# The elements of a ServiceRequest read to classify it, with their FHIR JSON types. Every order is
# checked against this (pydantic-core, microseconds), so the classification never reads junk; the
# orders the policy judges are then validated in full by fhir.resources (HookCall.validate_orders).
_STRICT = ConfigDict(strict=True)
_String = Annotated[str, StringConstraints(min_length=1)]  # FHIR JSON has no empty strings
_Code = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]  # codes are compared trimmed


def _calendar_date(value: str) -> str:
    if len(value) >= 10:
        date.fromisoformat(value[:10])  # the pattern lets 2025-02-30 through; a ValueError is a 400
    return value


# FHIR R4 dateTime (date, or date and time with zone): a misread date of service could change the
# classification, so it is held to the same form fhir.resources requires.
_DateTime = Annotated[str, StringConstraints(pattern=(
    r"^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])"
    r"(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)))?)?)?$"
)), AfterValidator(_calendar_date)]


@with_config(_STRICT)
class _Coding(TypedDict, total=False):
    system: _String
    code: _Code
    display: _String


@with_config(_STRICT)
class _CodeableConcept(TypedDict, total=False):
    coding: list[_Coding]
    text: _String


@with_config(_STRICT)
class _Reference(TypedDict, total=False):
    reference: _String


@with_config(_STRICT)
class _Period(TypedDict, total=False):
    start: _DateTime


@with_config(_STRICT)
class _Timing(TypedDict, total=False):
    event: list[_DateTime]


@with_config(_STRICT)
class _ReadElements(TypedDict, total=False):
    id: _String
    code: _CodeableConcept
    category: list[_CodeableConcept]
    reasonCode: list[_CodeableConcept]
    reasonReference: list[_Reference]
    occurrenceDateTime: _DateTime
    occurrencePeriod: _Period
    occurrenceTiming: _Timing
    authoredOn: _DateTime
    contained: list[dict[str, Any]]


READ_ELEMENTS: TypeAdapter[_ReadElements] = TypeAdapter(_ReadElements)


def _raise_first(exc: ValidationError, where: str) -> NoReturn:
    path, message = first_problem(exc)
    raise RequestError(f"Invalid ServiceRequest: {path.lstrip('.')}: {message}", where + path) from exc


def _null_path(node: Any, path: str = "") -> str | None:
    """Where a JSON null sits in a resource (FHIR JSON allows them only inside primitive arrays).

    Empty arrays and objects are tolerated on the way in (the public sandbox sends ``coding: [{}]``);
    the renderer prunes them from anything it sends back."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        here = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}"
        if value is None and not isinstance(node, list):
            return here
        if (found := _null_path(value, here)) is not None:
            return found
    return None


def _validate_service_request(resource: dict[str, Any], where: str) -> None:
    if (null_at := _null_path(resource)) is not None:
        raise RequestError(f"Invalid ServiceRequest: {null_at.lstrip('.')} is null, which FHIR JSON does not allow",
                           where + null_at)
    # Codes are compared ignoring surrounding whitespace, so validate them that way too.
    code = resource.get("code")
    if isinstance(code, dict) and isinstance(code.get("coding"), list):
        codings = [{**c, "code": c["code"].strip()} if isinstance(c, dict) and isinstance(c.get("code"), str)
                   else c for c in code["coding"]]
        resource = {**resource, "code": {**code, "coding": codings}}
    try:
        ServiceRequest.model_validate(resource)
    except ValidationError as exc:
        _raise_first(exc, where)


# ---------------------------------------------------------------- orders


def to_order(resource: dict[str, Any], knowledge: Knowledge, today: date,
             conditions: ConditionIndex | None = None) -> Order:
    code = resource.get("code") or {}
    codings = [c for c in code.get("coding") or [] if isinstance(c, dict)]
    codes = tuple(dict.fromkeys(
        str(c["code"]).strip().upper() for c in codings
        if c.get("code") and str(c.get("system", "")).strip() in knowledge.code_systems_accepted))
    text = " ".join(filter(None, [code.get("text"), *(c.get("display") for c in codings)])).lower()
    day, basis = date_of_service(resource, today)

    reasons = [cc for cc in resource.get("reasonCode") or [] if isinstance(cc, dict)]
    reason_codings = [c for cc in reasons for c in cc.get("coding") or [] if isinstance(c, dict)]
    for ref in resource.get("reasonReference") or []:
        if isinstance(ref, dict) and conditions is not None:
            reason_codings += conditions.codings(ref.get("reference"), resource)
    categories = frozenset(
        icd10_category(c["code"]) for c in reason_codings
        if c.get("system") == knowledge.icd10_system and c.get("code"))
    purpose_codings = reason_codings + [c for cc in resource.get("category") or [] if isinstance(cc, dict)
                                        for c in cc.get("coding") or [] if isinstance(c, dict)]
    purposes = frozenset(str(c.get("code")).strip() for c in purpose_codings
                         if c.get("system") == knowledge.purpose_system and c.get("code"))
    rid = resource.get("id")
    return Order(f"ServiceRequest/{rid}" if rid else "ServiceRequest", codes, text, day, basis,
                 categories, purposes, resource)


DATE_SOURCES = (
    ("occurrenceDateTime", "the order's occurrenceDateTime"),
    ("occurrencePeriod.start", "the start of the order's occurrencePeriod"),
    ("occurrenceTiming.event", "the first event of the order's occurrenceTiming"),
    ("authoredOn", "the date the order was authored (no date of service on the order)"),
)


def date_of_service(resource: dict[str, Any], today: date) -> tuple[date, str]:
    """The date every rule is judged at, and in words where it came from."""
    period = resource.get("occurrencePeriod") or {}
    events = (resource.get("occurrenceTiming") or {}).get("event") or []
    values = (resource.get("occurrenceDateTime"), period.get("start"), events[0] if events else None,
              resource.get("authoredOn"))
    for value, (_, words) in zip(values, DATE_SOURCES, strict=True):
        if isinstance(value, str) and (day := fhir_date(value)) is not None:
            return day, words
    return today, "today's date (the order has no date of service)"


def fhir_date(value: str) -> date | None:
    """The calendar date of a FHIR date/dateTime as written (local to the sender); partial dates
    (YYYY or YYYY-MM) are taken at their first day."""
    head = value.strip()[:10]
    for candidate in (head, head[:7] + "-01", head[:4] + "-01-01"):
        try:
            return date.fromisoformat(candidate)
        except ValueError:
            continue
    return None


def icd10_category(code: str) -> str:
    return str(code).strip().upper().replace(".", "")[:3]


class ConditionIndex:
    """Conditions an order's reasonReference may point at: in draftOrders, in prefetch, or contained."""

    def __init__(self, entries: list[Any], prefetch: dict[str, Any]) -> None:
        self.by_ref: dict[str, dict[str, Any]] = {}
        for res in _resources(entries, prefetch):
            if res.get("resourceType") == "Condition" and res.get("id"):
                self.by_ref[f"Condition/{res['id']}"] = res

    def codings(self, reference: Any, order: dict[str, Any]) -> list[dict[str, Any]]:
        if not isinstance(reference, str):
            return []
        if reference.startswith("#"):
            target = next((c for c in order.get("contained") or []
                           if isinstance(c, dict) and c.get("id") == reference[1:]), None)
        else:
            target = self.by_ref.get("/".join(reference.rstrip("/").split("/")[-2:]))
        return _codings(target.get("code")) if isinstance(target, dict) else []

    def categories(self, system: str) -> frozenset[str]:
        return frozenset(icd10_category(c["code"]) for cond in self.by_ref.values()
                         for c in _codings(cond.get("code"))
                         if c.get("system") == system and isinstance(c.get("code"), str) and c["code"])


def _codings(concept: Any) -> list[dict[str, Any]]:
    """The codings of a CodeableConcept from data we do not validate (prefetch), tolerating junk."""
    codings = concept.get("coding") if isinstance(concept, dict) else None
    return [c for c in codings if isinstance(c, dict)] if isinstance(codings, list) else []


def _resources(entries: list[Any], prefetch: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for e in entries:
        if isinstance(e, dict) and isinstance(e.get("resource"), dict):
            yield e["resource"]
    for value in prefetch.values():
        if isinstance(value, dict):
            if value.get("resourceType") == "Bundle":
                found = value.get("entry")
                for e in found if isinstance(found, list) else []:
                    if isinstance(e, dict) and isinstance(e.get("resource"), dict):
                        yield e["resource"]
            else:
                yield value


# ---------------------------------------------------------------- coverage


def coverage_from_prefetch(value: Any) -> CoverageFacts | None:
    """Coverage facts from a prefetch value, or None when it must be fetched (missing, null, error)."""
    if not isinstance(value, dict):
        return None
    resources: list[Any]
    if value.get("resourceType") == "Coverage":
        resources = [value]
    elif value.get("resourceType") == "Bundle":
        entries = value.get("entry", [])
        if not isinstance(entries, list):
            return CoverageFacts(CoverageStatus.UNAVAILABLE)  # a Bundle we cannot read
        resources = [e["resource"] for e in entries if isinstance(e, dict) and "resource" in e]
    else:  # OperationOutcome or anything else: the client could not get it
        return None
    return coverage_facts(resources)


def coverage_facts(resources: list[Any]) -> CoverageFacts:
    coverages = [r for r in resources if isinstance(r, dict) and r.get("resourceType") == "Coverage"]
    if not all(_readable_coverage(r) for r in coverages):
        # A Coverage we cannot read is no basis for a coverage statement: coverage is then unknown.
        return CoverageFacts(CoverageStatus.UNAVAILABLE)
    active = tuple(plan_coverage(r) for r in coverages if r["status"] == "active")
    return CoverageFacts(CoverageStatus.FOUND if active else CoverageStatus.NONE, active)


def _readable_coverage(r: dict[str, Any]) -> bool:
    """The elements the decision reads are present and of their FHIR types (checked by hand: a full
    fhir.resources validation of every prefetched Coverage costs more than the whole decision)."""
    def strings(items: Any, *keys: str) -> bool:
        return isinstance(items, list) and all(
            isinstance(i, dict) and all(isinstance(i.get(k, ""), str) for k in keys) for i in items)
    return (isinstance(r.get("id"), str) and bool(r["id"]) and isinstance(r.get("status"), str)
            and strings(r.get("class", []), "value", "name") and strings(r.get("payor", []), "display"))


def plan_coverage(resource: dict[str, Any]) -> PlanCoverage:
    descriptors: list[str] = []
    for cls in resource.get("class") or []:
        if isinstance(cls, dict):
            descriptors += [str(cls[k]) for k in ("value", "name") if cls.get(k)]
    for payor in resource.get("payor") or []:
        if isinstance(payor, dict) and payor.get("display"):
            descriptors.append(str(payor["display"]))
    rid = resource.get("id")
    return PlanCoverage(f"Coverage/{rid}" if rid else "Coverage", tuple(descriptors))
