"""Decision records through the real HTTP interface: history filtered by date, outcome, code, service
and issuer; one call's and one assertion's full record; feedback analytics; CSV; access control."""

from __future__ import annotations

import csv
import io
import json
import logging
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from cds_service.store import cards, hook_calls, verdicts
from tests.conftest import SELECT, SIGN, LiveService, assertion_ids, coverage, hook_request, service_request
from tests.test_auth import EC_KEY, ISS, OTHER_EC_KEY, OTHER_ISS, jwk, token

TS = "2026-11-25T10:00:00Z"


def sign(cds: LiveService, code: str = "0530U", service: str = SIGN, **kw: Any) -> dict[str, Any]:
    hook = "order-select" if service == SELECT else "order-sign"
    extra: dict[str, Any] = {"selections": ["ServiceRequest/sr-1"]} if service == SELECT else {}
    return cds.call(hook_request(service_request(code, "2025-03-03"), hook=hook, **extra, **kw), service=service)


def give_feedback(cds: LiveService, card: dict[str, Any], outcome: str = "overridden", reason: int | None = 0) -> None:
    entry: dict[str, Any] = {"card": card["uuid"], "outcome": outcome, "outcomeTimestamp": TS}
    if outcome == "accepted":
        entry["acceptedSuggestions"] = [{"id": card["suggestions"][0]["uuid"]}]
    elif reason is not None:
        entry["overrideReason"] = {"reason": card["overrideReasons"][reason]}
    resp = cds.http.post(cds.url(f"/cds-services/{SIGN}/feedback"), json={"feedback": [entry]}, timeout=5)
    assert resp.status_code == 200, resp.text


def get(cds: LiveService, path: str, expect: int = 200, params: dict[str, Any] | None = None, **more: Any) -> Any:
    resp = cds.http.get(cds.url(path), params={**(params or {}), **more}, timeout=10)
    assert resp.status_code == expect, resp.text
    return resp.json() if "json" in resp.headers["Content-Type"] else resp.text


def age(cds: LiveService, days: int, call_ids: list[int]) -> None:
    when = datetime.now(UTC) - timedelta(days=days)
    with cds.pipeline.store.engine.begin() as conn:
        conn.execute(hook_calls.update().where(hook_calls.c.id.in_(call_ids)).values(received_at=when))
        conn.execute(verdicts.update().where(verdicts.c.call_id.in_(call_ids)).values(received_at=when))
        conn.execute(cards.update().where(cards.c.call_id.in_(call_ids)).values(issued_at=when))


def codes(page: dict[str, Any]) -> list[str]:
    return [v["code"] for c in page["calls"] for v in c["verdicts"]]


# ---------------------------------------------------------------- history


def test_history_lists_every_call_newest_first_with_its_verdicts(cds: LiveService) -> None:
    sign(cds, "0530U")
    sign(cds, "0091U")
    cds.call(hook_request(service_request("85025", "2025-03-03")))  # a blood count: no verdict, still a call
    page = get(cds, "/records/api/calls")
    assert page["total"] == 3 and [c["summary"] for c in page["calls"]][1:] == [
        "investigational-code-list", "investigational-code-list"]
    assert page["calls"][0]["verdicts"] == [] and codes(page) == ["0091U", "0530U"]
    [v] = page["calls"][2]["verdicts"]
    assert v["covered"] == "not-covered" and v["coverage"] == "Coverage/cov-1" and v["assertionId"]
    assert page["calls"][2]["cardCount"] == 2


def test_history_filters_by_date_outcome_code_service_and_issuer(service_factory: Any) -> None:
    cds = service_factory(MODE="sandbox")  # where an order can be judged without a Coverage: no verdict
    sign(cds, "0530U")
    sign(cds, "0091U", SELECT)
    sign(cds, "0530U", coverages=(coverage(payor="Federal Employee Program", plan="FEP Blue Standard"),))
    age(cds, 40, [1])
    today = datetime.now(UTC).date()
    assert codes(get(cds, "/records/api/calls", params={"from": (today - timedelta(days=1)).isoformat()})) == [
        "0530U", "0091U"]
    assert get(cds, "/records/api/calls", params={"from": today.isoformat(), "to": today.isoformat()})["total"] == 2
    assert codes(get(cds, "/records/api/calls", to=(today - timedelta(days=30)).isoformat())) == ["0530U"]
    assert get(cds, "/records/api/calls", code="0091u")["total"] == 1  # codes match whatever their case
    assert get(cds, "/records/api/calls", service=SELECT)["total"] == 1
    sign(cds, "0091U", coverages=())
    assert get(cds, "/records/api/calls", outcome="not-covered")["total"] == 2
    fep = get(cds, "/records/api/calls", outcome="conditional")
    assert fep["total"] == 1 and fep["calls"][0]["verdicts"][0]["reason"] == "product-variation-manual"
    uncovered = get(cds, "/records/api/calls", outcome="no-verdict")
    assert uncovered["total"] == 1 and uncovered["calls"][0]["verdicts"][0]["coverage"] is None
    assert get(cds, "/records/api/calls", issuer="https://nobody.example")["total"] == 0
    assert get(cds, "/records/api/calls", outcome="not-covered", code="0530U", to=today.isoformat())["total"] == 1


def test_history_pages(cds: LiveService) -> None:
    for _ in range(5):
        sign(cds)
    first = get(cds, "/records/api/calls", limit=2)
    second = get(cds, "/records/api/calls", limit=2, offset=2)
    last = get(cds, "/records/api/calls", limit=2, offset=4)
    ids = [c["id"] for p in (first, second, last) for c in p["calls"]]
    assert ids == [5, 4, 3, 2, 1] and first["total"] == 5


@pytest.mark.parametrize("params", [
    {"from": "yesterday"}, {"to": "2026-13-01"}, {"outcome": "denied"}, {"limit": "0"}, {"limit": "501"},
    {"offset": "-1"}, {"format": "xml"}, {"code": "x" * 600}, {"issuer": "a\x00b"}, {"from": "20260201"},
    {"limit": "\uff15"}, {"to": "2026-02-30"},
], ids=lambda p: "-".join(p))
def test_bad_filters_are_400(cds: LiveService, params: dict[str, str]) -> None:
    body = get(cds, "/records/api/calls", 400, params=params)
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["expression"]


def test_history_as_csv_one_row_per_verdict_and_safe_for_spreadsheets(cds: LiveService) -> None:
    sign(cds, "0530U")
    body = hook_request(service_request("0091U", "2025-03-03"))
    body["hookInstance"] = "=HYPERLINK(\"http://evil.example\")"
    cds.call(body)
    resp = cds.http.get(cds.url("/records/api/calls"), params={"format": "csv"}, timeout=10)
    assert resp.headers["Content-Type"].startswith("text/csv")
    assert "attachment" in resp.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(resp.text)))
    assert [r["code"] for r in rows] == ["0091U", "0530U"]
    assert rows[0]["hookInstance"].startswith("'=")  # a formula a spreadsheet would run, neutralised
    assert rows[1]["covered"] == "not-covered" and rows[1]["assertionId"]


# ---------------------------------------------------------------- one call, one assertion


def test_one_call_record_is_the_response_as_sent_with_cards_and_feedback(cds: LiveService) -> None:
    body = sign(cds)
    give_feedback(cds, body["cards"][0])
    record = get(cds, "/records/api/calls/1")
    assert record["response"] == body and len(record["requestDigest"]) == 64
    assert [c["uuid"] for c in record["cards"]] == [c["uuid"] for c in body["cards"]]
    assert record["cards"][0]["feedback"][0]["outcome"] == "overridden"
    assert record["cards"][0]["summary"] == body["cards"][0]["summary"]
    get(cds, "/records/api/calls/99", 404)


def test_an_assertion_record_shows_every_call_that_sent_it(cds: LiveService) -> None:
    first = sign(cds)
    again = sign(cds)  # the same order and Coverage: the same assertion, sent again
    [assertion_id] = assertion_ids(first)
    assert assertion_ids(again) == [assertion_id]
    record = get(cds, f"/records/api/assertions/{assertion_id}")
    assert record["assertion"]["covered"] == "not-covered" and record["assertion"]["policy"] == "MP 2.267"
    assert record["assertion"]["information"] == first["systemActions"][0]["resource"]["extension"][0]
    assert record["callCount"] == 2 and [c["response"] for c in record["calls"]] == [again, first]
    get(cds, "/records/api/assertions/nope", 404)
    get(cds, f"/records/api/assertions/{'x' * 70}", 404)


# ---------------------------------------------------------------- feedback analytics


def test_feedback_rates_by_card_type_and_reason(cds: LiveService) -> None:
    for reason in (0, 0, 1):
        give_feedback(cds, next(c for c in sign(cds)["cards"] if c.get("overrideReasons")), reason=reason)
    remove = next(c for c in sign(cds)["cards"] if c.get("suggestions"))
    give_feedback(cds, remove, "accepted")
    summary = get(cds, "/records/api/feedback", group="template", bucket="month")
    rows = {r["group"]: r for r in summary["rows"]}
    warning, removal = rows["investigational-code-list"], rows["remove-order"]
    assert (warning["issued"], warning["overridden"], warning["accepted"], warning["overrideRate"]) == (4, 3, 0, 1.0)
    reasons = cds.pipeline.knowledge.override_reasons
    assert warning["reasons"] == {reasons[0].code: 2, reasons[1].code: 1}
    assert (removal["issued"], removal["accepted"], removal["overrideRate"]) == (4, 1, 0.0)
    assert {r["period"] for r in summary["rows"]} == {datetime.now(UTC).strftime("%Y-%m")}
    by_type = get(cds, "/records/api/feedback")  # default: per week, by CRD card type
    assert by_type["bucket"] == "week" and by_type["group"] == "card-type"
    assert sum(r["overridden"] for r in by_type["rows"]) == 3 and sum(r["accepted"] for r in by_type["rows"]) == 1


def test_feedback_over_time_and_as_csv(cds: LiveService) -> None:
    give_feedback(cds, sign(cds)["cards"][0])
    give_feedback(cds, sign(cds)["cards"][0], reason=1)
    age(cds, 10, [1])
    with cds.pipeline.store.engine.begin() as conn:  # the feedback on call 1's card came back then too
        card = conn.execute(select(cards.c.uuid).where(cards.c.call_id == 1)).scalars().first()
        from cds_service.store import feedback

        conn.execute(feedback.update().where(feedback.c.card == card).values(
            received_at=datetime.now(UTC) - timedelta(days=10)))
    days = get(cds, "/records/api/feedback", bucket="day", group="template")
    overridden = [(r["period"], r["overridden"]) for r in days["rows"] if r["overridden"]]
    assert len(overridden) == 2 and overridden[0][0] < overridden[1][0]
    text = get(cds, "/records/api/feedback", format="csv", bucket="day", group="template")
    rows = list(csv.DictReader(io.StringIO(text)))
    reasons = cds.pipeline.knowledge.override_reasons
    assert {f"overridden:{reasons[0].code}", f"overridden:{reasons[1].code}"} <= set(rows[0])
    assert sum(int(r["overridden"]) for r in rows) == 2


# ---------------------------------------------------------------- pages


def test_pages_render_and_escape_what_clients_sent(cds: LiveService) -> None:
    body = hook_request(service_request("0530U", "2025-03-03"))
    body["hookInstance"] = "<script>alert(1)</script>"
    sent = cds.call(body)
    give_feedback(cds, sent["cards"][0])
    history = get(cds, "/records/")
    assert "0530U" in history and "<script>alert" not in get(cds, "/records/calls/1")
    assert "&lt;script&gt;" in get(cds, "/records/calls/1")
    [assertion_id] = assertion_ids(sent)
    page = get(cds, f"/records/assertions/{assertion_id}")
    assert sent["cards"][0]["summary"].replace("'", "&#39;") in page and "not-covered" in page
    feedback_page = get(cds, "/records/feedback")
    assert feedback_page.count("<svg") == 2 and "kozea.github.io" not in feedback_page  # no script from a CDN
    assert "404" not in get(cds, "/records/assertions/nope", 404)


# ---------------------------------------------------------------- access


@pytest.fixture
def secured_records(service_factory: Any, tmp_path: Path) -> LiveService:
    issuers = tmp_path / "issuers.json"
    auditor_key = OTHER_EC_KEY
    issuers.write_text(json.dumps({"issuers": [
        {"iss": ISS, "jwks": {"keys": [jwk(EC_KEY, "ec-1")]}},
        {"iss": OTHER_ISS, "jwks": {"keys": [jwk(auditor_key, "other-1")]}},
        {"iss": "https://payer-audit.example", "jwks": {"keys": [jwk(auditor_key, "audit-1")]}, "records": "all"}]}))
    service: LiveService = service_factory(TRUSTED_ISSUERS=str(issuers))
    return service


def read(svc: LiveService, path: str, who: str = ISS, **params: Any) -> Any:
    key, kid = (EC_KEY, "ec-1") if who == ISS else (OTHER_EC_KEY, "other-1" if who == OTHER_ISS else "audit-1")
    headers = {"Authorization": f"Bearer {token(svc, path, key=key, kid=kid, iss=who)}"}
    return svc.http.get(svc.url(path), params=params, headers=headers, timeout=10)


def test_records_need_the_same_authentication_as_the_hooks(secured_records: LiveService) -> None:
    svc = secured_records
    headers = {"Authorization": f"Bearer {token(svc)}"}
    svc.http.post(svc.url(f"/cds-services/{SIGN}"), json=hook_request(service_request()), headers=headers, timeout=5)
    for path in ("/records/", "/records/api/calls", "/records/api/calls/1", "/records/feedback",
                 "/records/api/feedback", "/records/assertions/x", "/records/api/assertions/x", "/records/calls/1"):
        refused = svc.http.get(svc.url(path), timeout=5)
        assert refused.status_code == 401 and "WWW-Authenticate" in refused.headers, path
    wrong_aud = svc.http.get(svc.url("/records/api/calls"), headers={
        "Authorization": f"Bearer {token(svc, '/records/api/calls/1')}"}, timeout=5)
    assert wrong_aud.status_code == 401
    assert read(svc, "/records/api/calls").json()["total"] == 1


def test_each_issuer_reads_its_own_records_and_an_auditor_all(secured_records: LiveService,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    svc = secured_records
    mine = svc.http.post(svc.url(f"/cds-services/{SIGN}"), json=hook_request(service_request()),
                         headers={"Authorization": f"Bearer {token(svc)}"}, timeout=5).json()
    theirs_path = f"/cds-services/{SIGN}"
    svc.http.post(svc.url(theirs_path), json=hook_request(service_request("0091U")), headers={
        "Authorization": f"Bearer {token(svc, theirs_path, key=OTHER_EC_KEY, kid='other-1', iss=OTHER_ISS)}"},
        timeout=5)
    assert codes(read(svc, "/records/api/calls").json()) == ["0530U"]
    assert codes(read(svc, "/records/api/calls", OTHER_ISS).json()) == ["0091U"]
    assert read(svc, "/records/api/calls", issuer=OTHER_ISS).json()["total"] == 0  # no looking sideways
    assert read(svc, "/records/api/calls/1", OTHER_ISS).status_code == 404
    [assertion_id] = assertion_ids(mine)
    assert read(svc, f"/records/api/assertions/{assertion_id}", OTHER_ISS).status_code == 404
    assert read(svc, f"/records/assertions/{assertion_id}", OTHER_ISS).status_code == 404
    with caplog.at_level(logging.INFO, logger="cds_service.records"):
        audit = read(svc, "/records/api/calls", "https://payer-audit.example").json()
    assert sorted(codes(audit)) == ["0091U", "0530U"]
    assert read(svc, f"/records/api/assertions/{assertion_id}", "https://payer-audit.example").status_code == 200
    assert any(getattr(r, "reader", "") == "https://payer-audit.example" for r in caplog.records)  # reads are logged
    feedback_of_other = read(svc, "/records/api/feedback", OTHER_ISS).json()
    assert sum(r["issued"] for r in feedback_of_other["rows"]) == 2  # its own call's two cards only


def test_trusted_issuers_file_refuses_an_unknown_records_scope(tmp_path: Path) -> None:
    from cds_service.auth import load_trusted_issuers

    path = tmp_path / "issuers.json"
    path.write_text(json.dumps({"issuers": [{"iss": "x", "jwks": {"keys": [jwk(EC_KEY, "k")]}, "records": "some"}]}))
    with pytest.raises(ValueError, match="'records' must be"):
        load_trusted_issuers(str(path))


def test_unknown_ids_are_404_whatever_their_shape(cds: LiveService) -> None:
    get(cds, f"/records/api/assertions/{uuid.uuid4()}", 404)
    for call_id in ("abc", "0", "-1", str(2**31), "9" * 30):
        assert cds.http.get(cds.url(f"/records/api/calls/{call_id}"), timeout=5).status_code == 404, call_id


def test_a_window_that_ends_before_it_starts_is_empty(cds: LiveService) -> None:
    sign(cds)
    assert get(cds, "/records/api/calls", params={"from": "2026-02-01", "to": "2026-01-01"})["total"] == 0
