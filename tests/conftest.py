"""Shared fixtures: request builders, the knowledge, and the service behind a real HTTP server."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from werkzeug.serving import make_server

from cds_service import create_app
from cds_service.knowledge import Knowledge, load_knowledge
from tests import report
from tests.crd_conformance import CRD_EXT, assert_valid_response

CPT = "http://www.ama-assn.org/go/cpt"
SERVICE_BY_HOOK = {"order-sign": "liquid-biopsy-order-sign", "order-select": "liquid-biopsy-order-select",
                   "order-dispatch": "liquid-biopsy-order-dispatch"}
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
SIGN = "liquid-biopsy-order-sign"
SELECT = "liquid-biopsy-order-select"
DISPATCH = "liquid-biopsy-order-dispatch"
TODAY = "2026-11-25"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for path in report.SCREENSHOTS:
        terminalreporter.write_line(f"playground screenshot: {path}")


# ---------------------------------------------------------------- builders


def service_request(code: str | None = "0530U", dos: str | None = "2025-03-03", rid: str = "sr-1",
                    icd: tuple[str, ...] = (), purposes: tuple[str, ...] = (), system: str = CPT,
                    purpose_system: str | None = None, **extra: Any) -> dict[str, Any]:
    res: dict[str, Any] = {"resourceType": "ServiceRequest", "id": rid, "status": "draft", "intent": "order",
                           "subject": {"reference": "Patient/p1"}}
    if code is not None:
        res["code"] = {"coding": [{"system": system, "code": code}]}
    if dos is not None:
        res["occurrenceDateTime"] = dos
    reasons = [{"coding": [{"system": ICD, "code": c}]} for c in icd]
    if purposes:
        assert purpose_system, "purpose codes need the purpose system"
        reasons += [{"coding": [{"system": purpose_system, "code": p}]} for p in purposes]
    if reasons:
        res["reasonCode"] = reasons
    res.update(extra)
    return res


def coverage(cid: str = "cov-1", payor: str | None = "Capital Blue Cross", plan: str = "PPO Gold",
             status: str = "active", **extra: Any) -> dict[str, Any]:
    res: dict[str, Any] = {"resourceType": "Coverage", "id": cid, "status": status,
                           "beneficiary": {"reference": "Patient/p1"},
                           "class": [{"type": {"coding": [{"code": "plan"}]}, "value": plan, "name": plan}]}
    if payor is not None:
        res["payor"] = [{"display": payor}]
    res.update(extra)
    return res


def bundle(*resources: dict[str, Any], type_: str | None = "searchset") -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "Bundle", "entry": [{"resource": r} for r in resources]}
    if type_:
        out["type"] = type_
    return out


def hook_request(*orders: dict[str, Any], hook: str = "order-sign", coverages: tuple[dict[str, Any], ...] | None =
                 (coverage(),), prefetch: dict[str, Any] | None = None, **context: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": hook, "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/1", "patientId": "p1",
                    "draftOrders": bundle(*orders, type_="collection"), **context},
    }
    pre: dict[str, Any] = {}
    if coverages is not None:
        pre["coverage"] = bundle(*coverages)
    pre.update(prefetch or {})
    body["prefetch"] = pre
    return body


def dispatch_request(*orders: dict[str, Any], coverages: tuple[dict[str, Any], ...] | None = (coverage(),),
                     dispatched: tuple[str, ...] | None = None, prefetch: dict[str, Any] | None = None,
                     **context: Any) -> dict[str, Any]:
    """An order-dispatch call: the dispatched orders exist already (status active) and come by prefetch."""
    refs = dispatched if dispatched is not None else tuple(f"ServiceRequest/{o['id']}" for o in orders)
    body: dict[str, Any] = {
        "hook": "order-dispatch", "hookInstance": str(uuid.uuid4()),
        "context": {"patientId": "p1", "dispatchedOrders": list(refs), "performer": "Organization/lab-1",
                    **context},
    }
    pre: dict[str, Any] = {"serviceRequests": bundle(*orders)} if orders else {}
    if coverages is not None:
        pre["coverage"] = bundle(*coverages)
    pre.update(prefetch or {})
    body["prefetch"] = pre
    return body


def coverage_info(response: dict[str, Any]) -> list[dict[str, dict[str, Any]]]:
    """Each CRD coverage-information instance in a hook response, as {sub-extension url: sub-extension}."""
    return [{e["url"]: e for e in ext["extension"]}
            for action in response.get("systemActions", [])
            for ext in action["resource"].get("extension", []) if ext["url"] == CRD_EXT]


def assertion_ids(response: dict[str, Any]) -> list[str]:
    return [i["coverage-assertion-id"]["valueString"] for i in coverage_info(response)]


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def knowledge() -> Knowledge:
    return load_knowledge()


@pytest.fixture
def purpose_system(knowledge: Knowledge) -> str:
    return knowledge.purpose_system


class LiveService:
    """The service behind a real HTTP server on 127.0.0.1, called with requests as a client would."""

    def __init__(self, base: str, app: Any) -> None:
        self.base = base
        self.app = app
        self.http = requests.Session()

    @property
    def pipeline(self) -> Any:
        return self.app.extensions["cds_pipeline"]

    def url(self, path: str) -> str:
        return self.base + path

    def call(self, body: Any, service: str | None = None, expect: int = 200) -> dict[str, Any]:
        """POST a hook request; every 200 answer is checked against the CDS Hooks / CRD rules."""
        service = service or SERVICE_BY_HOOK.get(str(body.get("hook")) if isinstance(body, dict) else "", SIGN)
        resp = self.http.post(self.url(f"/cds-services/{service}"), json=body, timeout=10)
        assert resp.status_code == expect, resp.text
        data: dict[str, Any] = resp.json()
        if expect == 200:
            assert_valid_response(data, body)
        return data

    def card_templates(self, hook_instance: str) -> list[str]:
        """The card templates a call issued, as recorded (in the order they were sent)."""
        from sqlalchemy import select

        from cds_service.store import cards

        with self.pipeline.store.engine.connect() as conn:
            rows = conn.execute(select(cards.c.template, cards.c.uuid)
                                .where(cards.c.hook_instance == hook_instance)).all()
        return [r[0] for r in rows]

    def post_raw(self, path: str, data: bytes, content_type: str = "application/json") -> requests.Response:
        return self.http.post(self.url(path), data=data, headers={"Content-Type": content_type}, timeout=10)


def start_server(app: Any) -> tuple[Any, threading.Thread, str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return server, thread, f"http://127.0.0.1:{server.server_port}"


@pytest.fixture
def service_factory(tmp_path: Path) -> Iterator[Any]:
    servers: list[tuple[Any, threading.Thread]] = []

    def make(**config: Any) -> LiveService:
        settings = {"DATABASE_URL": f"sqlite:///{tmp_path / f'cds-{len(servers)}.sqlite3'}", "TODAY": TODAY,
                    **config}
        app = create_app(settings)
        server, thread, base = start_server(app)
        servers.append((server, thread))
        return LiveService(base, app)

    yield make
    for server, thread in servers:
        server.shutdown()
        thread.join(timeout=5)


@pytest.fixture
def cds(service_factory: Any) -> LiveService:
    service: LiveService = service_factory()
    return service
