"""The fast check of ServiceRequests in their common form (cds_service/fast_validation.py).

Its one promise: an order it calls valid is valid for fhir.resources. Checked on thousands of orders
generated from fhir.resources' own field definitions, most of them mutated (junk values, unknown keys,
missing required elements, two elements of one choice group, nulls, look-alike dates and codes)."""

from __future__ import annotations

import contextlib
import copy
import random
import typing
from typing import Annotated, Any

import pytest
from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import ValidationError

from cds_service import fast_validation
from cds_service.fast_validation import COMMON_ELEMENTS, is_required, model_of, plainly_valid, without_none
from cds_service.intake import RequestError, validate_order
from tests.conftest import service_request

# Plausible values per FHIR primitive (by the name of fhir.resources' type), then junk for any of them.
PLAUSIBLE = {
    "Code": ["draft", "order", "routine", "active", "a b", "a  b", " draft", "draft ", "x\ty"],
    "Uri": ["http://www.ama-assn.org/go/cpt", "urn:uuid:0c3e1d4a-0000-4000-8000-000000000001", "a b", "Patient"],
    "Canonical": ["http://example.org/PlanDefinition/x", "http://example.org/x|1.0", "a b"],
    "Id": ["sr-1", "A.b-9", "a b", "x" * 64, "x" * 65, "ü", "sr_1"],
    "String": ["Patient/p1", "LiquidHALLMARK", "a\u00a0b", "line\nbreak", " lead", "x", "\u2028"],
    "Markdown": ["**note**", "plain", "a\u00a0b"],
    "DateTime": ["2025-03-03", "2025", "2025-03", "2025-03-03T10:00:00Z", "2025-03-03T10:00:00+01:00",
                 "2025-02-30", "2025-13-01", "2025-03-03T10:00:00", "2025-03-03T24:00:00Z",
                 "2025-03-03T10:00:60Z", "2025-03-03T10:00:00.1234567Z", "0000-01-01", "2025-3-3",
                 "2025-03-03T10:00Z", "2025-03-03 10:00:00Z", "20250303", "2025-03-03T10:00:00-14:00"],
    "Instant": ["2025-03-03T10:00:00Z", "2025-03-03T10:00:00.123+02:00", "2025-03-03", "2025-03-03T10:00:00"],
}
JUNK: list[Any] = [1, 0, -1, 1.5, True, False, None, [], {}, "", " ", ["x"], {"x": 1}, "true", 10**20]
UNKNOWN_KEYS = ["foo", "extension", "_status", "status__ext", "fhir_comments", "resource_type", "contained",
                "modifierExtension", "quantityQuantity", "asNeededBoolean", "_id", "Status"]


def _primitive(annotation: Any, rng: random.Random) -> Any:
    kind = type(typing.get_args(annotation)[1]).__name__
    if rng.random() < 0.02:
        return rng.choice(JUNK)
    pool = PLAUSIBLE.get(kind, PLAUSIBLE["String"])
    return pool[0] if rng.random() < 0.9 else rng.choice(pool)  # mostly the plainly valid first value


def _value(annotation: Any, rng: random.Random) -> Any:
    annotation = without_none(annotation)
    if typing.get_origin(annotation) in (list, typing.List):  # noqa: UP006
        items = [_value(typing.get_args(annotation)[0], rng) for _ in range(rng.choice((1, 1, 2, 0)))]
        if rng.random() < 0.05:
            items.append(None)
        return items
    if annotation is bool:
        return rng.choice([True, False, True, "true", 1, None]) if rng.random() < 0.3 else True
    if typing.get_origin(annotation) is Annotated:
        return _primitive(annotation, rng)
    return _element(model_of(annotation), rng)


def _element(model: Any, rng: random.Random) -> Any:
    if rng.random() < 0.03:
        return rng.choice(JUNK)
    fields = {f.alias or name: f for name, f in model.model_fields.items()}
    out: dict[str, Any] = {}
    for name in COMMON_ELEMENTS[model]:
        f = fields[name]
        if (is_required(f) and rng.random() < 0.97) or rng.random() < 0.2:
            out[name] = _value(f.annotation, rng)
    if rng.random() < 0.08:
        out[rng.choice(UNKNOWN_KEYS)] = rng.choice([*JUNK, "x", "true", "[1]", {"url": "http://x", "valueString": "y"},
                                                    {"extension": "x"}, {"extension": [None]}, {"id": 1}, [None, {}]])
    return out


def generated_order(rng: random.Random) -> Any:
    order = _element(ServiceRequest, rng)
    if isinstance(order, dict):
        order["resourceType"] = "ServiceRequest" if rng.random() < 0.97 else rng.choice(["Observation", "", None])
    return order


def fhir_resources_accepts(order: Any) -> bool:
    try:
        ServiceRequest.model_validate(copy.deepcopy(order))
    except (ValidationError, ValueError, TypeError, AttributeError):  # it crashes on some input (see below)
        return False
    return True


def test_valid_here_is_valid_for_fhir_resources_on_generated_orders() -> None:
    rng, n = random.Random(2267), 20_000
    fast = full = 0
    for i in range(n):
        order = generated_order(rng)
        ok_full = fhir_resources_accepts(order)
        ok_fast = plainly_valid(copy.deepcopy(order))
        assert not (ok_fast and not ok_full), f"order {i} passed the fast check only: {order!r}"
        fast += ok_fast
        full += ok_full
    # Not vacuous: most orders fhir.resources accepts are settled fast, and both kinds of outcome occur.
    assert 0.2 * n < full < 0.8 * n and fast > 0.6 * full, (fast, full)


def test_validation_answers_every_generated_order_with_a_verdict_or_a_request_error() -> None:
    """fhir.resources crashes (AttributeError) on a primitive's "_element" that is JSON text, e.g.
    "_status": "true"; validate_order must turn every order into a 400 or a pass, never a 500."""
    rng = random.Random(2268)
    for _ in range(3000):
        order = generated_order(rng)
        if not isinstance(order, dict):
            continue
        with contextlib.suppress(RequestError):
            validate_order(order, "draftOrders")


@pytest.mark.parametrize(("element", "words"), [
    ({"_status": "true"}, "must be an object"), ({"_status": "1"}, "must be an object"),
    ({"_status": "null"}, "must be an object"), ({"_instantiatesUri": ["x"]}, "must be an object"),
    ({"code": {"coding": [{"code": "0530U", "_system": "[1]"}]}}, "must be an object"),
    ({"status__ext": "true"}, "is not a FHIR element"),  # fhir.resources' Python name for _status
    ({"subject": {"reference": "Patient/p1", "display__ext": {}}}, "is not a FHIR element"),
])
def test_json_that_is_not_fhir_json_is_a_request_error(element: dict[str, Any], words: str) -> None:
    """Each of these made fhir.resources raise AttributeError: a 500 before."""
    with pytest.raises(RequestError, match=words):
        validate_order({**service_request("0530U", "2025-03-03"), **element}, "draftOrders")


def test_a_failure_inside_fhir_resources_is_a_request_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*_: Any, **__: Any) -> None:
        raise AttributeError("'bool' object has no attribute 'get'")

    monkeypatch.setattr("cds_service.intake.ServiceRequest.model_validate", crash)
    with pytest.raises(RequestError, match="not FHIR JSON that can be read"):
        validate_order(service_request("0530U", "2025-03-03", quantityQuantity={"value": 2}), "draftOrders")


@pytest.mark.parametrize("order", [
    service_request("0530U", "2025-03-03", rid="lb-1", icd=("C34.90",)),
    service_request("0242U", None, note=[{"text": "Plasma, 2 tubes", "time": "2025-03-03T09:00:00Z"}],
                    identifier=[{"system": "urn:oid:1.2.3", "value": "A-1", "type": {"text": "Placer"}}],
                    requester={"reference": "Practitioner/1", "display": "Dr X"}, authoredOn="2025-03-01",
                    occurrencePeriod={"start": "2025-03-03", "end": "2025-03-10"}, priority="routine",
                    category=[{"coding": [{"system": "http://snomed.info/sct", "code": "108252007",
                                           "display": "Laboratory procedure", "userSelected": True}]}],
                    meta={"profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-servicerequest"],
                          "lastUpdated": "2025-03-01T10:00:00Z", "versionId": "3"}),
])
def test_orders_as_ehrs_send_them_are_settled_fast(order: dict[str, Any]) -> None:
    assert plainly_valid(order)
    assert fhir_resources_accepts(order)


def test_a_common_order_never_reaches_fhir_resources(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: Any, **__: Any) -> None:
        raise AssertionError("fhir.resources was called")

    monkeypatch.setattr("cds_service.intake.ServiceRequest.model_validate", refuse)
    validate_order(service_request("0530U", "2025-03-03", icd=("C34.90",)), "draftOrders")


@pytest.mark.parametrize(("change", "expected"), [
    ({"occurrenceDateTime": "2025-02-30"}, "occurrenceDateTime"),  # the pattern passes, the calendar does not
    ({"status": 7}, "status"),
    ({"occurrencePeriod": {"start": "2025-03-03"}}, "occurrence"),  # two elements of one choice group
    ({"subject": {"reference": "Patient/p1", "foo": 1}}, "foo"),
])
def test_other_orders_get_fhir_resources_verdict_and_words(change: dict[str, Any], expected: str) -> None:
    order = {**service_request("0530U", "2025-03-03"), **change}
    assert not plainly_valid(order)
    with pytest.raises(RequestError) as caught:
        validate_order(order, "draftOrders")
    assert expected in str(caught.value), caught.value


def test_uncommon_but_valid_orders_still_pass() -> None:
    order = service_request("0530U", "2025-03-03", quantityQuantity={"value": 2},
                            extension=[{"url": "http://example.org/x", "valueString": "y"}])
    assert not plainly_valid(order)
    validate_order(order, "draftOrders")  # fhir.resources accepts it


def test_a_required_element_left_out_of_the_common_form_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(COMMON_ELEMENTS, ServiceRequest,
                        tuple(e for e in COMMON_ELEMENTS[ServiceRequest] if e != "intent"))
    with pytest.raises(TypeError, match="intent"):
        fast_validation._Builder().of(ServiceRequest)
    assert fast_validation._build() is None  # then every order takes the full validation


def test_a_required_choice_group_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    field = ServiceRequest.model_fields["occurrenceDateTime"]
    monkeypatch.setattr(field, "json_schema_extra", {**field.json_schema_extra, "one_of_many_required": True})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="required choice group"):
        fast_validation._Builder().of(ServiceRequest)


def test_a_type_with_validators_of_its_own_is_not_fast_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast_validation, "_BASE_VALIDATORS", {"reject_null_complex_elements"})
    assert fast_validation._build() is None
