"""Persistence against SQLite and a real PostgreSQL: rows committed before the answer, replicas
sharing one database, and durability across kill -9.

PostgreSQL comes from CDS_TEST_POSTGRES_URL (set by .ci/run; default: this machine kind's server at
127.0.0.1:5432). If it is unreachable the PostgreSQL cases skip locally, and fail under CI=true so
they can never be skipped silently there.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import Engine, make_url

from cds_service import create_app
from cds_service.store import (
    SCHEMA_REVISION,
    SchemaOutOfDate,
    Store,
    coverage_assertions,
    feedback,
    head_revision,
    hook_calls,
    make_engine,
    seen_jti,
    upgrade_schema,
)
from tests.conftest import SIGN, assertion_ids, hook_request, service_request
from tests.processes import free_port, wait_until_answers

ROOT = Path(__file__).resolve().parents[1]
ISS = "https://replica-test.example"
KEY = ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    url = os.environ.get("CDS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    try:
        engine = create_engine(url, connect_args={"connect_timeout": 5})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL at {url} is unreachable under CI: {exc}")
        pytest.skip(f"PostgreSQL at {url} is unreachable")
    return url


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh database per test, dropped afterwards."""
    name = f"cds_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(postgres_admin_url).set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.sqlite3'}"
    url: str = request.getfixturevalue("postgres_url")
    upgrade_schema(make_engine(url))
    return url


def count(url: str, table: Any) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(table)).scalar_one())
    finally:
        engine.dispose()


# ---------------------------------------------------------------- both backends, in-process


def test_hook_call_assertion_and_feedback_are_stored(database_url: str) -> None:
    app = create_app({"DATABASE_URL": database_url, "TODAY": "2026-11-25"})
    client = app.test_client()
    body = client.post(f"/cds-services/{SIGN}", json=hook_request(service_request("0530U", "2025-03-03"))).get_json()
    [assertion_id] = assertion_ids(body)
    looked_up = client.get(f"/coverage-assertions/{assertion_id}").get_json()
    assert looked_up["covered"] == "not-covered" and looked_up["date_of_service"] == "2025-03-03"
    fb = {"feedback": [{"card": body["cards"][0]["uuid"], "outcome": "overridden",
                        "outcomeTimestamp": "2026-11-25T10:00:00Z"}]}
    assert client.post(f"/cds-services/{SIGN}/feedback", json=fb).status_code == 200
    assert (count(database_url, hook_calls), count(database_url, coverage_assertions),
            count(database_url, feedback)) == (1, 1, 1)


def test_a_retry_is_answered_with_the_decimals_as_written(database_url: str) -> None:
    """The stored answer is read back from the record (a JSON column on either backend) without turning
    1.50 into 1.5."""
    app = create_app({"DATABASE_URL": database_url, "TODAY": "2026-11-25"})
    client = app.test_client()
    request = hook_request(service_request("0530U", "2025-03-03"))
    request["context"]["draftOrders"]["entry"][0]["resource"]["quantityQuantity"] = {"value": 0.0}
    data = json.dumps(request).replace('"value": 0.0', '"value": 1.50').encode()
    first, retry = (client.post(f"/cds-services/{SIGN}", data=data, content_type="application/json").data
                    for _ in range(2))
    assert b'"quantityQuantity":{"value":1.50}' in first and retry == first


def test_schema_revision_is_the_newest_migration() -> None:
    assert head_revision() == SCHEMA_REVISION


def test_start_up_against_a_current_sqlite_database_does_not_load_alembic(tmp_path: Path) -> None:
    """Cold start: Alembic (~0.1 s of imports) is loaded only when an existing database has something to
    migrate (a new file is created without it), and pygal (~25 ms) only when a records page draws a chart."""
    probe = ("import sys; from cds_service import create_app; create_app({'DATABASE_URL': sys.argv[1]}); "
             "print('alembic' in sys.modules, 'pygal' in sys.modules)")
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    runs = [subprocess.run([sys.executable, "-c", probe, url], capture_output=True, text=True, check=True, cwd=ROOT)
            for _ in range(2)]
    # created the first time, only checked after; no chart library either time
    assert [r.stdout.strip() for r in runs] == ["False False", "False False"]
    assert count(url, hook_calls) == 0  # and the schema is in place


def test_postgres_schema_must_be_migrated_first(postgres_url: str) -> None:
    with pytest.raises(SchemaOutOfDate, match="db upgrade"):
        create_app({"DATABASE_URL": postgres_url})


def test_db_upgrade_command_on_postgres(postgres_url: str) -> None:
    out = subprocess.run([sys.executable, "-m", "cds_service", "db", "upgrade"], capture_output=True, text=True,
                         env={**os.environ, "CDS_DATABASE_URL": postgres_url}, cwd=ROOT, timeout=60)
    assert out.returncode == 0 and f"revision {SCHEMA_REVISION}" in out.stdout, out.stderr
    create_app({"DATABASE_URL": postgres_url})  # now starts


# ---------------------------------------------------------------- real processes


class ServiceProcess:
    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        # The server's log goes to a file: a pipe nobody reads would stall it once 64 KiB of lines pile up.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen([sys.executable, "-m", "cds_service", "serve", "--port", str(self.port)],
                                     env={**os.environ, **env}, cwd=ROOT, stdout=subprocess.DEVNULL,
                                     stderr=self.log)
        try:
            wait_until_answers(f"{self.base}/cds-services", self.proc)
        except RuntimeError as exc:
            self.log.seek(0)
            output = self.log.read().decode(errors="replace")
            self.stop()
            raise RuntimeError(f"{exc}\n{output}") from exc

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()


def issuers_file(tmp_path: Path) -> str:
    key = {**ECAlgorithm.to_jwk(KEY.public_key(), as_dict=True), "kid": "k1"}
    path = tmp_path / "issuers.json"
    path.write_text(json.dumps({"issuers": [{"iss": ISS, "jwks": {"keys": [key]}}]}))
    return str(path)


def token(url: str) -> str:
    now = int(time.time())
    return jwt.encode({"iss": ISS, "aud": url, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}, KEY,
                      algorithm="ES384", headers={"kid": "k1"})


def test_two_replicas_on_one_postgres(postgres_url: str, tmp_path: Path) -> None:
    upgrade_schema(make_engine(postgres_url))
    env = {"CDS_DATABASE_URL": postgres_url, "CDS_TRUSTED_ISSUERS": issuers_file(tmp_path), "CDS_TODAY": "2026-11-25"}
    replicas = [ServiceProcess(env), ServiceProcess(env)]
    try:
        calls_per_replica, feedback_per_replica = 40, 20

        def hook(replica: ServiceProcess) -> tuple[list[str], list[str]]:
            url = f"{replica.base}/cds-services/{SIGN}"
            orders = [service_request("0530U", "2025-03-03", rid="a"), service_request("0091U", "2025-03-03", rid="b")]
            patient = str(uuid.uuid4())  # each call another patient: each verdict a new assertion
            resp = requests.post(url, json=hook_request(*orders, patientId=patient),
                                 headers={"Authorization": f"Bearer {token(url)}"}, timeout=20)
            assert resp.status_code == 200, resp.text
            return assertion_ids(resp.json()), [c["uuid"] for c in resp.json()["cards"]]

        def send_feedback(replica: ServiceProcess, card: str) -> int:
            url = f"{replica.base}/cds-services/{SIGN}/feedback"
            fb = {"feedback": [{"card": card, "outcome": "overridden", "outcomeTimestamp": "2026-11-25T10:00:00Z"}]}
            return requests.post(url, json=fb, headers={"Authorization": f"Bearer {token(url)}"},
                                 timeout=20).status_code

        with ThreadPoolExecutor(max_workers=16) as pool:
            wave = [pool.submit(hook, r) for r in replicas for _ in range(calls_per_replica // 2)]
            first = [f.result() for f in wave]
            # Feedback on cards one replica issued, sent to the other, while both take more calls.
            cards = [c for _, cs in first for c in cs][: 2 * feedback_per_replica]
            hooks = [pool.submit(hook, r) for r in replicas for _ in range(calls_per_replica // 2)]
            fbs = [pool.submit(send_feedback, replicas[i % 2], c) for i, c in enumerate(cards)]
            ids = [i for ids, _ in first for i in ids] + [i for f in hooks for i in f.result()[0]]
            statuses = [f.result() for f in fbs]

        assert statuses == [200] * (2 * feedback_per_replica)
        assert len(ids) == 2 * calls_per_replica * 2 and len(set(ids)) == len(ids)  # no duplicate assertion ids
        assert count(postgres_url, hook_calls) == 2 * calls_per_replica  # no lost rows
        assert count(postgres_url, coverage_assertions) == len(ids)
        assert count(postgres_url, feedback) == 2 * feedback_per_replica
    finally:
        for r in replicas:
            r.stop()


def test_concurrent_retries_of_one_hook_instance_on_two_replicas_are_answered_alike_and_stored_once(
        postgres_url: str) -> None:
    upgrade_schema(make_engine(postgres_url))
    env = {"CDS_DATABASE_URL": postgres_url, "CDS_TODAY": "2026-11-25"}
    replicas = [ServiceProcess(env), ServiceProcess(env)]
    try:
        request = hook_request(service_request("0530U", "2025-03-03"))

        def send(replica: ServiceProcess) -> Any:
            resp = requests.post(f"{replica.base}/cds-services/{SIGN}", json=request, timeout=20)
            assert resp.status_code == 200, resp.text
            return resp.json()

        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(send, [r for r in replicas for _ in range(8)]))
        assert all(a == answers[0] for a in answers)  # the same cards (uuids too) and the same assertion
        assert count(postgres_url, hook_calls) == 1
        assert count(postgres_url, coverage_assertions) == 1
    finally:
        for r in replicas:
            r.stop()


def test_upgrade_from_0001_keeps_existing_records(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    migrate(engine, "0001")
    with engine.begin() as conn:
        for _ in range(2):  # the same hookInstance twice, as the old service allowed
            conn.execute(text("INSERT INTO hook_calls (hook_instance, service_id, received_at, latency_ms, "
                              "decision_summary, orders) VALUES ('h-old', 's', now(), 1, 'x', '[]')"))
    upgrade_schema(engine)
    assert count(postgres_url, hook_calls) == 2
    app = create_app({"DATABASE_URL": postgres_url, "TODAY": "2026-11-25"})
    body = app.test_client().post(f"/cds-services/{SIGN}", json=hook_request(service_request("0530U", "2025-03-03")))
    assert body.status_code == 200 and count(postgres_url, hook_calls) == 3
    engine.dispose()


def test_replayed_jti_rejected_by_the_other_replica(postgres_url: str, tmp_path: Path) -> None:
    upgrade_schema(make_engine(postgres_url))
    env = {"CDS_DATABASE_URL": postgres_url, "CDS_TRUSTED_ISSUERS": issuers_file(tmp_path),
           "CDS_PUBLIC_BASE_URL": "https://cds.payer.example"}  # both replicas sit behind one public URL
    first, second = ServiceProcess(env), ServiceProcess(env)
    try:
        path = f"/cds-services/{SIGN}"
        shared = token(f"https://cds.payer.example{path}")
        headers = {"Authorization": f"Bearer {shared}"}
        assert requests.post(first.base + path, json=hook_request(service_request()), headers=headers,
                             timeout=20).status_code == 200
        replay = requests.post(second.base + path, json=hook_request(service_request()), headers=headers, timeout=20)
        assert replay.status_code == 401 and "replay" in replay.json()["issue"][0]["diagnostics"]
        assert count(postgres_url, hook_calls) == 1
    finally:
        first.stop()
        second.stop()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_feedback_survives_kill_9_right_after_200(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'durable.sqlite3'}"
    else:
        url = request.getfixturevalue("postgres_url")
        upgrade_schema(make_engine(url))
    service = ServiceProcess({"CDS_DATABASE_URL": url})
    issued = requests.post(f"{service.base}/cds-services/{SIGN}", json=hook_request(service_request()), timeout=20)
    card = issued.json()["cards"][0]["uuid"]
    fb = {"feedback": [{"card": card, "outcome": "overridden", "outcomeTimestamp": "2026-11-25T10:00:00Z"}]}
    resp = requests.post(f"{service.base}/cds-services/{SIGN}/feedback", json=fb, timeout=20)
    os.kill(service.proc.pid, signal.SIGKILL)
    service.proc.wait(10)
    assert resp.status_code == 200
    engine = make_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(select(feedback.c.card).where(feedback.c.card == card)).all()
    engine.dispose()
    assert len(rows) == 1


# ---------------------------------------------------------------- retention


def test_purge_deletes_what_is_past_retention_and_keeps_what_later_calls_still_quote(database_url: str) -> None:
    from datetime import UTC, datetime, timedelta

    from cds_service.store import cards, verdicts

    client = create_app({"DATABASE_URL": database_url, "TODAY": "2026-11-25"}).test_client()

    def sign(patient: str) -> dict[str, Any]:
        body = client.post(f"/cds-services/{SIGN}", json=hook_request(service_request("0530U", "2025-03-03"),
                                                                          patientId=patient)).get_json()
        fb = {"feedback": [{"card": body["cards"][0]["uuid"], "outcome": "overridden",
                            "outcomeTimestamp": "2026-11-25T10:00:00Z"}]}
        assert client.post(f"/cds-services/{SIGN}/feedback", json=fb).status_code == 200
        return body

    old_quoted = sign("p-old")  # its assertion is sent again by the recent call below
    recent = sign("p-old")
    sign("p-gone")  # an old call whose assertion no later call sent
    assert assertion_ids(recent) == assertion_ids(old_quoted)
    long_ago = datetime.now(UTC) - timedelta(days=2200)
    engine = make_engine(database_url)
    with engine.begin() as conn:
        ids = conn.execute(select(hook_calls.c.id).order_by(hook_calls.c.id)).scalars().all()
        old = [ids[0], ids[2]]
        conn.execute(hook_calls.update().where(hook_calls.c.id.in_(old)).values(received_at=long_ago))
        conn.execute(verdicts.update().where(verdicts.c.call_id.in_(old)).values(received_at=long_ago))
        conn.execute(cards.update().where(cards.c.call_id.in_(old)).values(issued_at=long_ago))
        conn.execute(coverage_assertions.update().values(assertion_date=long_ago.date()))
    engine.dispose()
    before = {t.name: count(database_url, t) for t in (hook_calls, verdicts, cards, feedback, coverage_assertions)}

    def purge(*args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "cds_service", "db", "purge", *args], capture_output=True,
                             text=True, env={**os.environ, "CDS_DATABASE_URL": database_url}, cwd=ROOT, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert "would delete" in purge("--dry-run") and {
        t.name: count(database_url, t) for t in (hook_calls, verdicts, cards, feedback, coverage_assertions)} == before
    report = purge()
    assert "deleted" in report and "2 hook_calls" in report and "1 coverage_assertions" in report, report
    assert count(database_url, hook_calls) == 1
    assert count(database_url, feedback) == 1 and count(database_url, cards) == before["cards"] // 3
    # The assertion the recent call sent is still there to be quoted; the other old one is gone.
    engine = make_engine(database_url)
    with engine.connect() as conn:
        kept = conn.execute(select(coverage_assertions.c.assertion_id)).scalars().all()
    engine.dispose()
    assert kept == assertion_ids(recent)
    assert client.get(f"/coverage-assertions/{assertion_ids(recent)[0]}").status_code == 200


def test_purge_refuses_a_retention_below_one_day(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "cds_service", "db", "purge", "--older-than-days", "0"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60,
                         env={**os.environ, "CDS_DATABASE_URL": f"sqlite:///{tmp_path / 'x.sqlite3'}"})
    assert out.returncode == 1 and "1 or more" in out.stderr


def migrate(engine: Engine, revision: str = "head") -> None:
    """Alembic's own upgrade (upgrade_schema creates a new SQLite file without it)."""
    from alembic import command
    from alembic.config import Config

    from cds_service.store import MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def test_tables_in_code_mirror_the_migrations(database_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from cds_service.store import metadata

    engine = make_engine(database_url)
    migrate(engine)
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert differences == []


def test_a_new_sqlite_file_gets_the_migrations_schema_in_one_step(tmp_path: Path) -> None:
    """The tables, indexes and revision exactly as the four migrations leave them (bar the whitespace of
    columns added later), without loading Alembic; later migrations then apply to it as to any other."""
    import sqlite3

    def schema(path: Path) -> list[tuple[str, ...]]:
        with contextlib.closing(sqlite3.connect(path)) as conn:
            rows = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY type, name").fetchall()
        return [(kind, name, " ".join((sql or "").split())) for kind, name, sql in rows]

    migrate(make_engine(f"sqlite:///{tmp_path / 'migrated.sqlite3'}"))
    probe = ("import sys; from cds_service.store import make_engine, upgrade_schema; "
             "print(upgrade_schema(make_engine(sys.argv[1])), 'alembic' in sys.modules)")
    created = tmp_path / "created.sqlite3"
    out = subprocess.run([sys.executable, "-c", probe, f"sqlite:///{created}"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60, check=True).stdout.split()
    assert out == [SCHEMA_REVISION, "False"]
    assert schema(created) == schema(tmp_path / "migrated.sqlite3")
    assert upgrade_schema(make_engine(f"sqlite:///{created}")) == SCHEMA_REVISION


def test_an_older_sqlite_file_is_migrated_keeping_its_records(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    engine = make_engine(url)
    migrate(engine, "0002")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO hook_calls (hook_instance, service_id, received_at, latency_ms, "
                          "decision_summary, orders) VALUES ('h-old', 's', '2026-01-01 00:00:00', 1, 'x', '[]')"))
    assert upgrade_schema(engine) == SCHEMA_REVISION
    assert count(url, hook_calls) == 1
    app = create_app({"DATABASE_URL": url, "TODAY": "2026-11-25"})
    body = app.test_client().post(f"/cds-services/{SIGN}", json=hook_request(service_request("0530U", "2025-03-03")))
    assert body.status_code == 200 and count(url, hook_calls) == 2


def test_sqlite_log_is_checkpointed_in_the_background_not_by_a_hook_call(tmp_path: Path) -> None:
    """No hook call copies the write-ahead log into the database file (automatic checkpoints are off on
    the service's connections); a background thread does, so the file grows while calls come in."""
    import sqlite3
    import time

    path = tmp_path / "store.sqlite3"
    app = create_app({"DATABASE_URL": f"sqlite:///{path}", "TODAY": "2026-11-25"})
    engine = app.extensions["cds_pipeline"].store.engine
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
    client = app.test_client()
    before = path.stat().st_size
    for _ in range(60):
        assert client.post(f"/cds-services/{SIGN}", json=hook_request(service_request("0530U", "2025-03-03"))
                           ).status_code == 200
    deadline = time.monotonic() + 5
    while path.stat().st_size <= before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.stat().st_size > before  # the calls reached the database file, not only the log
    with sqlite3.connect(path) as other:  # and what is there is the calls, read by any connection
        assert other.execute("SELECT count(*) FROM hook_calls").fetchone()[0] == 60


def test_token_ids_are_remembered_once_and_swept_after_expiry(database_url: str) -> None:
    from datetime import UTC, datetime, timedelta

    if database_url.startswith("sqlite"):
        upgrade_schema(make_engine(database_url))
    store = Store(make_engine(database_url))
    now = datetime.now(UTC)
    with store.engine.begin() as conn:
        conn.execute(seen_jti.delete())
        conn.execute(seen_jti.insert().values(iss=ISS, jti="long-expired", expires_at=now - timedelta(hours=1)))
    assert store.remember_jti(ISS, "a", now + timedelta(minutes=5)) is True  # the first write sweeps
    assert store.remember_jti(ISS, "a", now + timedelta(minutes=5)) is False  # a replay
    assert store.remember_jti(ISS, "b", now + timedelta(minutes=5)) is True
    with store.engine.connect() as conn:
        assert sorted(r[0] for r in conn.execute(select(seen_jti.c.jti))) == ["a", "b"]
        stored = conn.execute(select(seen_jti.c.expires_at).where(seen_jti.c.jti == "a")).scalar_one()
    assert abs((stored.replace(tzinfo=stored.tzinfo or UTC) - (now + timedelta(minutes=5))).total_seconds()) < 1


def test_expired_token_ids_are_swept_oldest_first_a_bounded_batch_at_a_time(database_url: str,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Each sweep deletes at most JTI_SWEEP_ROWS expired ids, the oldest first, and none still valid: one
    unbounded sweep of 10,000 ids held every writer for ~110 ms."""
    from datetime import UTC, datetime, timedelta

    from cds_service import store as store_module

    if database_url.startswith("sqlite"):
        upgrade_schema(make_engine(database_url))
    monkeypatch.setattr(store_module, "JTI_SWEEP_ROWS", 3)  # compiled into the store's statement
    monkeypatch.setattr(store_module, "JTI_SWEEP_SECONDS", 3600.0)  # a sweep only when the test says
    store = Store(make_engine(database_url))
    now = datetime.now(UTC)
    with store.engine.begin() as conn:
        conn.execute(seen_jti.delete())
        conn.execute(seen_jti.insert(), [{"iss": ISS, "jti": f"expired-{i}",
                                          "expires_at": now - timedelta(minutes=10 - i)} for i in range(5)])
        conn.execute(seen_jti.insert().values(iss=ISS, jti="valid", expires_at=now + timedelta(minutes=5)))

    def kept() -> list[str]:
        with store.engine.connect() as conn:
            return sorted(r[0] for r in conn.execute(select(seen_jti.c.jti)))

    assert store.remember_jti(ISS, "a", now + timedelta(minutes=5)) is True  # sweeps the 3 oldest
    assert kept() == ["a", "expired-3", "expired-4", "valid"]
    assert store.remember_jti(ISS, "b", now + timedelta(minutes=5)) is True  # too soon for another sweep
    assert kept() == ["a", "b", "expired-3", "expired-4", "valid"]
    store._last_sweep -= 3600.0
    assert store.remember_jti(ISS, "c", now + timedelta(minutes=5)) is True
    assert kept() == ["a", "b", "c", "valid"]
    assert store.remember_jti(ISS, "a", now + timedelta(minutes=5)) is False  # still a replay


def test_sqlite_log_stays_bounded_while_calls_keep_coming(tmp_path: Path) -> None:
    """Background checkpoints copy the log while calls keep appending to it; the log must still be
    started afresh now and then, or it grows without bound (it reached 2.5 GB a minute under load)."""
    import time

    path = tmp_path / "store.sqlite3"
    app = create_app({"DATABASE_URL": f"sqlite:///{path}", "TODAY": "2026-11-25"})
    client = app.test_client()
    wal = Path(f"{path}-wal")
    calls, deadline = 0, time.monotonic() + 4
    while time.monotonic() < deadline:
        assert client.post(f"/cds-services/{SIGN}", json=hook_request(service_request("0530U", "2025-03-03"))
                           ).status_code == 200
        calls += 1
    written = calls * 12 * 4096  # what the log would hold by now, never restarted (~12 pages a call)
    assert wal.stat().st_size < min(32 * 2**20, written / 3), (calls, wal.stat().st_size)


def test_two_workers_on_one_sqlite_file_see_each_others_calls(tmp_path: Path) -> None:
    """Two workers (two stores) on one file: what one committed is what the other's next call reads,
    after the other has read and written itself: a retry sent to the other worker gets the first answer,
    and an assertion is reused across workers."""
    url = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    first, second = (create_app({"DATABASE_URL": url, "TODAY": "2026-11-25"}).test_client() for _ in range(2))
    order = service_request("0530U", "2025-03-03")
    warm = second.post(f"/cds-services/{SIGN}", json=hook_request(order)).get_json()  # second has read and written
    request = hook_request(order)
    answer = first.post(f"/cds-services/{SIGN}", json=request).get_json()
    assert second.post(f"/cds-services/{SIGN}", json=request).get_json() == answer  # the retry: first's answer
    ids = {json.dumps(a["resource"]["extension"]) for a in (warm["systemActions"] + answer["systemActions"])}
    assert len(ids) == 1  # first reused the assertion second issued for the same order and Coverage
    assert count(url, hook_calls) == 2


def test_database_files_stay_bounded_under_a_thread_per_request_server(service_factory: Any) -> None:
    """The `serve` command's server (werkzeug) starts a thread per request: connections come back to the
    store's idle list with each request (at most 16 kept), so the files the process holds open stay
    bounded however many calls it answers (a connection kept per thread instead left ~1 open file per
    call behind, 9 -> 55 in 150)."""
    cds = service_factory()
    database = make_url(cds.app.config["DATABASE_URL"]).database

    def open_database_files() -> int:
        return sum(1 for fd in Path("/proc/self/fd").iterdir()
                   if os.path.realpath(fd).startswith(str(database)))

    for _ in range(5):
        cds.call(hook_request(service_request("0530U", "2025-03-03")))
    before = open_database_files()
    for _ in range(60):
        cds.call(hook_request(service_request("0530U", "2025-03-03")))
    assert open_database_files() <= before + 6


def test_one_process_checkpoints_the_shared_log(tmp_path: Path) -> None:
    """Workers on one SQLite file elect one of them to copy the log back (a lock file beside the database):
    the others' writes are checkpointed too, and nobody's writes wait for two checkpoints a round."""
    import sqlite3
    import time

    path = tmp_path / "shared.sqlite3"
    apps = [create_app({"DATABASE_URL": f"sqlite:///{path}", "TODAY": "2026-11-25"}) for _ in range(2)]
    for app in apps:  # each one's first write starts its checkpoint thread
        for _ in range(20):
            assert app.test_client().post(f"/cds-services/{SIGN}", json=hook_request(
                service_request("0530U", "2025-03-03"))).status_code == 200
    checkpointers = [app.extensions["cds_pipeline"].store._checkpoints for app in apps]
    deadline = time.monotonic() + 5
    while not any(c.elected for c in checkpointers) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(3 * checkpointers[0].INTERVAL_SECONDS)  # rounds enough for a second one, were it allowed
    assert [c.elected for c in checkpointers].count(True) == 1

    def in_the_file() -> int:  # read as the database file holds it, the log ignored
        with sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True) as file_only:
            return int(file_only.execute("SELECT count(*) FROM hook_calls").fetchone()[0])

    deadline = time.monotonic() + 5  # both apps' calls reach the database file
    while in_the_file() < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert in_the_file() == 40


def test_hot_path_connections_to_a_sqlite_file_are_reused_and_kept_clean(tmp_path: Path) -> None:
    """The store's hot path keeps idle SQLite connections in a list instead of SQLAlchemy's pool: the
    last one given back is the next one taken, each has the service's pragmas, one that saw an error is
    closed rather than kept, at most ``keep`` idle ones stay, and a forked child never reuses one."""
    import sqlite3

    from cds_service.store import _IdleConnections

    url = f"sqlite:///{tmp_path / 'hot.sqlite3'}"
    upgrade_schema(make_engine(url))
    store = Store(make_engine(url))
    assert isinstance(store._connections, _IdleConnections)
    connections = _IdleConnections(store.engine, keep=2)
    with connections.connection() as first:
        assert first.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert first.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    with connections.connection() as again:
        assert again is first  # given back, taken again: no new connection
    with pytest.raises(ZeroDivisionError), connections.connection() as failed:
        raise ZeroDivisionError
    with pytest.raises(sqlite3.ProgrammingError):
        failed.execute("SELECT 1")  # closed, not kept
    with connections.connection() as a, connections.connection() as b, connections.connection() as c:
        assert len({id(a), id(b), id(c)}) == 3  # threads at once get a connection each
    assert len(connections._idle) == 2  # keep=2: the third was closed on its way back
    connections._pid = -1  # as if this process were a fork of the one that opened them
    with connections.connection() as in_child:
        assert in_child not in (a, b, c)
