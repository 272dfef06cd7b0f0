"""Decimals sent back as written: FHIR decimals have implicit precision (1.50 is not 1.5), and an order
echoed in a system action may change nothing but its coverage-information (CRD resp-37)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from cds_service import fhir_json
from tests.conftest import SIGN, LiveService, hook_request, service_request

AS_WRITTEN = ["1.50", "0.12345678901234567890123", "-0.0010", "100.0", "3.000", "2.1234567890123456789"]


@pytest.mark.parametrize("text", AS_WRITTEN)
def test_a_decimal_a_float_would_print_differently_is_kept_as_written(text: str) -> None:
    data = f'{{"value": {text}, "list": [{text}, 1]}}'.encode()
    value = fhir_json.loads(data)
    assert value["value"] == float(text)  # still a number for everything that reads it
    assert fhir_json.dumps(value) == f'{{"value":{text},"list":[{text},1]}}'.encode()


def test_plain_bodies_stay_on_the_fast_reader() -> None:
    """The slow reader only where a number needs it: version strings and ordinary decimals do not."""
    plain = b'{"fhirVersion": "4.0.1", "version": "1.0", "value": 1.5, "n": 12, "id": "1234567890123456"}'
    assert not fhir_json.may_have_inexact_numbers(plain)
    assert fhir_json.loads(plain) == orjson.loads(plain)
    assert fhir_json.may_have_inexact_numbers(b'{"value": 1.50}')
    assert fhir_json.may_have_inexact_numbers(b'[1.0]') and fhir_json.may_have_inexact_numbers(b'[1.0\n]')


def test_anything_else_orjson_cannot_write_is_still_refused() -> None:
    with pytest.raises(TypeError):
        fhir_json.dumps({"x": object()})


def _order_with_quantity(value: str) -> tuple[dict[str, Any], bytes]:
    request = hook_request(service_request("0530U", "2025-03-03"))
    order = request["context"]["draftOrders"]["entry"][0]["resource"]
    order["quantityQuantity"] = {"value": 0.0, "unit": "mL"}
    text = json.dumps(request).replace('"value": 0.0', f'"value": {value}')
    return request, text.encode()


@pytest.mark.parametrize("value", ["1.50", "0.12345678901234567890123"])
def test_the_echoed_order_keeps_its_decimals_and_a_retry_too(cds: LiveService, value: str) -> None:
    _, data = _order_with_quantity(value)
    answers = [cds.post_raw(f"/cds-services/{SIGN}", data, "application/json") for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 200]
    first, retry = (a.content for a in answers)
    assert f'"quantityQuantity":{{"value":{value},"unit":"mL"}}'.encode() in first
    assert retry == first  # the stored answer, read back from the record, is the same bytes


def test_integers_beyond_64_bits_read_as_orjson_reads_them_on_the_slow_path_too() -> None:
    data = b'[-9223372036854775809, 18446744073709551616, 1.50]'
    assert fhir_json.loads(data)[:2] == orjson.loads(data)[:2]
    assert fhir_json.dumps(fhir_json.loads(data)).endswith(b",1.50]")  # writable: no integer orjson refuses
