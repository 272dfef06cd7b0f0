"""Inputs at the edges of what JSON, FHIR dates and the service's own limits allow: each once answered
500 or was misread (found by a black-box attack run)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from cds_service import create_app
from cds_service.observability import HookInstanceFilter
from tests.conftest import SIGN, LiveService, coverage, coverage_info, hook_request, service_request

SURROGATE_WITH_HUGE_NUMBER = (b'{"pad":1e400,"hook":"order-sign","hookInstance":"h-\\ud800","context":'
                              b'{"userId":"Practitioner/1","patientId":"p1","draftOrders":{"resourceType":"Bundle",'
                              b'"entry":[]}}}')


@pytest.mark.parametrize("path", [f"/cds-services/{SIGN}", f"/cds-services/{SIGN}/feedback"])
def test_a_lone_surrogate_is_a_400_even_where_the_json_module_reads_the_body(cds: LiveService, path: str) -> None:
    """orjson refuses a lone surrogate; a body with a number beyond a double is read by the json module,
    which accepts it, and the string then failed every later write (digest, record, log line)."""
    resp = cds.post_raw(path, SURROGATE_WITH_HUGE_NUMBER)
    assert resp.status_code == 400, resp.text
    assert resp.json()["issue"][0]["code"] == "invalid" and "not valid JSON" in resp.json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize("end", ["9999-12-31", "9999-12", "9999"])
def test_a_coverage_without_an_end_written_as_the_last_day_there_is(cds: LiveService, end: str) -> None:
    """Many EHRs write 'no end date' as 9999-12-31: the day after it does not exist."""
    cov = coverage(period={"start": "2020-01-01", "end": end})
    [info] = coverage_info(cds.call(hook_request(service_request("0530U", "2025-03-03"), coverages=(cov,))))
    assert info["covered"]["valueCode"] == "not-covered"


@pytest.mark.parametrize("query", ["to=9999-12-31", "format=csv&to=9999-12-31", "from=0001-01-01&to=9999-12-31"])
def test_records_up_to_the_last_day_there_is(cds: LiveService, query: str) -> None:
    cds.call(hook_request(service_request("0530U", "2025-03-03")))
    resp = cds.http.get(cds.url(f"/records/api/calls?{query}"), timeout=10)
    assert resp.status_code == 200, resp.text
    assert ("0530U" in resp.text) and (resp.text.count("\n") >= 2 if "csv" in query else resp.json()["total"] == 1)


def test_a_request_after_a_hook_call_on_the_same_thread_is_not_stamped_with_its_hook_instance(
        tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Log lines carry the hook call they belong to; a records read that a server thread serves after a
    hook call belongs to none (it would tie the reader to another client's call in the audit log)."""
    app = create_app({"DATABASE_URL": f"sqlite:///{tmp_path / 'h.db'}", "TODAY": "2026-11-25"})
    client = app.test_client()  # one thread, as a server thread serving one request after another
    request = hook_request(service_request("0530U", "2025-03-03"))
    assert client.post(f"/cds-services/{SIGN}", json=request).status_code == 200
    caplog.handler.addFilter(HookInstanceFilter())  # as the service's own handlers stamp each line
    with caplog.at_level(logging.INFO, logger="cds_service.records"):
        assert client.get("/records/api/calls").status_code == 200
    [line] = [r for r in caplog.records if r.name == "cds_service.records"]
    assert getattr(line, "hookInstance", None) is None, line.__dict__


@pytest.mark.parametrize(("field", "value", "expression"), [
    ("occurrencePeriod", {"start": "2026-07-15", "end": "2026-06-15"}, "occurrencePeriod"),
    ("occurrenceTiming", {"repeat": {"boundsPeriod": {"start": "2026-07", "end": "2026-06-30"}}},
     "occurrenceTiming.repeat.boundsPeriod"),
    ("id", "a" * 65, "id"),
])
def test_a_judged_order_fhir_does_not_allow_is_a_400(cds: LiveService, field: str, value: Any,
                                                     expression: str) -> None:
    """What fhir.resources lets through but FHIR does not: a period ending before it starts (per-1; it
    was judged from its start alone), an id over 64 characters (on PostgreSQL a 500: the record's column)."""
    order = service_request("0530U", None)
    order[field] = value
    resp = cds.http.post(cds.url(f"/cds-services/{SIGN}"), json=hook_request(order), timeout=10)
    assert resp.status_code == 400, resp.text
    [issue] = resp.json()["issue"]
    assert issue["expression"] == [f"context.draftOrders.entry[0].resource.{expression}"], issue


def test_an_order_the_policy_does_not_judge_is_not_refused_for_such_a_flaw(cds: LiveService) -> None:
    blood_count = {"resourceType": "ServiceRequest", "id": "cbc", "status": "draft", "intent": "order",
                   "subject": {"reference": "Patient/p1"}, "code": {"text": "CBC with differential"},
                   "occurrencePeriod": {"start": "2026-07-15", "end": "2026-06-15"}}
    body = cds.call(hook_request(blood_count, service_request("0530U", "2025-03-03")))
    assert [i["covered"]["valueCode"] for i in coverage_info(body)] == ["not-covered"]


def test_an_order_id_of_64_characters_is_a_fhir_id(cds: LiveService) -> None:
    order = service_request("0530U", "2025-03-03")
    order["id"] = "a" * 64
    assert coverage_info(cds.call(hook_request(order)))[0]["covered"]["valueCode"] == "not-covered"


def test_at_most_25_liquid_biopsy_orders_are_judged_in_one_call(cds: LiveService) -> None:
    """Each judged order is validated in full, judged, echoed and recorded: unbounded, one request of a
    few hundred held a worker (and every caller queued behind it) for seconds."""
    orders = [service_request("0530U", "2025-03-03", rid=f"lb-{i}") for i in range(26)]
    blood_counts = [{"resourceType": "ServiceRequest", "id": f"cbc-{i}", "status": "draft", "intent": "order",
                     "subject": {"reference": "Patient/p1"}, "code": {"text": "CBC"}} for i in range(40)]
    assert len(cds.call(hook_request(*orders[:25], *blood_counts))["systemActions"]) == 25
    resp = cds.http.post(cds.url(f"/cds-services/{SIGN}"), json=hook_request(*orders), timeout=10)
    assert resp.status_code == 400 and "More than 25 liquid-biopsy orders" in resp.text


def test_at_most_8_coverages_of_ours_are_answered_for_when_none_is_marked_primary(cds: LiveService) -> None:
    covs = tuple(coverage(f"cov-{i}") for i in range(9))
    body = cds.call(hook_request(service_request("0530U", "2025-03-03"), coverages=covs[:8]))
    assert len(coverage_info(body)) == 8
    resp = cds.http.post(cds.url(f"/cds-services/{SIGN}"),
                         json=hook_request(service_request("0530U", "2025-03-03"), coverages=covs), timeout=10)
    assert resp.status_code == 400 and "answers for at most 8" in resp.text
    ordered = tuple(coverage(f"cov-{i}", order=i + 1) for i in range(9))  # a primary: answered as usual
    assert len(coverage_info(cds.call(hook_request(service_request("0530U", "2025-03-03"), coverages=ordered)))) == 1


def test_the_same_coverage_given_twice_is_one_coverage_and_two_versions_of_it_a_400(cds: LiveService) -> None:
    """Two entries for one Coverage gave one order two verdicts for it, under two assertion ids (Inferno:
    entries for the same coverage carry the same coverage-assertion-id)."""
    order = service_request("0530U", "2025-03-03")
    body = cds.call(hook_request(order, coverages=(coverage("c0"), coverage("c0"))))
    assert [i["coverage"]["valueReference"]["reference"] for i in coverage_info(body)] == ["Coverage/c0"]
    fep = coverage("c0", plan="FEP Blue Standard")
    resp = cds.http.post(cds.url(f"/cds-services/{SIGN}"), json=hook_request(order, coverages=(coverage("c0"), fep)),
                         timeout=10)
    assert resp.status_code == 400 and "Two different versions of Coverage/c0" in resp.text


@pytest.mark.parametrize(("start", "end"), [("2025-03-03T10:00:00Z", "2025-03-03T09:00:00Z"),
                                            ("2025-03-03T23:00:00-05:00", "2025-03-04T01:00:00+10:00")])
def test_a_period_inverted_within_a_day_or_across_zones_is_a_400(cds: LiveService, start: str, end: str) -> None:
    order = service_request("0530U", None)
    order["occurrencePeriod"] = {"start": start, "end": end}
    resp = cds.http.post(cds.url(f"/cds-services/{SIGN}"), json=hook_request(order), timeout=10)
    assert resp.status_code == 400 and "after it ends" in resp.text


def test_a_period_within_one_day_in_order_is_judged(cds: LiveService) -> None:
    order = service_request("0530U", None)
    order["occurrencePeriod"] = {"start": "2025-03-03T09:00:00-05:00", "end": "2025-03-03T10:00:00-05:00"}
    assert coverage_info(cds.call(hook_request(order)))[0]["covered"]["valueCode"] == "not-covered"
