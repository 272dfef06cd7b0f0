"""Storage adapter: hook-call audit, coverage assertions, card feedback and seen JWT ids.

SQLAlchemy Core over SQLite (embedded default, WAL) or PostgreSQL; the schema is managed by the
Alembic migrations in cds_service/migrations (these Table objects mirror them). Each write is
committed before the HTTP response is sent. Names and other demographics are never stored.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    select,
    text,
    tuple_,
)
from sqlalchemy.engine import Dialect, Engine, make_url
from sqlalchemy.pool import StaticPool

from cds_service import fhir_json

log = logging.getLogger(__name__)
metadata = MetaData()

hook_calls = Table(
    "hook_calls", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("hook_instance", String(128), nullable=False),
    Column("service_id", String(64), nullable=False),
    Column("client_iss", String(512)),
    Column("received_at", DateTime(timezone=True), nullable=False, index=True),
    Column("latency_ms", Float, nullable=False),
    Column("decision_summary", String(256), nullable=False),
    Column("orders", JSON, nullable=False),  # [{"reference", "codes", "date_of_service", "outcome"}]
    Column("hook", String(32)),
    Column("request_digest", String(64)),  # SHA-256 of the request body: what was asked, without its content
    Column("retry_key", String(64)),  # issuer + hookInstance, hashed: one record per call (unique index below)
    Column("response", JSON),  # the response exactly as sent
)

coverage_assertions = Table(
    "coverage_assertions", metadata,
    Column("assertion_id", String(64), primary_key=True),
    Column("hook_instance", String(128), nullable=False),
    Column("client_iss", String(512)),
    Column("order_reference", String(256), nullable=False),
    Column("coverage_reference", String(256), nullable=False),
    Column("code", String(32), nullable=False),
    Column("covered", String(32), nullable=False),
    Column("pa_needed", String(32)),
    Column("reason", String(64), nullable=False),
    Column("policy", String(64), nullable=False),
    Column("policy_version", String(64), nullable=False),
    Column("artifact_version", String(64), nullable=False),
    Column("date_of_service", Date, nullable=False),  # first day of the date-of-service window
    Column("assertion_date", Date, nullable=False),
    Column("subject_key", String(64)),  # issuer + patient + order + coverage, hashed
    Column("fingerprint", String(64)),  # the verdict's content, hashed: same fingerprint, same assertion
    Column("information", JSON),  # the coverage-information extension as sent
    Column("date_of_service_end", Date),  # last day of the window (None: open, the order gave no date)
    Column("date_of_service_stated", Boolean),
    Column("expiry_date", Date),
)
Index("ux_hook_calls_retry_key", hook_calls.c.retry_key, unique=True)
Index("ix_coverage_assertions_subject", coverage_assertions.c.subject_key, coverage_assertions.c.fingerprint)

# One row per order and Coverage judged in a call (one with no Coverage when the order got no verdict):
# what decision history is filtered by. assertion_id is the id sent, new or reused.
verdicts = Table(
    "verdicts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("call_id", Integer, ForeignKey("hook_calls.id"), nullable=False, index=True),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("service_id", String(64), nullable=False),
    Column("client_iss", String(512)),
    Column("order_reference", String(256), nullable=False),
    Column("code", String(64)),
    Column("policy_outcome", String(64), nullable=False),  # what the policy says of the order's use
    Column("coverage_reference", String(256)),
    Column("covered", String(32)),
    Column("pa_needed", String(32)),
    Column("reason", String(64)),
    Column("assertion_id", String(64), index=True),
)

cards = Table(
    "cards", metadata,
    Column("uuid", String(64), primary_key=True),
    Column("hook_instance", String(128), nullable=False),
    Column("client_iss", String(512)),
    Column("service_id", String(64), nullable=False),
    Column("template", String(64), nullable=False),  # the PlanDefinition action the card was rendered from
    Column("card_type", String(32), nullable=False),
    Column("indicator", String(16), nullable=False),
    Column("order_reference", String(256)),
    Column("issued_at", DateTime(timezone=True), nullable=False),
    Column("call_id", Integer, index=True),
    Column("summary", String(256)),
    Column("suggestions", JSON),  # uuids of the suggestions the card offered
    Column("override_reasons", JSON),  # codes of the override reasons it offered
)

feedback = Table(
    "feedback", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service_id", String(64), nullable=False),
    Column("client_iss", String(512)),
    Column("card", String(128), nullable=False, index=True),
    Column("outcome", String(32), nullable=False),
    Column("accepted_suggestions", JSON),
    Column("override_reason", JSON),
    Column("outcome_timestamp", String(64), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False, index=True),
)

seen_jti = Table(
    "seen_jti", metadata,
    Column("iss", String(512), primary_key=True),
    Column("jti", String(256), primary_key=True),
    Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
)

# Alembic's own table, as Alembic creates it (not part of ``metadata``, which mirrors the migrations).
alembic_version = Table("alembic_version", MetaData(), Column("version_num", String(32), nullable=False),
                        PrimaryKeyConstraint("version_num", name="alembic_version_pkc"))

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# The newest migration in MIGRATIONS (a test checks it against Alembic's head). Knowing it lets a
# start-up against a current database skip importing Alembic at all (~0.1 s of cold start).
SCHEMA_REVISION = "0004"
# Token ids past their expiry are deleted in small batches, often: the (iss, jti) index they are deleted
# from is in random order, so each id costs ~11 us and a page of its own. Every 10 s without a bound, a
# sweep under ~1,000 authenticated calls a second (300,000 ids kept, 10,000 expired) took 105-115 ms
# inside one call's transaction, with every writer of every worker waiting behind it; 500 at most every
# 0.25 s per process is ~6 ms at a time, and keeps up with 4,000 expiring ids a second across 2 workers.
JTI_SWEEP_SECONDS = 0.25
JTI_SWEEP_ROWS = 500


class SchemaOutOfDate(Exception):
    pass


class TokenReused(Exception):
    """A client token id already stored: the token was used before."""


def upgrade_schema(engine: Engine) -> str:
    """Apply every pending migration; returns the revision now in place.

    Replicas may start together: PostgreSQL serialises them with an advisory lock, SQLite with a
    lock file beside the database, so only one applies each migration. A new SQLite file gets the
    tables as the migrations leave them (they mirror them: tested) and the head revision in one
    step, without Alembic: importing it and running four migrations was a fifth of a first start.
    """
    if current_revision(engine) == SCHEMA_REVISION:
        return SCHEMA_REVISION
    with _migration_lock(engine), engine.begin() as conn:
        if conn.dialect.name == "sqlite" and not inspect(conn).get_table_names():
            metadata.create_all(conn)
            alembic_version.create(conn)
            conn.execute(alembic_version.insert().values(version_num=SCHEMA_REVISION))
            return SCHEMA_REVISION
        from alembic import command
        from alembic.config import Config

        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(2267)"))
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
    return head_revision()


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    database = sqlite_file(engine)
    if database is None:
        yield
        return
    with open(f"{database}.migrate-lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def head_revision() -> str:
    """The newest revision among the migration scripts, as Alembic reads them."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision recorded in the database (Alembic's version table), or None when there is none."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        return str(revision) if revision is not None else None


def _json_text(value: Any) -> str:
    """JSON columns as orjson writes them (what the HTTP answer was), ~10x faster than the json module."""
    return fhir_json.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def _json_value(text: str | bytes) -> Any:
    try:
        return fhir_json.loads(text)
    except orjson.JSONDecodeError:  # rows written by the json module before: it wrote NaN and Infinity
        return json.loads(text)


def sqlite_file(engine: Engine) -> str | None:
    """The database file of a SQLite engine; None for PostgreSQL and for SQLite in memory."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    return database if database and database != ":memory:" else None


def make_engine(url: str, sqlite_synchronous: str = "NORMAL") -> Engine:
    json_options = {"json_serializer": _json_text, "json_deserializer": _json_value}
    if url.startswith("sqlite") and make_url(url).database in (None, "", ":memory:"):
        # One shared connection, or every thread would get its own empty in-memory database.
        engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False}, **json_options)
    else:
        # A server can drop idle connections; a file cannot, so SQLite skips the ping per checkout.
        engine = create_engine(url, pool_pre_ping=not url.startswith("sqlite"), **json_options)
    if engine.dialect.name == "sqlite":
        if sqlite_synchronous not in ("NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"setting SQLITE_SYNCHRONOUS: {sqlite_synchronous!r} is not NORMAL, FULL or EXTRA")

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a commit is in the WAL before the answer leaves, so it survives the
            # process being killed; only an OS crash or power cut can lose the last commits.
            cur.execute(f"PRAGMA synchronous={sqlite_synchronous}")
            cur.execute("PRAGMA busy_timeout=5000")
            cur.close()
    return engine


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._write_lock = _SqliteWriteLock(engine)
        self._connections = _IdleConnections(engine) if sqlite_file(engine) else _Pooled(engine)
        self._checkpoints = _Checkpointer(engine, self._write_lock)
        self._insert = {t.name: _Insert(t, engine.dialect) for t in (hook_calls, coverage_assertions, feedback,
                                                                      seen_jti, cards, verdicts)}
        assertions = coverage_assertions.c
        self._queries = {name: _Query(statement, engine.dialect) for name, statement in {
            "recorded_response": select(hook_calls.c.request_digest, hook_calls.c.response)
            .where(hook_calls.c.retry_key == bindparam("retry_key")),
            "issued_assertion": select(assertions.assertion_id, assertions.assertion_date)
            .where(assertions.subject_key == bindparam("subject_key"),
                   assertions.fingerprint == bindparam("fingerprint"))
            .order_by(assertions.assertion_date.desc()).limit(1),
            "expired_jti": delete(seen_jti).where(tuple_(seen_jti.c.iss, seen_jti.c.jti).in_(
                select(seen_jti.c.iss, seen_jti.c.jti)
                .where(seen_jti.c.expires_at < bindparam("now", type_=seen_jti.c.expires_at.type))
                .order_by(seen_jti.c.expires_at).limit(JTI_SWEEP_ROWS))),
        }.items()}
        self._last_sweep = float("-inf")  # the first write sweeps (monotonic time starts near 0 at boot)
        self._integrity_error = engine.dialect.loaded_dbapi.IntegrityError

    def require_current_schema(self) -> None:
        current, head = current_revision(self.engine), SCHEMA_REVISION
        if current != head:
            raise SchemaOutOfDate(f"database schema is at {current or 'nothing'}, the service needs {head}: "
                                  "run `python -m cds_service db upgrade`")

    def remember_jti(self, iss: str, jti: str, expires_at: datetime) -> bool:
        """Record a token id; False when it was seen before (a replay), on this replica or another."""
        try:
            with self._write() as cursor:
                self._remember_jti(cursor, {"iss": iss, "jti": jti, "expires_at": expires_at})
        except TokenReused:
            return False
        return True

    def _remember_jti(self, cursor: Any, row: dict[str, Any]) -> None:
        """Insert a token id (TokenReused if it is there already). Ids past their expiry are deleted, the
        oldest JTI_SWEEP_ROWS at most, every JTI_SWEEP_SECONDS per process, in the same transaction (a
        token past its exp is refused before it gets here, so a late sweep admits nothing)."""
        now = time.monotonic()
        if now - self._last_sweep >= JTI_SWEEP_SECONDS:
            self._last_sweep = now
            self._queries["expired_jti"].run(cursor, {"now": utcnow()})
        sql, params = self._insert["seen_jti"].prepare([row])
        try:
            cursor.execute(sql, params[0])
        except self._integrity_error as exc:
            raise TokenReused from exc

    def record_hook_call(self, call: dict[str, Any], verdict_rows: list[dict[str, Any]],
                         assertions: list[dict[str, Any]], issued_cards: list[dict[str, Any]],
                         token: dict[str, Any] | None = None) -> bool:
        """Store one call with its verdicts, new assertions and cards, and the client token's id, in one
        transaction. False when a call with the same retry key is already stored (an EHR retry raced
        this one); TokenReused when the token id is. Either way nothing is written."""
        sql, params = self._insert["hook_calls"].prepare([call])
        new_assertions = self._insert["coverage_assertions"].prepare(assertions) if assertions else None
        try:
            with self._write() as cursor:
                if token is not None:
                    self._remember_jti(cursor, token)
                cursor.execute(sql, params[0])
                call_id = cursor.fetchone()[0]
                if new_assertions:
                    cursor.executemany(*new_assertions)
                for table, rows in ((verdicts, verdict_rows), (cards, issued_cards)):  # linked to the call
                    if rows:
                        cursor.executemany(*self._insert[table.name].prepare([{**r, "call_id": call_id} for r in rows]))
        except self._integrity_error:
            return False
        return True

    def recorded_response(self, retry_key: str) -> tuple[str, dict[str, Any]] | None:
        """(request digest, response) of a stored call."""
        row = self._first("recorded_response", retry_key=retry_key)
        return (row[0], row[1]) if row else None

    def issued_assertion(self, subject_key: str, fingerprint: str) -> tuple[str, date] | None:
        """(assertion id, assertion date) of the verdict already given for this order and Coverage."""
        row = self._first("issued_assertion", subject_key=subject_key, fingerprint=fingerprint)
        return (row[0], row[1]) if row else None

    def cards_by_uuid(self, uuids: set[str]) -> dict[str, dict[str, Any]]:
        with self.engine.connect() as conn:
            found = conn.execute(select(cards.c.uuid, cards.c.service_id, cards.c.client_iss, cards.c.suggestions,
                                        cards.c.override_reasons).where(cards.c.uuid.in_(sorted(uuids)))).mappings()
            return {row["uuid"]: dict(row) for row in found}

    def record_feedback(self, rows: list[dict[str, Any]]) -> None:
        sql, params = self._insert["feedback"].prepare(rows)
        with self._write() as cursor:
            cursor.executemany(sql, params)

    # The hot path (every hook call) talks to the driver directly, with statements compiled once: there
    # SQLAlchemy's per-execution work (cache keys, result set-up, connection wrappers) cost several times
    # what the database itself does. Values go through the columns' own processors, so what is written and
    # read is exactly what SQLAlchemy would write and read.

    @contextmanager
    def _cursor(self) -> Iterator[Any]:
        """A driver cursor on a connection of the hot path, both given back on exit."""
        with self._connections.connection() as conn:
            cursor = conn.cursor()
            try:
                yield cursor
            finally:
                cursor.close()

    @contextmanager
    def _write(self) -> Iterator[Any]:
        """A cursor in a write transaction, under the store's write lock: committed on return, rolled
        back on error. The first write of a process starts its background checkpoints."""
        self._checkpoints.ensure_running()
        with self._write_lock, self._cursor() as cursor:
            try:
                yield cursor
                cursor.connection.commit()
            except BaseException:
                cursor.connection.rollback()
                raise

    def _first(self, query: str, **params: str) -> tuple[Any, ...] | None:
        with self._cursor() as cursor:
            return self._queries[query].first(cursor, params)

    def purge(self, cutoff: datetime, dry_run: bool = False) -> dict[str, int]:
        """Delete what is older than ``cutoff``: hook calls received before it with their verdicts, cards
        and the feedback on those cards, and assertions dated before it that no remaining call sent.
        One transaction; returns the rows deleted (or that would be) per table."""
        old_calls = select(hook_calls.c.id).where(hook_calls.c.received_at < cutoff)
        old_cards = select(cards.c.uuid).where((cards.c.call_id.in_(old_calls)) | (
            cards.c.call_id.is_(None) & (cards.c.issued_at < cutoff)))
        still_sent = (select(verdicts.c.assertion_id).where(verdicts.c.assertion_id.is_not(None),
                                                              verdicts.c.call_id.not_in(old_calls)))
        doomed = {
            feedback: (feedback.c.card.in_(old_cards)) | (feedback.c.received_at < cutoff),
            cards: cards.c.uuid.in_(old_cards),
            verdicts: verdicts.c.call_id.in_(old_calls),
            coverage_assertions: (coverage_assertions.c.assertion_date < cutoff.date())
            & coverage_assertions.c.assertion_id.not_in(still_sent),
            hook_calls: hook_calls.c.id.in_(old_calls),
        }
        counts: dict[str, int] = {}
        with self._write_lock, self.engine.begin() as conn:
            for table, condition in doomed.items():  # in this order: nothing left pointing at a deleted row
                counts[table.name] = int(conn.execute(select(func.count()).select_from(table)
                                                      .where(condition)).scalar_one())
                if not dry_run:
                    conn.execute(delete(table).where(condition))
        return counts

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


class _Insert:
    """One table's INSERT, compiled once, with its columns' bind processors, run as driver SQL.

    On the hot path SQLAlchemy's per-statement work (cache key, parameter processing, result set-up)
    cost more than SQLite's own insert and commit; the SQL text and value conversions are the ones
    SQLAlchemy itself would produce for this dialect, so rows read back exactly as before.
    """

    def __init__(self, table: Table, dialect: Dialect) -> None:
        names = [c.name for c in table.columns if not (c.primary_key and c.autoincrement is True)]
        statement = insert(table)
        if table is hook_calls:
            statement = statement.returning(table.c.id)  # the call's id, for its verdicts and cards
        compiled = statement.compile(dialect=dialect, column_keys=names)
        self.sql = str(compiled)
        order = list(compiled.positiontup or ()) if dialect.positional else names
        self.columns = [(n, table.c[n].type.dialect_impl(dialect).bind_processor(dialect)) for n in order]
        self.positional = dialect.positional

    def prepare(self, rows: list[dict[str, Any]]) -> tuple[str, Any]:
        values = [[(convert(row[n]) if convert else row[n]) for n, convert in self.columns] for row in rows]
        if self.positional:
            return self.sql, [tuple(v) for v in values]
        return self.sql, [dict(zip((n for n, _ in self.columns), v, strict=True)) for v in values]


class _Query:
    """One statement, compiled once, run on a driver cursor; parameters and values converted by the
    columns' own bind and result processors (what SQLAlchemy would send and return)."""

    def __init__(self, statement: Any, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = str(compiled)
        self.defaults = dict(compiled.params)  # e.g. the LIMIT
        self.order = list(compiled.positiontup or ()) if dialect.positional else None
        self.bind = {name: b.type.dialect_impl(dialect).bind_processor(dialect) for name, b in compiled.binds.items()}
        columns = statement.selected_columns if hasattr(statement, "selected_columns") else []
        self.convert = [c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns]

    def run(self, cursor: Any, params: dict[str, Any]) -> None:
        values = {**self.defaults, **params}
        values = {name: (convert(v) if (convert := self.bind.get(name)) else v) for name, v in values.items()}
        cursor.execute(self.sql, tuple(values[n] for n in self.order) if self.order is not None else values)

    def first(self, cursor: Any, params: dict[str, Any]) -> tuple[Any, ...] | None:
        self.run(cursor, params)
        row = cursor.fetchone()
        if row is None:
            return None
        return tuple(convert(v) if convert else v for convert, v in zip(self.convert, row, strict=True))


class _Pooled:
    """Hot-path connections from the engine's pool (PostgreSQL, where the pool pings a connection a
    server may have dropped; SQLite in memory, which is one shared connection)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextmanager
    def connection(self) -> Iterator[Any]:
        conn = self.engine.raw_connection()
        try:
            yield conn
        finally:
            conn.close()


class _IdleConnections:
    """Hot-path connections to a SQLite file, kept in a last-in-first-out list of idle ones.

    SQLAlchemy's pool cost ~24 us per checkout and return inside a call, three times a call (its
    wrappers, events and reset); a list's pop and append cost well under one. Connections are made
    by the engine (its connect listeners set the pragmas), then detached from its pool. A file
    connection needs no ping; one that saw an error is closed, not kept (the store rolls back
    first, but nothing is taken on trust); at most ``keep`` idle ones are kept (the `serve`
    server's thread per request must not pile them up); a forked child starts with none."""

    def __init__(self, engine: Engine, keep: int = 16) -> None:
        self.engine = engine
        self.keep = keep
        self._idle: list[Any] = []
        self._pid = os.getpid()

    @contextmanager
    def connection(self) -> Iterator[Any]:
        if self._pid != os.getpid():  # never use a parent's connection (gunicorn forks its workers)
            self._idle, self._pid = [], os.getpid()
        try:
            conn = self._idle.pop()  # atomic: threads never get the same one
        except IndexError:
            proxied = self.engine.raw_connection()
            proxied.detach()
            conn = proxied.dbapi_connection
        try:
            yield conn
        except BaseException:
            conn.close()
            raise
        if len(self._idle) < self.keep:
            self._idle.append(conn)
        else:
            conn.close()


class _SqliteWriteLock:
    """Queues SQLite writers: threads on a lock, processes on a lock file.

    SQLite lets one writer in at a time and makes the others poll with growing sleeps (up to
    100 ms each), which under load gave multi-second tails; queueing on locks wakes the next
    writer as soon as the last one commits. PostgreSQL needs none of this.
    """

    def __init__(self, engine: Engine) -> None:
        database = sqlite_file(engine)
        self.path = f"{database}.write-lock" if database else None
        self.thread_lock = threading.Lock()
        self._fd: int | None = None
        self._pid = 0

    def __enter__(self) -> None:
        if self.path is None:
            return
        self.thread_lock.acquire()
        if self._pid != os.getpid():  # one descriptor per process (gunicorn forks workers)
            self._fd, self._pid = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600), os.getpid()
        assert self._fd is not None
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        if self.path is None:
            return
        assert self._fd is not None
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self.thread_lock.release()


class _Checkpointer:
    """Copies SQLite's write-ahead log back into the database file from a background thread, one per
    process, so that no hook call pays for the copy. With SQLite's automatic checkpoint, the commit that
    crossed 1,000 log pages did the copy and its fsync itself, inside the store's write lock: ~30x the
    cost of a commit, once in every 60 or so calls (7.5 ms at p99 of the write, against 0.25 ms median).

    Each round is a passive checkpoint alongside the writers (the bulk of the copy), then a second one
    under the write lock, which copies only what was appended meanwhile. The log is then wholly copied,
    so the next writer starts it afresh: without that second step writers always appended during the
    checkpoint and the log grew without bound (2.5 GB a minute under load). A process that writes
    without starting one (the command line) leaves the log to SQLite's own checkpoint on close.

    One process checkpoints at a time (it holds a lock file beside the database; when it exits another
    takes over at its next round): one copy of the log is all it takes, and each round's step under the
    write lock (two fsyncs) makes every writer of every worker wait. Two workers under load: 75 fsyncs
    instead of 142 in the same 5 s (no change in CPU per call measurable here).

    Rounds are 0.05 s apart: the step under the lock lasts longer the more it copies and the larger the
    database has grown. On a store of 150,000 calls (1.4 GB) it held every writer 24-29 ms in 0.25-s
    rounds (9-10 ms on a new database), and p99 at 8 connections was 30-35 ms against 16 on a new
    database; 0.1-s rounds gave 21-23 ms, 0.05-s rounds 15.7-16.4 ms (0.02 s: 13.6-15.9 ms), for a few
    per cent of throughput. Idle, a round copies nothing and costs a lock and two statements."""

    INTERVAL_SECONDS = 0.05

    def __init__(self, engine: Engine, write_lock: _SqliteWriteLock) -> None:
        self.database = sqlite_file(engine)
        self.engine = engine if self.database else None
        self.write_lock = write_lock
        self._pid = 0
        self._lock = threading.Lock()
        self.elected = False  # this process is the one that checkpoints
        if self.engine is not None:
            event.listen(self.engine, "connect", _no_automatic_checkpoint)

    def ensure_running(self) -> None:
        if self.engine is None or self._pid == os.getpid():
            return
        with self._lock:
            if self._pid != os.getpid():  # a forked worker starts its own
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="sqlite-checkpoints", daemon=True).start()

    def _run(self) -> None:
        assert self.engine is not None
        lock_file = os.open(f"{self.database}.checkpoint-lock", os.O_CREAT | os.O_RDWR, 0o600)
        while True:
            time.sleep(self.INTERVAL_SECONDS)
            if not self.elected:
                try:  # held until this process exits; until then the others only try again each round
                    fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    self.elected = True
                except BlockingIOError:
                    continue
            try:
                conn = self.engine.raw_connection()
                try:
                    conn.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)").close()
                    with self.write_lock:
                        conn.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)").close()
                finally:
                    conn.close()
            except Exception:  # a busy or vanished database: the next round tries again
                log.warning("SQLite checkpoint failed", exc_info=True)


def _no_automatic_checkpoint(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.execute("PRAGMA wal_autocheckpoint=0")


def utcnow() -> datetime:
    return datetime.now(UTC)
