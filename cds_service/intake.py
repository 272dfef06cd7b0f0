"""Turn a CDS Hooks request body into the decision core's inputs (pure: no I/O).

Everything a client can get wrong is reported as ``RequestError`` (rendered as a 400
OperationOutcome by the web layer); everything the specification says to ignore is ignored.
Each hook's context is parsed by its own function (``parse_request`` picks it from the service
declaration); orders, conditions and coverages are read the same way for every hook.
"""

from __future__ import annotations

import calendar
import contextlib
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Annotated, Any, NoReturn

from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import AfterValidator, ConfigDict, StringConstraints, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from cds_service.coverage_information import extensions_on, held_assertion
from cds_service.decision import CoverageRecord, DateWindow, Diagnosis, Order
from cds_service.fast_validation import plainly_valid
from cds_service.fhir_errors import first_problem
from cds_service.fhir_json import pruned
from cds_service.knowledge import Knowledge
from cds_service.terminology import COVERAGE_CLASS_PLAN_TYPES as PLAN_CLASSES

log = logging.getLogger(__name__)


class RequestError(Exception):
    """The request cannot be processed; ``expression`` points at the offending element."""

    def __init__(self, message: str, expression: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.expression = expression
        self.status = status


@dataclass(frozen=True)
class OrderSource:
    """An order as the request carries it: the resource and where it sits (for error messages)."""

    resource: dict[str, Any]
    location: str
    draft: bool  # in draftOrders (order-sign/select) rather than an existing order (order-dispatch)

    @property
    def reference(self) -> str:
        """How the order is known: 'ServiceRequest/{id}', or, for an order without an id (which nothing
        outside this request can name), its place in the request (e.g. 'context.draftOrders.entry[1].resource')."""
        return _reference(self.resource) if identified(self.resource) else self.location


def identified(resource: dict[str, Any]) -> bool:
    """The resource has an id, so it can be referred to (and matched across calls)."""
    return isinstance(resource.get("id"), str) and bool(resource["id"])


@dataclass(frozen=True)
class HookRequest:
    hook: str
    hook_instance: str
    patient_id: str
    context: dict[str, Any]
    prefetch: dict[str, Any]
    fhir_server: str | None
    fhir_authorization: dict[str, Any] | None
    configuration: dict[str, Any]
    requested_version: str | None
    orders: tuple[OrderSource, ...]  # the orders this hook asks about, as far as the request carries them
    dispatched: tuple[str, ...] = ()  # order-dispatch: references of the dispatched orders
    missing_orders: tuple[str, ...] = ()  # order-dispatch: dispatched orders neither in context nor prefetch
    performer: str | None = None
    resources: tuple[dict[str, Any], ...] = field(default=(), repr=False)  # every resource the request carries


MAX_HOOK_INSTANCE = 128
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


# ---------------------------------------------------------------- the request envelope and each hook's context


def parse_request(body: Any, expected_hook: str, parse_context: Callable[[HookRequest], HookRequest]) -> HookRequest:
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
    if len(instance) > MAX_HOOK_INSTANCE:
        raise RequestError(f"'hookInstance' is longer than {MAX_HOOK_INSTANCE} characters (it is a UUID)",
                           "hookInstance")
    context = body.get("context")
    if not isinstance(context, dict):
        raise RequestError("Missing required object 'context'", "context")
    patient = context.get("patientId")
    if not isinstance(patient, str) or not patient.strip():
        raise RequestError("Missing required field 'context.patientId'", "context.patientId")
    # Present means well-formed everywhere below: CDS Hooks JSON has no nulls.
    fhir_server = body.get("fhirServer")
    if "fhirServer" in body and not (isinstance(fhir_server, str) and fhir_server):
        raise RequestError("'fhirServer' must be a URL string", "fhirServer")
    fhir_auth = body.get("fhirAuthorization")
    if "fhirAuthorization" in body:
        if not isinstance(fhir_auth, dict) or not isinstance(fhir_auth.get("access_token"), str):
            raise RequestError("'fhirAuthorization' must be an object with an 'access_token'", "fhirAuthorization")
        if not fhir_server:
            raise RequestError("'fhirServer' is required with 'fhirAuthorization'", "fhirServer")
    prefetch = body.get("prefetch")
    if prefetch is not None and not isinstance(prefetch, dict):
        raise RequestError("'prefetch' must be an object", "prefetch")
    extension = body.get("extension")
    if "extension" in body and not isinstance(extension, dict):
        raise RequestError("'extension' must be an object", "extension")
    configuration = (extension or {}).get("davinci-crd.configuration")
    if "davinci-crd.configuration" in (extension or {}) and not isinstance(configuration, dict):
        raise RequestError("'davinci-crd.configuration' must be an object", "extension.davinci-crd.configuration")
    version = (extension or {}).get("davinci-crd.requestedVersion")
    if "davinci-crd.requestedVersion" in (extension or {}) and not isinstance(version, str):
        raise RequestError("'davinci-crd.requestedVersion' must be a string", "extension.davinci-crd.requestedVersion")

    envelope = HookRequest(hook, instance, patient.strip(), context, prefetch or {}, fhir_server, fhir_auth,
                           configuration or {}, version, ())
    return parse_context(envelope)


def order_sign_context(request: HookRequest) -> HookRequest:
    entries = _draft_entries(request.context)
    return _with_orders(request, [OrderSource(r, where, True) for r, where in _service_requests(entries)], entries)


def order_select_context(request: HookRequest) -> HookRequest:
    entries = _draft_entries(request.context)
    selections = request.context.get("selections")
    if not (isinstance(selections, list) and selections and all(isinstance(s, str) for s in selections)):
        raise RequestError("'context.selections' must be a non-empty list of references", "context.selections")
    selected = {_local(s) for s in selections}  # relative, absolute or versioned: the same order
    for resource, where in _service_requests(entries):  # the others are read too (for context): typed alike
        check_read_elements(resource, where)
    chosen = [OrderSource(r, where, True) for r, where in _service_requests(entries) if _reference(r) in selected]
    return _with_orders(request, chosen, entries)


def order_dispatch_context(request: HookRequest) -> HookRequest:
    context = request.context
    refs = context.get("dispatchedOrders")
    if "order" in context and not _is_reference(context["order"]):
        raise RequestError("'context.order' must be a reference (Type/id)", "context.order")
    if "dispatchedOrders" not in context and "order" in context:
        refs = [context["order"]]  # the pre-publication context (and Inferno's CRD test kit) sends one 'order'
    if "fulfillmentTasks" not in context and isinstance(context.get("task"), dict):
        context = {**context, "fulfillmentTasks": [context["task"]]}
    if not (isinstance(refs, list) and refs and all(_is_reference(r) for r in refs)):
        raise RequestError("'context.dispatchedOrders' must be a non-empty list of references (Type/id)",
                           "context.dispatchedOrders")
    performer = context.get("performer")
    if not isinstance(performer, str) or not performer.strip():
        raise RequestError("Missing required field 'context.performer' (a reference)", "context.performer")
    tasks = context.get("fulfillmentTasks")
    if "fulfillmentTasks" in context and not (isinstance(tasks, list) and all(isinstance(t, dict) for t in tasks)):
        raise RequestError("'context.fulfillmentTasks' must be a list of Task resources", "context.fulfillmentTasks")
    wanted = list(dict.fromkeys(_local(r) for r in refs))  # an order listed twice (or absolute and relative) once
    found: dict[str, OrderSource] = {}
    for key, value in request.prefetch.items():
        for i, resource in enumerate(_bundle_resources(value)):
            ref = _reference(resource)
            if ref in wanted and ref not in found and resource.get("resourceType") == "ServiceRequest":
                found[ref] = OrderSource(resource, f"prefetch.{key}.entry[{i}].resource", False)
    orders = [found[r] for r in wanted if r in found]
    missing = tuple(r for r in dict.fromkeys(wanted) if r not in found and r.startswith("ServiceRequest/"))
    request = _with_orders(replace(request, context=context), orders, [])
    return replace(request, dispatched=tuple(wanted), missing_orders=missing, performer=performer.strip())


def _is_reference(value: Any) -> bool:
    return isinstance(value, str) and "/" in value.strip("/")


def _draft_entries(context: dict[str, Any]) -> list[Any]:
    bundle = context.get("draftOrders")
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise RequestError("'context.draftOrders' must be a FHIR Bundle", "context.draftOrders")
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise RequestError("'context.draftOrders.entry' must be a list", "context.draftOrders.entry")
    for i, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or ("resource" in entry and not (
                isinstance(resource, dict) and isinstance(resource.get("resourceType"), str))):
            raise RequestError("Each draftOrders entry must be an object whose 'resource' is a FHIR resource",
                               f"context.draftOrders.entry[{i}]")
    first: dict[str, tuple[int, dict[str, Any]]] = {}  # a Bundle holds one version of a resource
    for i, entry in enumerate(entries):
        resource = entry.get("resource")
        if resource is None or not identified(resource):
            continue
        seen = first.setdefault(_reference(resource), (i, resource))
        if seen[1] != resource:
            raise RequestError(f"draftOrders holds two different versions of {_reference(resource)} (entries "
                               f"{seen[0]} and {i}); a Bundle holds one version of a resource",
                               f"context.draftOrders.entry[{i}].resource")
    return entries


def _service_requests(entries: list[Any]) -> Iterator[tuple[dict[str, Any], str]]:
    """Each draft ServiceRequest once (_draft_entries made sure a repeated one is the same order)."""
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and resource.get("resourceType") == "ServiceRequest":
            if identified(resource):
                if _reference(resource) in seen:
                    continue
                seen.add(_reference(resource))
            yield resource, f"context.draftOrders.entry[{i}].resource"  # other types are passed over silently


def _with_orders(request: HookRequest, orders: list[OrderSource], entries: list[Any]) -> HookRequest:
    for source in orders:
        check_read_elements(source.resource, source.location)
    carried = tuple(_all_resources(entries, request.prefetch, request.context.get("fulfillmentTasks")))
    return replace(request, orders=tuple(orders), resources=carried)


def _all_resources(entries: list[Any], prefetch: dict[str, Any], tasks: Any) -> Iterator[dict[str, Any]]:
    for e in entries:
        if isinstance(e, dict) and isinstance(e.get("resource"), dict):
            yield e["resource"]
    for value in prefetch.values():
        yield from _bundle_resources(value)
    if isinstance(tasks, list):
        yield from (t for t in tasks if isinstance(t, dict))


def _bundle_resources(value: Any) -> Iterator[dict[str, Any]]:
    """The resources of a prefetch value: a Bundle's entries, or the resource itself."""
    if not isinstance(value, dict):
        return
    if value.get("resourceType") == "Bundle":
        entries = value.get("entry")
        for e in entries if isinstance(entries, list) else []:
            if isinstance(e, dict) and isinstance(e.get("resource"), dict):
                yield e["resource"]
    elif isinstance(value.get("resourceType"), str):
        yield value


def _reference(resource: dict[str, Any]) -> str:
    rid = resource.get("id")
    kind = str(resource.get("resourceType"))
    return f"{kind}/{rid}" if isinstance(rid, str) and rid else kind


def _local(reference: str) -> str:
    """'https://ehr/fhir/ServiceRequest/1', 'ServiceRequest/1/_history/2' and 'ServiceRequest/1' all ->
    'ServiceRequest/1' (a version names the same order)."""
    parts = reference.strip().rstrip("/").split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    return "/".join(parts[-2:])


# ---------------------------------------------------------------- the elements read to classify an order

# Every order is checked against this (pydantic-core, microseconds), so the classification never reads
# junk; the orders the policy judges are then validated in full by fhir.resources (validate_order).
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
    end: _DateTime


@with_config(_STRICT)
class _Repeat(TypedDict, total=False):
    boundsPeriod: _Period


@with_config(_STRICT)
class _Timing(TypedDict, total=False):
    event: list[_DateTime]
    repeat: _Repeat


@with_config(_STRICT)
class _ReadElements(TypedDict, total=False):
    id: _String
    status: _Code
    intent: _Code
    doNotPerform: bool
    code: _CodeableConcept
    orderDetail: list[_CodeableConcept]
    category: list[_CodeableConcept]
    reasonCode: list[_CodeableConcept]
    reasonReference: list[_Reference]
    occurrenceDateTime: _DateTime
    occurrencePeriod: _Period
    occurrenceTiming: _Timing
    instantiatesCanonical: list[_String]
    instantiatesUri: list[_String]
    contained: list[dict[str, Any]]
    extension: list[dict[str, Any]]


READ_ELEMENTS: TypeAdapter[_ReadElements] = TypeAdapter(_ReadElements)


def check_read_elements(resource: dict[str, Any], where: str) -> None:
    try:
        READ_ELEMENTS.validate_python(resource)
    except ValidationError as exc:
        _raise_first(exc, where)


def _raise_first(exc: ValidationError, where: str) -> NoReturn:
    path, message = first_problem(exc)
    raise RequestError(f"Invalid ServiceRequest: {path.lstrip('.')}: {message}", where + path) from exc


def _json_form_problem(node: Any) -> tuple[str, str] | None:
    """Where FHIR JSON's form is broken, and how: a null (allowed only inside primitive arrays), a
    primitive's ``_element`` that is not an object (or, for an array, a list of objects and nulls), or
    a name no FHIR element has. fhir.resources crashes on some of these ("_status": "true").

    Empty arrays and objects are tolerated on the way in (the public sandbox sends ``coding: [{}]``);
    the renderer prunes them from anything it sends back."""
    found = _form_problem(node)
    if found is None:
        return None
    steps, what = found
    return "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in reversed(steps)), what


def _form_problem(node: Any) -> tuple[list[str | int], str] | None:
    """(the path to the problem, innermost step first; what it is). Builds nothing on the way down."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in items:
        if value is None and not isinstance(node, list):
            return [key], "is null, which FHIR JSON does not allow"
        if isinstance(key, str) and "__" in key:  # fhir.resources also reads its Python names (status__ext)
            return [key], "is not a FHIR element"
        if isinstance(key, str) and key.startswith("_") and not (
                isinstance(value, dict) or (isinstance(value, list)
                                            and all(v is None or isinstance(v, dict) for v in value))):
            return [key], "must be an object (a primitive's id and extensions), or a list of objects and nulls"
        if isinstance(value, (dict, list)) and (found := _form_problem(value)) is not None:
            found[0].append(key)
            return found
    return None


def validate_order(resource: dict[str, Any], where: str) -> dict[str, Any]:
    """Validate in full an order the policy judges and return it as it will be echoed (``pruned``);
    raises RequestError.

    An order in the common form is settled by fast_validation (~7 us); any other is validated by
    fhir.resources (~0.1 ms), which words the error. Orders the policy has nothing to say about were
    only checked in the elements read to classify them: a flaw in, say, a blood count's ``note`` is no
    reason to withhold a liquid-biopsy verdict."""
    if (problem := _json_form_problem(resource) or _order_problem(resource)) is not None:
        at, what = problem
        raise RequestError(f"Invalid ServiceRequest: {at.lstrip('.')} {what}", where + at)
    order = pruned(resource)  # validated as it will be echoed: empties dropped, codes trimmed (compared trimmed)
    if plainly_valid(order):
        return order
    try:
        ServiceRequest.model_validate(order)
    except ValidationError as exc:
        _raise_first(exc, where)
    except (AttributeError, TypeError, KeyError, IndexError) as exc:  # the library failed on this input
        log.warning("fhir.resources failed on an order (%s: %s)", type(exc).__name__, exc)
        raise RequestError("Invalid ServiceRequest: not FHIR JSON that can be read", where) from exc
    return order


def _order_problem(resource: dict[str, Any]) -> tuple[str, str] | None:
    """What fhir.resources lets through in a judged order but FHIR does not allow: an id over 64
    characters (fhir.resources allows 255), a period that ends before it starts (FHIR per-1)."""
    rid = resource.get("id")
    if isinstance(rid, str) and not FHIR_ID.fullmatch(rid):
        return ".id", f"{rid[:70]!r} is not a FHIR id ([A-Za-z0-9-.], at most 64 characters)"
    timing = resource.get("occurrenceTiming")
    repeat = timing.get("repeat") if isinstance(timing, dict) else None
    for at, period in ((".occurrencePeriod", resource.get("occurrencePeriod")),
                       (".occurrenceTiming.repeat.boundsPeriod", repeat.get("boundsPeriod") if isinstance(repeat, dict)
                        else None)):
        if isinstance(period, dict) and isinstance(period.get("start"), str) and isinstance(period.get("end"), str):
            with contextlib.suppress(ValueError, TypeError):  # an unreadable date is fhir.resources' to word
                if _after(period["start"], period["end"]):
                    return at, f"starts ({period['start']}) after it ends ({period['end']})"
    return None


def _after(start: str, end: str) -> bool:
    """FHIR per-1 broken: instants compared where both have a time with its zone, else calendar days
    (a start day after the end's last day)."""
    if "T" in start and "T" in end:
        return datetime.fromisoformat(start.replace("Z", "+00:00")) > datetime.fromisoformat(end.replace("Z", "+00:00"))
    return day_range(start)[0] > day_range(end)[1]


# ---------------------------------------------------------------- orders


class ConditionIndex:
    """Conditions an order's reasonReference may point at: in draftOrders, in prefetch, or contained."""

    def __init__(self, resources: Iterable[dict[str, Any]]) -> None:
        self.by_ref: dict[str, dict[str, Any]] = {}
        for res in resources:
            if res.get("resourceType") == "Condition" and isinstance(res.get("id"), str) and res["id"]:
                self.by_ref[f"Condition/{res['id']}"] = res

    def codings(self, reference: Any, order: dict[str, Any]) -> list[dict[str, Any]]:
        if not isinstance(reference, str):
            return []
        if reference.startswith("#"):
            target = next((c for c in order.get("contained") or []
                           if isinstance(c, dict) and c.get("id") == reference[1:]), None)
        else:
            target = self.by_ref.get(_local(reference))
        return _codings(target.get("code")) if isinstance(target, dict) else []

    def categories(self, knowledge: Knowledge) -> frozenset[str]:
        return frozenset(icd10_category(c["code"]) for cond in self.by_ref.values()
                         for c in _codings(cond.get("code"))
                         if _system(c, knowledge) == knowledge.icd10_system and isinstance(c.get("code"), str)
                         and c["code"].strip())


def to_order(source: OrderSource, knowledge: Knowledge, today: date, conditions: ConditionIndex) -> Order:
    resource = source.resource
    code = resource.get("code") or {}
    codings = [c for c in code.get("coding") or [] if isinstance(c, dict)]
    details = [cc for cc in resource.get("orderDetail") or [] if isinstance(cc, dict)]
    coded = tuple(dict.fromkeys(
        (_system(c, knowledge), str(c["code"]).strip().upper(), str(c.get("display") or ""))
        for c in codings if c.get("code")))
    names = _texts([code.get("text"), *(c.get("display") for c in codings)])
    more = _texts([*(cc.get("text") for cc in details), *(c.get("display") for cc in details for c in _codings(cc)),
                   *(resource.get("instantiatesCanonical") or ()), *(resource.get("instantiatesUri") or ())])
    text = " | ".join(dict.fromkeys([*names, *more]))

    reasons = [cc for cc in resource.get("reasonCode") or [] if isinstance(cc, dict)]
    reason_codings = [c for cc in reasons for c in _codings(cc)]
    for ref in resource.get("reasonReference") or []:
        if isinstance(ref, dict):
            reason_codings += conditions.codings(ref.get("reference"), resource)
    diagnoses = tuple(dict.fromkeys(
        Diagnosis(icd10_category(c["code"]), str(c["code"]).strip(), str(c.get("display") or ""))
        for c in reason_codings
        if _system(c, knowledge) == knowledge.icd10_system and isinstance(c.get("code"), str) and c["code"].strip()))
    purpose_codings = reason_codings + [c for cc in resource.get("category") or [] if isinstance(cc, dict)
                                        for c in _codings(cc)]
    purposes = frozenset(str(c.get("code")).strip() for c in purpose_codings
                         if c.get("system") == knowledge.purpose_system and c.get("code"))
    held = tuple(h for ext in extensions_on(resource) if (h := held_assertion(ext)) is not None)
    return Order(
        reference=source.reference, codings=coded, text=text, name=" | ".join(names),
        window=date_window(resource, today),
        diagnoses=diagnoses, purposes=purposes, status=str(resource.get("status") or ""),
        intent=str(resource.get("intent") or ""), do_not_perform=resource.get("doNotPerform") is True,
        draft=source.draft, held=held, resource=resource,
        has_code_text=isinstance(code.get("text"), str) and bool(code["text"].strip()),
    )


def _texts(values: Iterable[Any]) -> list[str]:
    return list(dict.fromkeys(str(t).strip() for t in values if isinstance(t, str) and t.strip()))


def _system(coding: dict[str, Any], knowledge: Knowledge) -> str:
    system = coding.get("system")
    return knowledge.canonical_system(system) if isinstance(system, str) else ""


def date_window(resource: dict[str, Any], today: date) -> DateWindow:
    """When the service will be performed, and in words where that came from. A date the order
    does not give is not invented: the window is then open, from today on."""
    when = resource.get("occurrenceDateTime")
    if isinstance(when, str):
        start, end = day_range(when)
        return DateWindow(start, end, "the order's occurrenceDateTime", True)
    period = resource.get("occurrencePeriod")
    if isinstance(period, dict) and (period.get("start") or period.get("end")):
        return _period_window(period, today, "the order's occurrencePeriod")
    timing = resource.get("occurrenceTiming")
    if isinstance(timing, dict):
        events = [day_range(e) for e in timing.get("event") or [] if isinstance(e, str)]
        if events:
            first, last = min(s for s, _ in events), max(e for _, e in events)
            return DateWindow(first, last, "the order's occurrenceTiming", True)
        bounds = (timing.get("repeat") or {}).get("boundsPeriod")
        if isinstance(bounds, dict) and (bounds.get("start") or bounds.get("end")):
            return _period_window(bounds, today, "the order's occurrenceTiming bounds")
    return DateWindow(today, None, "the order has no occurrence[x]", False)


def _period_window(period: dict[str, Any], today: date, basis: str) -> DateWindow:
    start = day_range(period["start"])[0] if isinstance(period.get("start"), str) else None
    end = day_range(period["end"])[1] if isinstance(period.get("end"), str) else None
    if start is None:
        assert end is not None
        start = min(today, end)  # "by" a date: from today until then
    return DateWindow(start, end, basis, True)  # no end: the period is ongoing (FHIR Period), not one day


def day_range(value: str) -> tuple[date, date]:
    """The calendar days a FHIR date/dateTime covers, as written (local to the sender): a day, or
    for a partial date (YYYY or YYYY-MM) its first to its last day."""
    head = value.strip()[:10]
    if len(head) == 4:
        year = int(head)
        return date(year, 1, 1), date(year, 12, 31)
    if len(head) == 7:
        year, month = int(head[:4]), int(head[5:7])
        return date(year, month, 1), date(year, month, calendar.monthrange(year, month)[1])
    day = date.fromisoformat(head)
    return day, day


def icd10_category(code: str) -> str:
    return str(code).strip().upper().replace(".", "")[:3]


def _codings(concept: Any) -> list[dict[str, Any]]:
    """The codings of a CodeableConcept from data we do not validate (prefetch), tolerating junk."""
    codings = concept.get("coding") if isinstance(concept, dict) else None
    return [c for c in codings if isinstance(c, dict)] if isinstance(codings, list) else []


# ---------------------------------------------------------------- coverage


def coverage_resources(value: Any) -> list[dict[str, Any]] | None:
    """The Coverage resources of a prefetch value, or None when it must be fetched (missing, null,
    an OperationOutcome, or anything that is neither a Coverage nor a Bundle)."""
    if not isinstance(value, dict):
        return None
    if value.get("resourceType") == "Coverage":
        return [value]
    if value.get("resourceType") == "Bundle":
        return [r for r in _bundle_resources(value) if r.get("resourceType") == "Coverage"]
    return None


def coverage_records(coverages: list[dict[str, Any]], context_resources: Iterable[dict[str, Any]],
                     knowledge: Knowledge) -> tuple[CoverageRecord, ...]:
    """What decides membership and eligibility, read from each Coverage (and the payor Organizations
    the request carries, contained or included). A Coverage without an id cannot be referred to and
    is left out; one with an unreadable element is kept with a problem (its verdict: indeterminate)."""
    organizations = {f"Organization/{r['id']}": r for r in (*context_resources, *coverages)
                     if r.get("resourceType") == "Organization" and isinstance(r.get("id"), str)}
    records = []
    seen: dict[str, dict[str, Any]] = {}
    for coverage in coverages:
        rid = coverage.get("id")
        if not isinstance(rid, str) or not rid.strip():
            continue
        if not FHIR_ID.fullmatch(rid.strip()):
            raise RequestError(f"Coverage id {rid[:70]!r} is not a FHIR id ([A-Za-z0-9-.], at most 64)",
                               "prefetch.coverage")
        reference = f"Coverage/{rid.strip()}"
        if reference in seen:  # the same Coverage found twice (prefetch and a search, say) is one Coverage
            if seen[reference] != coverage:
                raise RequestError(f"Two different versions of {reference} were given; a Coverage is one resource",
                                   "prefetch.coverage")
            continue
        seen[reference] = coverage
        records.append(_coverage_record(coverage, reference, organizations))
    return tuple(records)


def _coverage_record(c: dict[str, Any], reference: str, organizations: dict[str, dict[str, Any]]) -> CoverageRecord:
    problems: list[str] = []
    status = c.get("status")
    if not isinstance(status, str):
        problems.append("status is missing or not a code")
        status = ""
    order = c.get("order")
    if order is not None and not (isinstance(order, int) and not isinstance(order, bool) and order > 0):
        problems.append("order is not a positive integer")
        order = None
    start = end = None
    period = c.get("period")
    if period is not None:
        try:
            if not isinstance(period, dict) or not all(isinstance(period.get(k, ""), str) for k in ("start", "end")):
                raise ValueError("not a Period")
            start = day_range(period["start"])[0] if "start" in period else None
            end = day_range(period["end"])[1] if "end" in period else None
        except ValueError:  # also a date that does not exist (2025-02-30) or is not a date at all
            problems.append("period is not a FHIR Period of dates")
            start = end = None
    identifiers: list[tuple[str, str]] = []
    names: list[str] = []
    payors = c.get("payor")
    if payors is not None and not isinstance(payors, list):
        problems.append("payor is not a list")
        payors = []
    for payor in payors or []:
        if not isinstance(payor, dict):
            problems.append("payor entry is not a Reference")
            continue
        identifiers += _identifiers([payor.get("identifier")])
        if isinstance(payor.get("display"), str):
            names.append(payor["display"])
        ref = payor.get("reference")
        org = None
        if isinstance(ref, str):
            contained = _list_of(c.get("contained"))
            org = (next((r for r in contained if isinstance(r, dict) and r.get("id") == ref[1:]), None)
                   if ref.startswith("#") else organizations.get(_local(ref)))
        if isinstance(org, dict):
            identifiers += _identifiers(_list_of(org.get("identifier")))
            names += [n for n in (org.get("name"), *_list_of(org.get("alias"))) if isinstance(n, str)]
    plan_names: list[str] = []
    plan_values: list[str] = []
    classes = c.get("class")
    for cls in classes if isinstance(classes, list) else []:
        if isinstance(cls, dict):
            # An enrollment code is a plan's; a group, subgroup or pharmacy value of the same digits is not.
            kind = cls["type"] if isinstance(cls.get("type"), dict) else {}
            kinds = [c.get("code") for c in _codings(kind)] + [str(kind.get("text", "")).strip().lower()]
            if isinstance(cls.get("value"), str) and any(isinstance(k, str) and k in PLAN_CLASSES for k in kinds):
                plan_values.append(cls["value"])
            plan_names += [v for v in (cls.get("name"), cls.get("value")) if isinstance(v, str)]
    coverage_type = c.get("type")
    if isinstance(coverage_type, dict):
        plan_names += [t for t in (coverage_type.get("text"), *(x.get("display") for x in _codings(coverage_type)))
                       if isinstance(t, str)]
    return CoverageRecord(reference, status, order, start, end, tuple(dict.fromkeys(identifiers)),
                          tuple(dict.fromkeys(n.strip() for n in names if n.strip())),
                          tuple(dict.fromkeys(n.strip() for n in plan_names if n.strip())),
                          tuple(dict.fromkeys(v.strip() for v in plan_values if v.strip())), "; ".join(problems))


def _identifiers(items: Iterable[Any]) -> list[tuple[str, str]]:
    out = []
    for i in items:
        if isinstance(i, dict) and isinstance(i.get("value"), str) and i["value"].strip():
            system = i.get("system")
            out.append((system.strip() if isinstance(system, str) else "", i["value"].strip()))
    return out


def _list_of(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
