"""Property-based fuzzing of the hook and feedback endpoints: whatever arrives, never a 5xx.

Runs through the WSGI app in-process (the same code path as HTTP, thousands of calls per
second); every 200 hook answer must still obey the CDS Hooks rules.
"""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_service import create_app
from tests.conftest import ICD, SIGN, coverage, hook_request, service_request
from tests.crd_conformance import assert_valid_response

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)

BASE = hook_request(service_request("0530U", "2025-03-03", icd=("C34.9",)),
                    service_request("0239U", "2025-03-03", rid="sr-2", icd=("C18.2", "C78.0")),
                    coverages=(coverage(), coverage("fep", plan="FEP Blue Standard"), {
                        **coverage("khpc", payor=None), "payor": [{"reference": "#org"}], "order": 1,
                        "contained": [{"resourceType": "Organization", "id": "org",
                                       "name": "Keystone Health Plan Central"}],
                        "period": {"start": "2025-01-01", "end": "2025-12-31"}}))


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += paths(v, (*prefix, i))
    return out


ALL_PATHS = paths(BASE)[1:]


def replace(body: Any, path: tuple[Any, ...], value: Any) -> Any:
    body = copy.deepcopy(body)
    body["hookInstance"] = str(uuid.uuid4())  # each call its own (a reused one with another body is a 409)
    node = body
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return body


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Any:
    db = Path(tmp_path_factory.mktemp("fuzz")) / "fuzz.sqlite3"
    return create_app({"DATABASE_URL": f"sqlite:///{db}", "TODAY": "2026-11-25"}).test_client()


COUNT = {"hook": 0, "feedback": 0}


@settings(max_examples=1200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(ALL_PATHS), value=json_values)
def test_hook_endpoint_never_fails_on_mutated_requests(client: Any, path: tuple[Any, ...], value: Any) -> None:
    resp = client.post(f"/cds-services/{SIGN}", json=replace(BASE, path, value))
    COUNT["hook"] += 1
    assert resp.status_code in (200, 400, 409), (path, value, resp.get_data(as_text=True))
    if resp.status_code == 200:
        assert_valid_response(resp.get_json())
    else:
        assert resp.get_json()["resourceType"] == "OperationOutcome"


def node_at(body: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        body = body[step]
    return body


DICT_PATHS = [p for p in paths(BASE) if isinstance(node_at(BASE, p), dict)]  # the body itself included
# Element names a FHIR library may treat specially: primitive extensions (_x), its own Python names
# (x__ext), the resource type and the generic containers; values include JSON written as text.
ADDED_NAMES = st.sampled_from(["_status", "_code", "_system", "_id", "_reference", "_start", "status__ext",
                               "code__ext", "resource_type", "resourceType", "extension", "modifierExtension",
                               "contained", "fhir_comments", "meta", "text", "_given"])
ADDED_VALUES: st.SearchStrategy[Any] = json_values | st.sampled_from(
    ["true", "[1]", "null", "{}", "1", [None, {}], {"extension": "x"}])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(DICT_PATHS), name=ADDED_NAMES, value=ADDED_VALUES)
def test_hook_endpoint_never_fails_on_added_elements(client: Any, path: tuple[Any, ...], name: str,
                                                     value: Any) -> None:
    """An element added anywhere (e.g. "_status": "true" on an order once made fhir.resources crash: a 500)."""
    body = replace(BASE, (*path, name), value)
    resp = client.post(f"/cds-services/{SIGN}", json=body)
    COUNT["hook"] += 1
    assert resp.status_code in (200, 400, 409), (path, name, value, resp.get_data(as_text=True))
    if resp.status_code == 200:
        assert_valid_response(resp.get_json())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=json_values | st.fixed_dictionaries({"feedback": st.lists(
    st.fixed_dictionaries({"card": json_values, "outcome": st.sampled_from(["accepted", "overridden", 3]),
                           "outcomeTimestamp": st.sampled_from(["2026-11-25T10:00:00Z", "no", None]),
                           "acceptedSuggestions": json_values, "overrideReason": json_values}), max_size=3)}))
def test_feedback_endpoint_never_fails(client: Any, body: Any) -> None:
    resp = client.post(f"/cds-services/{SIGN}/feedback", data=json.dumps(body), content_type="application/json")
    COUNT["feedback"] += 1
    assert resp.status_code in (400, 404), resp.get_data(as_text=True)  # no card was ever issued


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=64))
def test_raw_bytes_never_fail(client: Any, raw: bytes) -> None:
    resp = client.post(f"/cds-services/{SIGN}", data=raw, content_type="application/json")
    assert resp.status_code in (200, 400)


def test_fuzz_ran_enough_requests() -> None:
    # Runs after the fuzz tests in file order; keeps the request count honest (>= 1,000 hook calls).
    assert COUNT["hook"] >= 1000 and COUNT["feedback"] >= 100, COUNT


def test_icd_constant_matches_knowledge(client: Any) -> None:
    assert client.application.extensions["cds_pipeline"].knowledge.icd10_system == ICD
