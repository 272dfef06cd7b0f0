"""Read side of the store: decision history, the full record behind a call or an assertion, and
feedback analytics (accept and override rates by card and override reason over time).

SQLAlchemy Core reads over the same tables the pipeline writes; no Flask here. Every read takes a
``scope``: the issuer whose records may be seen, or None for all of them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Date, cast, exists, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.sql.elements import ColumnElement

from cds_service.coverage_information import Covered
from cds_service.store import cards, coverage_assertions, feedback, hook_calls, verdicts

NO_VERDICT = "no-verdict"
OUTCOMES = (*(c.value for c in Covered), NO_VERDICT)
BUCKETS = ("day", "week", "month")
GROUPS = {"card-type": "card_type", "template": "template"}
MAX_PAGE = 500


@dataclass(frozen=True)
class Filters:
    """Which calls: received on ``start``..``end`` (UTC days, inclusive), by service and issuer, with a
    verdict row matching code, outcome (a coverage value, or no-verdict) and reason."""

    start: date | None = None
    end: date | None = None
    service: str | None = None
    issuer: str | None = None
    code: str | None = None
    outcome: str | None = None
    reason: str | None = None


def _window(column: Any, f: Filters) -> list[ColumnElement[bool]]:
    out = []
    if f.start:
        out.append(column >= datetime.combine(f.start, time(), UTC))
    if f.end and f.end < date.max:  # up to 9999-12-31: no bound
        out.append(column < datetime.combine(f.end + timedelta(days=1), time(), UTC))
    return out


def _call_conditions(f: Filters, scope: str | None) -> list[ColumnElement[bool]]:
    where = _window(hook_calls.c.received_at, f)
    if f.service:
        where.append(hook_calls.c.service_id == f.service)
    where += [hook_calls.c.client_iss == issuer for issuer in (scope, f.issuer) if issuer]
    matching: list[ColumnElement[bool]] = []
    if f.code:
        matching.append(func.upper(verdicts.c.code) == f.code.upper())
    if f.outcome == NO_VERDICT:
        matching.append(verdicts.c.covered.is_(None))
    elif f.outcome:
        matching.append(verdicts.c.covered == f.outcome)
    if f.reason:
        matching.append(verdicts.c.reason == f.reason)
    if matching:
        where.append(exists().where(verdicts.c.call_id == hook_calls.c.id, *matching))
    return where


SUMMARY_COLUMNS = (hook_calls.c.id, hook_calls.c.received_at, hook_calls.c.service_id, hook_calls.c.hook,
                   hook_calls.c.client_iss, hook_calls.c.hook_instance, hook_calls.c.decision_summary,
                   hook_calls.c.latency_ms)


def calls(engine: Engine, f: Filters, scope: str | None, limit: int = 50, offset: int = 0) -> dict[str, Any]:
    """One page of calls, newest first, each with its verdict rows and how many cards it issued."""
    where = _call_conditions(f, scope)
    with engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(hook_calls).where(*where)).scalar_one()
        rows = conn.execute(select(*SUMMARY_COLUMNS).where(*where)
                            .order_by(hook_calls.c.received_at.desc(), hook_calls.c.id.desc())
                            .limit(min(limit, MAX_PAGE)).offset(offset)).mappings().all()
        ids = [r["id"] for r in rows]
        by_call = _verdicts_of(conn, ids)
        counted = conn.execute(select(cards.c.call_id, func.count()).where(cards.c.call_id.in_(ids))
                               .group_by(cards.c.call_id)).all()
        card_counts: dict[int, int] = {call_id: n for call_id, n in counted}
    return {"total": int(total), "offset": offset, "calls": [
        {**_summary(r), "verdicts": by_call.get(r["id"], []), "cardCount": int(card_counts.get(r["id"], 0))}
        for r in rows]}


def verdict_rows(engine: Engine, f: Filters, scope: str | None, batch: int = 1000) -> Iterator[dict[str, Any]]:
    """Every verdict row of the matching calls, newest call first, read in batches (for CSV export)."""
    where = _call_conditions(f, scope)
    last: tuple[datetime, int] | None = None
    while True:
        query = (select(*SUMMARY_COLUMNS).where(*where)
                 .order_by(hook_calls.c.received_at.desc(), hook_calls.c.id.desc()).limit(batch))
        if last is not None:
            query = query.where((hook_calls.c.received_at < last[0])
                                | ((hook_calls.c.received_at == last[0]) & (hook_calls.c.id < last[1])))
        with engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
            by_call = _verdicts_of(conn, [r["id"] for r in rows])
        for r in rows:
            for v in by_call.get(r["id"], []) or [{}]:
                yield {**_summary(r), **v}
        if len(rows) < batch:
            return
        last = (rows[-1]["received_at"], rows[-1]["id"])


def _verdicts_of(conn: Any, ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    if not ids:
        return out
    for v in conn.execute(select(verdicts).where(verdicts.c.call_id.in_(ids)).order_by(verdicts.c.id)).mappings():
        out[v["call_id"]].append({
            "order": v["order_reference"], "code": v["code"], "policyOutcome": v["policy_outcome"],
            "coverage": v["coverage_reference"], "covered": v["covered"] or NO_VERDICT, "paNeeded": v["pa_needed"],
            "reason": v["reason"], "assertionId": v["assertion_id"]})
    return out


def _summary(r: Any) -> dict[str, Any]:
    return {"id": r["id"], "receivedAt": _iso(r["received_at"]), "service": r["service_id"], "hook": r["hook"],
            "issuer": r["client_iss"], "hookInstance": r["hook_instance"], "summary": r["decision_summary"],
            "latencyMs": round(float(r["latency_ms"]), 2)}


def call_record(engine: Engine, call_id: int, scope: str | None) -> dict[str, Any] | None:
    """One call as it happened: what was asked (digest), the response exactly as sent, its verdicts,
    its cards and the feedback each card got."""
    if not 0 < call_id < 2**31:  # the id column's range: anything else names no call
        return None
    with engine.connect() as conn:
        where = [hook_calls.c.id == call_id]
        if scope is not None:
            where.append(hook_calls.c.client_iss == scope)
        row = conn.execute(select(hook_calls).where(*where)).mappings().first()
        if row is None:
            return None
        issued = conn.execute(select(cards).where(cards.c.call_id == call_id).order_by(cards.c.issued_at)
                              ).mappings().all()
        notes: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for fb in conn.execute(select(feedback).where(feedback.c.card.in_([c["uuid"] for c in issued]))
                               .order_by(feedback.c.received_at)).mappings():
            notes[fb["card"]].append(_feedback(fb))
        verdict_list = _verdicts_of(conn, [call_id]).get(call_id, [])
    return {**_summary(row), "requestDigest": row["request_digest"], "response": row["response"],
            "verdicts": verdict_list,
            "cards": [{"uuid": c["uuid"], "template": c["template"], "cardType": c["card_type"],
                       "indicator": c["indicator"], "summary": c["summary"], "order": c["order_reference"],
                       "feedback": notes.get(c["uuid"], [])} for c in issued]}


def _feedback(fb: Any) -> dict[str, Any]:
    reason = (fb["override_reason"] or {}).get("reason") or {}
    return {"outcome": fb["outcome"], "outcomeTimestamp": fb["outcome_timestamp"],
            "receivedAt": _iso(fb["received_at"]), "reason": reason.get("code"),
            "reasonDisplay": reason.get("display"), "comment": (fb["override_reason"] or {}).get("userComment"),
            "acceptedSuggestions": [s.get("id") for s in fb["accepted_suggestions"] or []]}


def assertion_record(engine: Engine, assertion_id: str, scope: str | None,
                     max_calls: int = 20) -> dict[str, Any] | None:
    """An assertion id as a PA reviewer needs it: the verdict as issued, and every call that sent it
    (newest first, with the full record of the first ``max_calls``)."""
    with engine.connect() as conn:
        where = [coverage_assertions.c.assertion_id == assertion_id]
        if scope is not None:
            where.append(coverage_assertions.c.client_iss == scope)
        row = conn.execute(select(coverage_assertions).where(*where)).mappings().first()
        if row is None:
            return None
        sent_in = conn.execute(select(verdicts.c.call_id).where(verdicts.c.assertion_id == assertion_id)
                               .distinct().order_by(verdicts.c.call_id.desc())).scalars().all()
    assertion = {str(k): _iso(v) for k, v in row.items() if k not in ("subject_key", "fingerprint")}
    return {"assertion": assertion, "callCount": len(sent_in),
            "calls": [c for c in (call_record(engine, i, scope) for i in sent_in[:max_calls]) if c]}


# ---------------------------------------------------------------- feedback analytics


def _utc_day(column: Any, dialect: str) -> Any:
    if dialect == "postgresql":
        return cast(func.timezone("UTC", column), Date)
    return func.date(column)  # SQLite keeps UTC text: its date part


def _period(day: date, bucket: str) -> str:
    if bucket == "week":
        return (day - timedelta(days=day.weekday())).isoformat()  # the week's Monday
    if bucket == "month":
        return day.strftime("%Y-%m")
    return day.isoformat()


def feedback_summary(engine: Engine, f: Filters, scope: str | None, bucket: str = "week",
                     group: str = "card-type") -> dict[str, Any]:
    """Per period and card type (or template): cards issued, feedback accepted and overridden, the
    override rate among the feedback, and the overrides per reason code."""
    key = getattr(cards.c, GROUPS[group])
    dialect = engine.dialect.name
    card_where = _window(cards.c.issued_at, f)
    fb_where = _window(feedback.c.received_at, f)
    if f.service:
        card_where.append(cards.c.service_id == f.service)
        fb_where.append(cards.c.service_id == f.service)
    for issuer in (scope, f.issuer):
        if issuer:
            card_where.append(cards.c.client_iss == issuer)
            fb_where.append(cards.c.client_iss == issuer)
    issued_day = _utc_day(cards.c.issued_at, dialect)
    fb_day = _utc_day(feedback.c.received_at, dialect)
    reason = feedback.c.override_reason["reason"]["code"].as_string()
    with engine.connect() as conn:
        issued = conn.execute(select(issued_day, key, func.count()).where(*card_where)
                              .group_by(issued_day, key)).all()
        given = conn.execute(select(fb_day, key, feedback.c.outcome, reason, func.count())
                             .select_from(feedback.join(cards, cards.c.uuid == feedback.c.card)).where(*fb_where)
                             .group_by(fb_day, key, feedback.c.outcome, reason)).all()
    rows: dict[tuple[str, str], dict[str, Any]] = {}

    def row(day: Any, name: str) -> dict[str, Any]:
        period = _period(day if isinstance(day, date) else date.fromisoformat(str(day)[:10]), bucket)
        return rows.setdefault((period, name), {"period": period, "group": name, "issued": 0, "accepted": 0,
                                                "overridden": 0, "reasons": defaultdict(int)})

    for day, name, n in issued:
        row(day, name)["issued"] += n
    for day, name, outcome, code, n in given:
        r = row(day, name)
        r[outcome] += n
        if outcome == "overridden":
            r["reasons"][code or "(no reason given)"] += n
    out = []
    for r in sorted(rows.values(), key=lambda r: (r["period"], r["group"])):
        answered = r["accepted"] + r["overridden"]
        out.append({**r, "reasons": dict(sorted(r["reasons"].items())),
                    "overrideRate": round(r["overridden"] / answered, 4) if answered else None})
    return {"bucket": bucket, "group": group, "rows": out}


def _iso(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)  # SQLite hands back the stored UTC time without its zone
    return value.isoformat() if isinstance(value, date | datetime) else value
