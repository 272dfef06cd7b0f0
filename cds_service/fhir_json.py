"""FHIR JSON as this service sends it back: no empty values, codes trimmed, decimals as written."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from typing import Any

import orjson

# A JSON number whose float would not print as written: a fraction ending in 0 (1.50) or longer than a
# double keeps (0.12345678901234567). Searched in the raw body on every call, so it leads with the '.'
# (~1 us a KB; a match inside a string only costs the slower reading below). Exponents (1e3) and
# integer parts beyond 15 digits are not looked for: a class led by a digit costs ~15 us a KB here.
_INEXACT_NUMBER = re.compile(rb"\.[0-9]*(?:0[,}\]\s]|[0-9]{16})")


class ExactNumber(float):
    """A decimal read from a request with its text, so that it is sent back as written: FHIR decimals
    have "implicit precision" (1.50 is not 1.5) and an echoed order may change nothing (CRD resp-37)."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> ExactNumber:
        number = super().__new__(cls, text)
        number.text = text
        return number


def may_have_inexact_numbers(data: bytes) -> bool:
    return _INEXACT_NUMBER.search(data) is not None


def loads(data: str | bytes) -> Any:
    """orjson.loads, keeping decimals as written where a float would not print them so (see ``dumps``)."""
    value = orjson.loads(data)
    if may_have_inexact_numbers(data.encode() if isinstance(data, str) else data):
        return json.loads(data, parse_int=read_integer, parse_float=read_number)
    return value


def read_integer(text: str) -> float | int:
    """``parse_int`` for the json module: as orjson reads it (an integer beyond 64 bits becomes a float)."""
    value = int(text)
    return value if -(2**63) <= value < 2**64 else float(text)


def read_number(text: str) -> float:
    """``parse_float`` for the json module: a float, or an ExactNumber where the float would print differently."""
    number = float(text)
    return number if repr(number) == text else ExactNumber(text)


def _as_written(value: Any) -> Any:
    if isinstance(value, ExactNumber):
        return orjson.Fragment(value.text)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# orjson.dumps that writes ExactNumbers as they were read (every answer or record of a request's data);
# a partial, not a function around it: it runs several times a call, and a Python frame costs more than it.
dumps: Callable[..., bytes] = functools.partial(orjson.dumps, default=_as_written)


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
