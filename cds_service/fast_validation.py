"""A fast first check of a ServiceRequest in its common form, before fhir.resources' full validation.

fhir.resources builds a model object per element and runs Python validators on each (~0.1 ms for a
plain one-code order, ~0.15 ms inside a call: a tenth of a listed order's cost). Most orders use a
small part of ServiceRequest: codes, references, dates, identifiers, notes. For those elements this
module builds one pydantic-core validator of plain dicts, made from fhir.resources' own field
definitions (the same JSON names, required elements and primitive types with their patterns), with no
model objects. It only ever answers "valid" or "not sure":

- valid here implies valid for fhir.resources: every element it accepts is validated by the same
  primitive type, nested elements only of the kinds listed below, unknown keys refused, required
  elements required, at most one element of a choice ([x]) group, no nulls in lists, booleans strict;
- anything else (an extension, ``contained``, a primitive's ``_element``, a quantity, a
  failure) is "not sure", and fhir.resources decides and words the error as before.

tests/test_fast_validation.py checks the implication on generated and mutated orders.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal, NotRequired, Required

from fhir.resources.R4B.annotation import Annotation
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.coding import Coding
from fhir.resources.R4B.identifier import Identifier
from fhir.resources.R4B.meta import Meta
from fhir.resources.R4B.period import Period
from fhir.resources.R4B.reference import Reference
from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import AfterValidator, ConfigDict, Strict, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

# The elements of the common form, per FHIR type (JSON names). Complex elements may only be of these
# types, without cycles; a required element of a type must be listed (build refuses otherwise).
COMMON_ELEMENTS: dict[type, tuple[str, ...]] = {
    ServiceRequest: ("id", "meta", "identifier", "instantiatesCanonical", "instantiatesUri", "basedOn",
                     "replaces", "requisition", "status", "intent", "category", "priority", "doNotPerform",
                     "code", "orderDetail", "subject", "encounter", "occurrenceDateTime", "occurrencePeriod",
                     "authoredOn", "requester", "performerType", "performer", "locationCode", "locationReference",
                     "reasonCode", "reasonReference", "insurance", "supportingInfo", "specimen", "bodySite", "note",
                     "patientInstruction", "relevantHistory"),
    Meta: ("versionId", "lastUpdated", "source", "profile", "security", "tag"),
    Identifier: ("use", "type", "system", "value", "period"),  # not its assigner: Reference <-> Identifier
    Reference: ("reference", "type", "display"),
    CodeableConcept: ("coding", "text"),
    Coding: ("system", "version", "code", "display", "userSelected"),
    Period: ("start", "end"),
    Annotation: ("authorReference", "authorString", "time", "text"),
}
# The model validators every fhir.resources type runs (nulls, required primitives, choice groups), which
# the rules above stand in for; a type with any other validator is not fast-checked at all.
_BASE_VALIDATORS = {"reject_null_complex_elements", "validate_after_model_construction"}


def is_required(field: FieldInfo) -> bool:
    """Required in FHIR: a required complex element, or a primitive fhir.resources marks element_required."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    return field.is_required() or extra.get("element_required") is True


def without_none(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


class _Builder:
    def __init__(self) -> None:
        self.built: dict[type, Any] = {}

    def of(self, model: type) -> Any:
        if model not in self.built:
            self.built[model] = self._typed_dict(model)
        return self.built[model]

    def _typed_dict(self, model: Any) -> Any:
        if set(model.__pydantic_decorators__.model_validators) != _BASE_VALIDATORS or \
                model.__pydantic_decorators__.field_validators:
            raise TypeError(f"{model.__name__} has validators of its own")
        fields = {f.alias or name: f for name, f in model.model_fields.items()}
        wanted = COMMON_ELEMENTS[model]
        keys: dict[str, Any] = {}
        choices: dict[str, list[str]] = {}
        for name in wanted:
            f = fields[name]
            extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
            value = self._value(f.annotation)
            keys[name] = Required[value] if is_required(f) else NotRequired[value]
            if isinstance(extra.get("one_of_many"), str):
                if extra.get("one_of_many_required"):  # "exactly one of" is not checked here
                    raise TypeError(f"{model.__name__}.{name} belongs to a required choice group")
                choices.setdefault(extra["one_of_many"], []).append(name)
        for name, f in fields.items():
            if is_required(f) and name not in wanted:
                raise TypeError(f"{model.__name__}.{name} is required but not in the common form")
        if model is ServiceRequest:
            keys["resourceType"] = Required[Literal["ServiceRequest"]]
        shape = TypedDict(f"Common{model.__name__}", keys)  # type: ignore[misc]
        shape.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]
        groups = [names for names in choices.values() if len(names) > 1]
        if not groups:
            return shape
        return Annotated[shape, AfterValidator(_at_most_one_of(groups))]

    def _value(self, annotation: Any) -> Any:
        annotation = without_none(annotation)
        if typing.get_origin(annotation) in (list, typing.List):  # noqa: UP006 (fhir.resources' own spelling)
            return list[self._value(typing.get_args(annotation)[0])]  # type: ignore[misc]
        if annotation is bool:
            return Annotated[bool, Strict()]
        if typing.get_origin(annotation) is Annotated:  # a FHIR primitive: its own type, patterns and all
            return annotation
        model = model_of(annotation)
        if model is None or model not in COMMON_ELEMENTS:
            raise LookupError(annotation)
        return self.of(model)


def model_of(annotation: Any) -> type | None:
    """The fhir.resources class a complex element's annotation (e.g. ``abc.CodeableConceptType``) names."""
    name = getattr(annotation, "__name__", "")
    if not name.endswith("Type"):
        return None
    return next((m for m in COMMON_ELEMENTS if m.__name__ == name[: -len("Type")]), None)


def _at_most_one_of(groups: list[list[str]]) -> Any:
    def check(value: dict[str, Any]) -> dict[str, Any]:
        for names in groups:
            if sum(name in value for name in names) > 1:
                raise ValueError(f"at most one of {', '.join(names)}")
        return value
    return check


def _build() -> TypeAdapter[Any] | None:
    try:
        return TypeAdapter(_Builder().of(ServiceRequest))
    except (TypeError, LookupError, KeyError):
        return None  # fhir.resources changed shape: every order takes the full validation


_COMMON_FORM = _build()


def plainly_valid(resource: dict[str, Any]) -> bool:
    """True when the order is in the common form and valid; False means only "let fhir.resources decide"."""
    if _COMMON_FORM is None:
        return False
    try:
        _COMMON_FORM.validate_python(resource)
    except (ValidationError, ValueError, TypeError):
        return False
    return True
