"""One hook call, end to end: parse -> gather facts -> decide -> render -> store.

Framework-free so the HTTP layer and the ``evaluate`` command run exactly the same path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from cds_service.auth import Client, TokenVerifier
from cds_service.decision import CoverageFacts, CoverageStatus, applies, decide
from cds_service.fhir_client import FetchError, FhirClient
from cds_service.intake import (
    HookCall,
    RequestError,
    coverage_facts,
    coverage_from_prefetch,
    parse_hook_call,
)
from cds_service.knowledge import Knowledge
from cds_service.observability import DECISIONS, FHIR_FETCH_ERRORS, hook_instance
from cds_service.render import RenderOptions, render
from cds_service.services import CONFIGURATION_OPTIONS, ServiceSpec
from cds_service.store import Store, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FhirAccess:
    """Which FHIR servers may be called, and how long a hook call may spend on them."""

    client: FhirClient
    unauthenticated_servers: tuple[str, ...]  # allow-list when no trusted issuers are configured
    allow_http: bool
    budget_seconds: float

    def allowed(self, server: str, client: Client | None) -> bool:
        base = server.rstrip("/")
        if not (base.startswith("https://") or (self.allow_http and base.startswith("http://"))):
            return False
        return base in (client.issuer.fhir_servers if client else self.unauthenticated_servers)


@dataclass
class Engine:
    knowledge: Knowledge
    store: Store
    services: dict[str, ServiceSpec]
    payer_label: str
    plan_keywords: tuple[str, ...]
    today: Callable[[], date]
    fhir: FhirAccess
    verifier: TokenVerifier | None = None
    public_base_url: str = ""

    def handle_hook(self, service_id: str, body: Any, client: Client | None = None) -> dict[str, Any]:
        started = time.perf_counter()
        deadline = time.monotonic() + self.fhir.budget_seconds  # for everything fetched in this call
        spec = self.services[service_id]
        today = self.today()
        call = parse_hook_call(body, spec.hook, self.knowledge, today)
        hook_instance.set(call.hook_instance)
        disabled = _disabled_card_types(call.configuration)

        judged = tuple(o for o in call.orders if applies(o, self.knowledge, call.patient_categories))
        call.validate_orders(judged)
        coverage = coverage_from_prefetch(call.prefetch.get("coverage"))
        if coverage is None:
            # Nobody's coverage is fetched for orders the policy has nothing to say about.
            coverage = (self._fetch_coverage(call, client, deadline) if judged
                        else CoverageFacts(CoverageStatus.UNAVAILABLE))
        decision = decide(judged, coverage, self.knowledge, today, self.plan_keywords, call.patient_categories)
        options = RenderOptions(self.payer_label, disabled, pages_base=self.public_base_url)
        rendered = render(decision, self.knowledge, options)
        for od in decision.orders:
            DECISIONS.labels(od.outcome.value).inc()

        orders_audit = [{"reference": od.order.reference, "codes": list(od.order.codes),
                         "date_of_service": od.order.date_of_service.isoformat(), "outcome": od.outcome.value}
                        for od in decision.orders]
        assertions = [{
            "assertion_id": ra.assertion_id, "hook_instance": call.hook_instance,
            "client_iss": client and client.iss, "order_reference": ra.order.order.reference,
            "coverage_reference": ra.assertion.coverage,
            "code": ra.order.code, "covered": ra.assertion.covered.value, "pa_needed": ra.assertion.pa_needed,
            "reason": ra.assertion.reason, "policy": self.knowledge.policy_label,
            "policy_version": self.knowledge.policy_version, "artifact_version": self.knowledge.artifact_digest,
            "date_of_service": ra.order.order.date_of_service, "assertion_date": today,
        } for ra in rendered.assertions]
        self.store.record_hook_call({
            "hook_instance": call.hook_instance, "service_id": service_id, "client_iss": client and client.iss,
            "received_at": utcnow(), "latency_ms": (time.perf_counter() - started) * 1000,
            "decision_summary": decision.summary, "orders": orders_audit,
        }, assertions)
        return rendered.response

    def _fetch_coverage(self, call: HookCall, client: Client | None, deadline: float) -> CoverageFacts:
        """Coverage the prefetch did not bring: fetched from an allowed fhirServer, else unknown.

        A null prefetch value is the client saying its query found nothing; that stands when the
        data cannot be fetched. Any failure leaves coverage UNAVAILABLE: never invented, never a 500.
        """
        found_nothing = "coverage" in call.prefetch and call.prefetch["coverage"] is None
        fallback = CoverageFacts(CoverageStatus.NONE if found_nothing else CoverageStatus.UNAVAILABLE)
        patient = call.context.get("patientId")
        if not call.fhir_server or not isinstance(patient, str) or not patient:
            return fallback
        if not self.fhir.allowed(call.fhir_server, client):
            FHIR_FETCH_ERRORS.labels("not-allowed").inc()
            log.warning("fhirServer %s is not on the allow-list; not called", call.fhir_server)
            return CoverageFacts(CoverageStatus.UNAVAILABLE)
        token = call.fhir_authorization["access_token"] if call.fhir_authorization else None
        try:
            resources = self.fhir.client.search(call.fhir_server, "Coverage", {"patient": patient, "status": "active"},
                                                token, deadline)
        except FetchError as exc:
            FHIR_FETCH_ERRORS.labels(exc.reason).inc()
            log.warning("coverage fetch failed: %s", exc)
            return CoverageFacts(CoverageStatus.UNAVAILABLE)
        return coverage_facts(resources)

    def handle_feedback(self, service_id: str, body: Any, client: Client | None = None) -> int:
        rows = parse_feedback(body, service_id)
        for row in rows:
            row["client_iss"] = client and client.iss
        self.store.record_feedback(rows)
        return len(rows)


def _disabled_card_types(configuration: dict[str, Any]) -> frozenset[str]:
    known = {o["code"] for o in CONFIGURATION_OPTIONS}
    disabled = set()
    for code, value in configuration.items():
        if code not in known:
            continue  # options we never advertised are ignored
        if not isinstance(value, bool):
            raise RequestError(f"Configuration option '{code}' must be a boolean",
                               f"extension.davinci-crd.configuration.{code}")
        if value is False:
            disabled.add(code)
    return frozenset(disabled)


FEEDBACK_OUTCOMES = ("accepted", "overridden")


def parse_feedback(body: Any, service_id: str) -> list[dict[str, Any]]:
    if not isinstance(body, dict) or not isinstance(body.get("feedback"), list) or not body["feedback"]:
        raise RequestError("The body must be an object with a non-empty 'feedback' list", "feedback")
    rows = []
    received = utcnow()
    for i, item in enumerate(body["feedback"]):
        where = f"feedback[{i}]"
        if not isinstance(item, dict):
            raise RequestError("Each feedback entry must be an object", where)
        card = item.get("card")
        if not isinstance(card, str) or not card.strip():
            raise RequestError("Missing 'card' (the card's uuid)", f"{where}.card")
        outcome = item.get("outcome")
        if outcome not in FEEDBACK_OUTCOMES:
            raise RequestError("'outcome' must be 'accepted' or 'overridden'", f"{where}.outcome")
        stamp = item.get("outcomeTimestamp")
        if not isinstance(stamp, str) or not _is_datetime(stamp):
            raise RequestError("'outcomeTimestamp' must be an ISO 8601 date-time", f"{where}.outcomeTimestamp")
        accepted = item.get("acceptedSuggestions")
        if accepted is not None and not (isinstance(accepted, list) and all(
                isinstance(s, dict) and isinstance(s.get("id"), str) for s in accepted)):
            raise RequestError("'acceptedSuggestions' must be a list of {\"id\": uuid}", f"{where}.acceptedSuggestions")
        if outcome == "accepted" and not accepted:
            raise RequestError("An accepted outcome needs 'acceptedSuggestions'", f"{where}.acceptedSuggestions")
        override = item.get("overrideReason")
        if override is not None:
            if outcome != "overridden" or not isinstance(override, dict):
                raise RequestError("'overrideReason' is an object, only with outcome 'overridden'",
                                   f"{where}.overrideReason")
            reason = override.get("reason")
            if reason is not None and not (isinstance(reason, dict) and isinstance(reason.get("code"), str)):
                raise RequestError("'overrideReason.reason' must be a Coding", f"{where}.overrideReason.reason")
            comment = override.get("userComment")
            if comment is not None and not isinstance(comment, str):
                raise RequestError("'overrideReason.userComment' must be a string",
                                   f"{where}.overrideReason.userComment")
        rows.append({"service_id": service_id, "card": card.strip(), "outcome": outcome,
                     "accepted_suggestions": accepted, "override_reason": override,
                     "outcome_timestamp": stamp, "received_at": received})
    return rows


def _is_datetime(value: str) -> bool:
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
        return True
    except ValueError:
        return False


def utc_today() -> date:
    return datetime.now(UTC).date()
