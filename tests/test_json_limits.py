"""The byte-level pre-check never lets through what the tree walk refuses (it may only send more to the walk)."""

from __future__ import annotations

import json

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from cds_service.json_limits import MAX_DEPTH, json_problem, may_have_problem

text = st.text(alphabet=st.characters(max_codepoint=0x2FF), max_size=8)  # control characters included
scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | text
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
                      max_leaves=30)


def nested(depth: int, inner: str = "1") -> bytes:
    return ("[" * depth + inner + "]" * depth).encode()


@settings(max_examples=400, deadline=None)
@given(values, st.booleans())
def test_whatever_the_walk_refuses_the_precheck_sends_to_it(value: object, ascii_escapes: bool) -> None:
    data = json.dumps(value, ensure_ascii=True).encode() if ascii_escapes else orjson.dumps(value)
    if json_problem(json.loads(data)) is not None:
        assert may_have_problem(data)


def test_depth_at_the_limit_and_beyond() -> None:
    # A scalar at depth 64 is allowed, at 65 refused; the pre-check agrees at both sides of the edge.
    for depth, refused in ((MAX_DEPTH, False), (MAX_DEPTH + 1, True), (1000, True)):
        data = nested(depth)
        assert (json_problem(orjson.loads(data)) is not None) is refused
        assert may_have_problem(data) is refused


def test_brackets_inside_strings_are_not_nesting() -> None:
    data = orjson.dumps({"text": "[" * 200, "more": ["{{{{"] * 20})
    assert data.count(b"[") > MAX_DEPTH
    assert not may_have_problem(data)


def test_wide_but_shallow_documents_pass_without_a_walk() -> None:
    data = orjson.dumps({"entry": [{"resource": {"coding": [{"code": str(i)}]}} for i in range(200)]})
    assert not may_have_problem(data)


def test_a_control_character_can_only_arrive_escaped() -> None:
    assert may_have_problem(orjson.dumps({"a": "x\u0001y"}))  # orjson writes it as \u0001
    assert json_problem(orjson.loads(orjson.dumps({"a": "x\u0001y"}))) is not None
    assert not may_have_problem(b'{"a": "plain text, no escapes"}')
