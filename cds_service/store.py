"""Storage adapter: hook-call audit, coverage assertions and card feedback (SQLAlchemy Core).

Each write is committed before the HTTP response is sent. Demographics are never stored.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Date,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    func,
    insert,
    select,
)
from sqlalchemy.engine import Engine

metadata = MetaData()

hook_calls = Table(
    "hook_calls", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("hook_instance", String(128), nullable=False, index=True),
    Column("service_id", String(64), nullable=False),
    Column("client_iss", String(512)),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("decision_summary", String(256), nullable=False),
    Column("orders", JSON, nullable=False),  # [{"reference", "codes", "date_of_service", "outcome"}]
)

coverage_assertions = Table(
    "coverage_assertions", metadata,
    Column("assertion_id", String(64), primary_key=True),
    Column("hook_instance", String(128), nullable=False, index=True),
    Column("order_reference", String(256), nullable=False),
    Column("coverage_reference", String(256), nullable=False),
    Column("code", String(32), nullable=False),
    Column("covered", String(32), nullable=False),
    Column("pa_needed", String(32)),
    Column("reason", String(64), nullable=False),
    Column("policy", String(64), nullable=False),
    Column("policy_version", String(64), nullable=False),
    Column("artifact_version", String(64), nullable=False),
    Column("date_of_service", Date, nullable=False),
    Column("assertion_date", Date, nullable=False),
)

feedback = Table(
    "feedback", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service_id", String(64), nullable=False),
    Column("card", String(128), nullable=False, index=True),
    Column("outcome", String(32), nullable=False),
    Column("accepted_suggestions", JSON),
    Column("override_reason", JSON),
    Column("outcome_timestamp", String(64), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
)


def make_engine(url: str) -> Engine:
    engine = create_engine(url, future=True, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=5000")
            cur.close()
    return engine


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create_schema(self) -> None:
        metadata.create_all(self.engine)

    def record_hook_call(self, call: dict[str, Any], assertions: list[dict[str, Any]]) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(hook_calls), [call])
            if assertions:
                conn.execute(insert(coverage_assertions), assertions)

    def record_feedback(self, rows: list[dict[str, Any]]) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(feedback), rows)

    def assertion(self, assertion_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(coverage_assertions).where(
                coverage_assertions.c.assertion_id == assertion_id)).mappings().first()
        return dict(row) if row else None

    def count(self, table: Table) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(table)).scalar_one())

    def feedback_for(self, card: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(feedback).where(feedback.c.card == card)).mappings()]


def utcnow() -> datetime:
    return datetime.now(UTC)
