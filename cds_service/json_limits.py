"""What no valid JSON this service reads contains: checked before anything else reads it."""

from __future__ import annotations

import re
from typing import Any

MAX_DEPTH = 64  # FHIR resources nest a dozen levels; deeper is an attack on recursive code, not data

_STRING = re.compile(rb'"[^"]*"')  # no backslash by then: no escaped quote either
_INNERMOST_PAIR = re.compile(rb"\{\}|\[\]")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"{}[]")


def may_have_problem(text: bytes) -> bool:
    """False when the JSON text (already parsed: valid JSON) certainly has no problem ``json_problem``
    would find; True when the tree must be walked. Runs on the bytes at C speed: the tree walk costs
    ~70 us on an ordinary hook call, this ~3 us.

    A control character can only be in valid JSON as an escape, so text without a backslash has none.
    Depth: at most as many levels as opening brackets; with more, the text's brackets outside strings
    are peeled innermost pair first, one level per pass."""
    if b"\\" in text:
        return True
    if text.count(b"{") + text.count(b"[") <= MAX_DEPTH:
        return False
    skeleton = _STRING.sub(b"", text).translate(None, _NOT_BRACKETS)
    for _ in range(MAX_DEPTH):
        if not skeleton:
            return False
        skeleton = _INNERMOST_PAIR.sub(b"", skeleton)
    return bool(skeleton)


def json_problem(body: Any) -> tuple[str, str] | None:
    """(message, where) of the first thing no valid request contains, or None: nesting deeper than
    MAX_DEPTH, or a control character in a string or key (FHIR strings allow none but tab, CR and LF,
    and the store, PostgreSQL above all, cannot keep NUL). Iterative, so depth cannot exhaust the stack."""
    stack: list[tuple[Any, str, int]] = [(body, "$", 0)]
    while stack:
        node, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"The JSON is nested more than {MAX_DEPTH} levels deep", where
        if isinstance(node, dict):
            for key, value in node.items():
                if not _printable(key):
                    return "A JSON key contains a control character", where
                stack.append((value, f"{where}.{key}" if depth < 12 else where, depth + 1))
        elif isinstance(node, list):
            stack.extend((value, f"{where}[{i}]" if depth < 12 else where, depth + 1) for i, value in enumerate(node))
        elif isinstance(node, str) and not _printable(node):
            return "A string contains a control character (FHIR strings allow only tab, CR and LF)", where
    return None


def _printable(text: str) -> bool:
    return text.isprintable() or not any(ord(c) < 32 and c not in "\t\r\n" for c in text)
