"""One hook call, end to end, in one straight line:

parse the request for its hook -> complete the orders -> judge each order -> complete the coverage ->
select the Coverages this endpoint answers for -> decide one coverage-information per order and
Coverage -> issue stable assertion ids -> render -> record (an EHR's retry of a recorded call meets
the first call's record there, and gets its answer).

Framework-free so the HTTP layer and the ``evaluate`` command run exactly the same path.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Any

import orjson

from cds_service import fhir_json, terminology
from cds_service.auth import REPLAYED, AuthError, Client, TokenVerifier
from cds_service.coverage_information import verdict_fingerprint
from cds_service.decision import (
    Context,
    CoverageFacts,
    CoverageProblem,
    CoverageSource,
    Decision,
    Order,
    OrderJudgement,
    Selection,
    decide,
    judge,
    select,
)
from cds_service.fhir_client import FetchError, FhirClient
from cds_service.ids import new_id
from cds_service.intake import (
    ConditionIndex,
    HookRequest,
    OrderSource,
    RequestError,
    check_read_elements,
    coverage_records,
    coverage_resources,
    parse_request,
    to_order,
    validate_order,
)
from cds_service.knowledge import Knowledge
from cds_service.observability import FHIR_FETCH_ERRORS, decision_counter, hook_instance
from cds_service.render import Issued, RenderOptions, render
from cds_service.services import CONFIGURATION_OPTIONS, COVERAGE, DISPATCHED_ORDERS, Prefetch, ServiceDeclaration
from cds_service.store import Store, TokenReused, utcnow

log = logging.getLogger(__name__)

# Liquid-biopsy orders judged in one call (each is validated in full, judged, echoed and recorded, per
# Coverage): a real order-sign carries a handful; a bound keeps one request from holding a worker.
MOST_JUDGED_ORDERS = 25


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
class Pipeline:
    knowledge: Knowledge
    store: Store
    services: dict[str, ServiceDeclaration]
    today: Callable[[], date]
    fhir: FhirAccess
    mode: str = "crd"  # crd | sandbox (see README, "Modes")
    verifier: TokenVerifier | None = None
    public_base_url: str = ""

    def handle_hook(self, service_id: str, body: Any, client: Client | None = None,
                    base_url: str = "", record: bool = True) -> dict[str, Any]:
        """Answer one hook call. ``record=False`` (the playground) runs the same path but neither reads
        nor writes the store: no retry replay, fresh assertion ids, nothing kept.

        A client whose replay check was deferred (``client.token``) has its jti written in the call's
        own transaction (one commit, not two); on every other way out, an error included, it is
        remembered on its own before the answer leaves. Either way a second use is a 401."""
        token = client.token if client else None
        token_kept = False
        try:
            response, token_kept = self._answer(service_id, body, client, base_url, record)
            return response
        except TokenReused as exc:
            token_kept = True  # nothing was written: the token was used before
            raise AuthError(REPLAYED) from exc
        finally:
            if token is not None and not token_kept:
                self.check_replay(client)

    def check_replay(self, client: Client | None) -> None:
        if client is not None and client.token is not None and self.verifier is not None:
            self.verifier.check_replay(client.token)

    def _answer(self, service_id: str, body: Any, client: Client | None, base_url: str,
                record: bool) -> tuple[dict[str, Any], bool]:
        """(the response, whether the client token's jti was written with the call's record)."""
        token = client.token if client else None
        started = time.perf_counter()
        deadline = time.monotonic() + self.fhir.budget_seconds  # for everything fetched in this call
        service = self.services[service_id]
        request = parse_request(body, service.hook, service.context)
        hook_instance.set(request.hook_instance)
        iss = client.iss if client else ""
        retry_key = _digest(f"{iss}\n{request.hook_instance}")
        digest = hashlib.sha256(fhir_json.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
        if request.requested_version not in (None, terminology.CRD_VERSION):
            raise RequestError(f"CRD version {request.requested_version} is not supported; this service implements "
                               f"CRD {terminology.CRD_VERSION}", "extension.davinci-crd.requestedVersion", 422)
        disabled = _disabled_card_types(request.configuration)
        today = self.today()
        ctx = Context(today, (self.public_base_url or base_url).rstrip("/"))

        if DISPATCHED_ORDERS in service.prefetch:
            request = self._complete_orders(request, client, deadline)
        conditions = ConditionIndex(request.resources)
        patient_categories = conditions.categories(self.knowledge)
        judgements: list[OrderJudgement] = []
        for source in request.orders:
            judgement = judge(to_order(source, self.knowledge, today, conditions), self.knowledge, patient_categories)
            if judgement is not None and len(judgements) == MOST_JUDGED_ORDERS:
                raise RequestError(f"More than {MOST_JUDGED_ORDERS} liquid-biopsy orders in one call: send them in "
                                   "smaller calls", "context")
            if judgement is not None:  # judged: validated in full, and from here on in the form it is echoed
                echoed = replace(judgement.order, resource=validate_order(source.resource, source.location))
                judgements.append(replace(judgement, order=echoed))

        sandbox_note: tuple[str, str] | None = None
        selection = Selection(())
        if judgements:  # nobody's coverage is read for orders the policy has nothing to say about
            facts = self._coverage(request, client, deadline)
            selection = select(facts, self.knowledge)
            if selection.problem is not None:
                if self.mode == "crd":  # CRD hook-13: a Coverage this endpoint does not handle is a 400
                    raise RequestError(selection.message, "prefetch.coverage")
                if selection.problem is CoverageProblem.OTHER_PAYER:
                    judgements = []  # another payer's member: this payer's service has nothing to say
                else:
                    sandbox_note = (("no-coverage-found", selection.message)
                                    if facts.source is CoverageSource.NONE_FOUND
                                    else ("coverage-not-established", selection.message))
        decision = decide(judgements, selection, self.knowledge, ctx)

        issued = self._issue(decision, request, iss, look_up=record)
        options = RenderOptions(disabled, primary_hook=service.primary, sandbox_note=sandbox_note)
        rendered = render(decision, issued, self.knowledge, ctx, options)
        if not record:
            _count(decision)
            return rendered.response, False
        assertions = [self._assertion_row(request, iss, j, i)
                      for j in decision.judgements for i in issued.get(j.order.reference, []) if i.new]
        now = utcnow()
        call = {
            "hook_instance": request.hook_instance, "service_id": service_id, "hook": service.hook,
            "client_iss": client and client.iss, "received_at": now,
            "latency_ms": (time.perf_counter() - started) * 1000, "decision_summary": decision.summary,
            "orders": _audit(decision), "request_digest": digest, "retry_key": retry_key,
            "response": rendered.response,
        }
        cards = [{**c, "hook_instance": request.hook_instance, "client_iss": client and client.iss,
                  "service_id": service_id, "issued_at": now} for c in rendered.cards]
        verdict_rows = [{**row, "received_at": now, "service_id": service_id, "client_iss": client and client.iss}
                        for row in _verdict_rows(decision, issued)]
        token_row = {"iss": token.iss, "jti": token.jti, "expires_at": token.expires} if token else None
        # Retries are rare, so they are not looked up first: the record's unique retry key finds them.
        recorded = self.store.record_hook_call(call, verdict_rows, assertions, cards, token_row)
        if not recorded and (replay := self._recorded(retry_key, digest)) is not None:
            return replay, False  # this hookInstance was answered before (or meanwhile): answer what it did
        _count(decision)
        return rendered.response, recorded and token is not None

    # ------------------------------------------------------------ steps

    def _recorded(self, retry_key: str, digest: str) -> dict[str, Any] | None:
        """The answer already given to this hookInstance (an EHR retry), or None; a 409 when it was
        given to another request."""
        stored = self.store.recorded_response(retry_key)
        if stored is None:
            return None
        stored_digest, response = stored
        if stored_digest != digest:
            raise RequestError("This hookInstance was already used for a different request; each hook invocation "
                               "needs its own hookInstance", "hookInstance", 409)
        return response

    def _complete_orders(self, request: HookRequest, client: Client | None, deadline: float) -> HookRequest:
        """order-dispatch: the dispatched orders neither context nor prefetch carried, read from the fhirServer.
        A dispatched order that cannot be read is a 412 (CDS Hooks: required data neither prefetched nor
        obtainable from the FHIR server), one the fhirServer does not have a 400; never silently no answer."""
        missing = request.missing_orders
        if not missing:
            return request
        found, problem = self._search(request, DISPATCHED_ORDERS, client, deadline)
        where = "context.dispatchedOrders"
        if found is None:
            raise RequestError(f"Dispatched {_orders(missing)} could not be obtained: not in the "
                               f"'{DISPATCHED_ORDERS.key}' prefetch, and {problem}", where, 412)
        fetched: dict[str, OrderSource] = {}
        for resource in found:
            ref = f"ServiceRequest/{resource.get('id')}"
            if resource.get("resourceType") == "ServiceRequest" and ref in missing and ref not in fetched:
                check_read_elements(resource, f"fhirServer {ref}")
                fetched[ref] = OrderSource(resource, f"fhirServer {ref}", False)
        if absent := [r for r in missing if r not in fetched]:
            raise RequestError(f"Dispatched {_orders(absent)} not found: neither in the '{DISPATCHED_ORDERS.key}' "
                               "prefetch nor on the fhirServer", where)
        return replace(request, orders=(*request.orders, *fetched.values()))

    def _coverage(self, request: HookRequest, client: Client | None, deadline: float) -> CoverageFacts:
        """The Coverages of the request: from prefetch, else searched on the fhirServer, else unknown.
        A null prefetch value is the client saying its query found nothing; that stands when the data
        cannot be fetched. Nothing is invented and nothing raises past here."""
        value = request.prefetch.get(COVERAGE.key)
        resources = coverage_resources(value)
        if resources is None:
            resources, problem = self._search(request, COVERAGE, client, deadline)
            if resources is None:
                if COVERAGE.key in request.prefetch and value is None:
                    return CoverageFacts(CoverageSource.NONE_FOUND)
                why = f"the '{COVERAGE.key}' prefetch was not provided and {problem}"
                return CoverageFacts(CoverageSource.UNAVAILABLE, problem=why)
        records = coverage_records(resources, request.resources, self.knowledge)
        return CoverageFacts(CoverageSource.PROVIDED if records else CoverageSource.NONE_FOUND, records)

    def _search(self, request: HookRequest, prefetch: Prefetch, client: Client | None,
                deadline: float) -> tuple[list[dict[str, Any]] | None, str]:
        """What a prefetch key holds, searched on the request's fhirServer within the call's budget; else
        None and why it could not be searched."""
        query = prefetch.search(request)
        if query is None:
            return [], ""
        server = request.fhir_server
        if not server:
            return None, "the request names no fhirServer"
        if not self.fhir.allowed(server, client):
            FHIR_FETCH_ERRORS.labels("not-allowed").inc()
            log.warning("fhirServer %s is not on the allow-list; not called", server)
            return None, "the fhirServer is not one this service may call"
        token = request.fhir_authorization["access_token"] if request.fhir_authorization else None
        resource_type, params = query
        try:
            return self.fhir.client.search(server, resource_type, params, token, deadline), ""
        except FetchError as exc:
            FHIR_FETCH_ERRORS.labels(exc.reason).inc()
            log.warning("%s fetch failed: %s", resource_type, exc)
            return None, f"the {resource_type} search on the fhirServer failed ({exc})"

    def _issue(self, decision: Decision, request: HookRequest, iss: str,
               look_up: bool = True) -> dict[str, list[Issued]]:
        """Assertion ids that stay put: a verdict already given for this order and Coverage keeps its id
        and date; an order that carries exactly that coverage-information gets no system action (CRD
        resp-35). A verdict that changed gets a new id."""
        out: dict[str, list[Issued]] = {}
        for j in decision.judgements:
            held = {(ref, aid): verdict for ref, aid, verdict in j.order.held}
            for v in j.verdicts:
                subject = _subject_key(iss, request.patient_id, j.order, v.coverage.reference)
                verdict_json = v.information.verdict_json()
                fingerprint = verdict_fingerprint(verdict_json)
                previous = self.store.issued_assertion(subject, fingerprint) if look_up and subject else None
                if previous is not None:
                    information = v.information.issued(*previous)
                    carried = held.get((v.coverage.reference, previous[0]))
                    issued = Issued(v, information, fingerprint, new=False, send=carried != verdict_json)
                else:
                    information = v.information.issued(new_id(), decision.today)
                    issued = Issued(v, information, fingerprint, new=True, send=True)
                out.setdefault(j.order.reference, []).append(issued)
        return out

    def _assertion_row(self, request: HookRequest, iss: str, j: OrderJudgement, i: Issued) -> dict[str, Any]:
        info, window = i.information, j.order.window
        return {
            "assertion_id": info.assertion_id, "hook_instance": request.hook_instance, "client_iss": iss or None,
            "order_reference": j.order.reference, "coverage_reference": info.coverage,
            "code": j.recognition.code, "covered": info.covered.value,
            "pa_needed": info.pa_needed.value if info.pa_needed else None, "reason": i.verdict.reason,
            "policy": self.knowledge.policy_label, "policy_version": self.knowledge.policy_version,
            "artifact_version": self.knowledge.artifact_digest, "date_of_service": window.start,
            "date_of_service_end": window.end, "date_of_service_stated": window.stated,
            "assertion_date": info.date, "expiry_date": info.expiry_date,
            "subject_key": _subject_key(iss, request.patient_id, j.order, info.coverage),
            "fingerprint": i.fingerprint, "information": i.extension,
        }

    def handle_feedback(self, service_id: str, body: Any, client: Client | None = None) -> int:
        """Store feedback on cards this service issued (to this client, with trusted issuers). An entry
        about any other card is a 404, one naming a suggestion or override reason its card did not offer
        a 422; either way nothing of the request is stored."""
        rows = parse_feedback(body, service_id)
        issued = self.store.cards_by_uuid({row["card"] for row in rows})
        for i, row in enumerate(rows):
            where = f"feedback[{i}]"
            card = issued.get(row["card"])
            if card is None or card["service_id"] != service_id or (client and card["client_iss"] != client.iss):
                to = " to this client" if client else ""
                raise RequestError(f"No card with uuid '{row['card']}' was issued by service '{service_id}'{to}",
                                   f"{where}.card", 404)
            offered = card["suggestions"]
            for s in row["accepted_suggestions"] or []:
                if offered is not None and s["id"] not in offered:
                    raise RequestError(f"Card '{row['card']}' offered no suggestion '{s['id']}'",
                                       f"{where}.acceptedSuggestions", 422)
            code = ((row["override_reason"] or {}).get("reason") or {}).get("code")
            reasons = card["override_reasons"]  # None only for cards recorded before reasons were (unknown)
            if code is not None and reasons is not None and code not in reasons:
                listed = f"it offered {', '.join(reasons)}" if reasons else "it offered none"
                raise RequestError(f"Card '{row['card']}' offered no override reason '{code}' ({listed})",
                                   f"{where}.overrideReason.reason", 422)
            row["client_iss"] = client and client.iss
        self.store.record_feedback(rows)
        return len(rows)


def _count(decision: Decision) -> None:
    for j in decision.judgements:
        for v in j.verdicts:
            decision_counter(v.reason).inc()


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _subject_key(iss: str, patient: str, order: Order, coverage: str) -> str | None:
    """Which order of which patient under which Coverage a verdict is about, as one hash (no identifiers kept);
    None for an order without an id, which no later call can name: its verdicts are never looked up again."""
    if not order.named:
        return None
    return _digest(f"{iss}\n{patient}\n{order.reference}\n{coverage}")


def _orders(references: Iterable[str]) -> str:
    refs = list(references)
    return f"order{'s' if len(refs) > 1 else ''} {', '.join(refs)}"


def _verdict_rows(decision: Decision, issued: dict[str, list[Issued]]) -> list[dict[str, Any]]:
    """One row per order and Coverage judged (one without a Coverage for an order with no verdict)."""
    rows = []
    for j in decision.judgements:
        order = {"order_reference": j.order.reference[:256], "code": j.recognition.code or None,
                 "policy_outcome": j.policy_reason or "none"}
        sent = issued.get(j.order.reference, [])
        rows += [{**order, "coverage_reference": i.information.coverage, "covered": i.information.covered.value,
                  "pa_needed": i.information.pa_needed.value if i.information.pa_needed else None,
                  "reason": i.verdict.reason, "assertion_id": i.information.assertion_id} for i in sent]
        if not sent:
            rows.append({**order, "coverage_reference": None, "covered": None, "pa_needed": None, "reason": None,
                         "assertion_id": None})
    return rows


def _audit(decision: Decision) -> list[dict[str, Any]]:
    return [{"reference": j.order.reference, "codes": [c for _, c, _ in j.order.codings],
             "date_of_service": j.order.window.describe(), "outcome": j.policy_reason or "none",
             "verdicts": [v.reason for v in j.verdicts]} for j in decision.judgements]


def _disabled_card_types(configuration: dict[str, Any]) -> frozenset[str]:
    known = {o["code"] for o in CONFIGURATION_OPTIONS}
    disabled = set()
    for code, value in configuration.items():
        if code not in known:
            continue  # options we never advertised are ignored (CRD dev-17)
        if not isinstance(value, bool):
            raise RequestError(f"Configuration option '{code}' must be a boolean",
                               f"extension.davinci-crd.configuration.{code}")
        if value is False:
            disabled.add(code)
    return frozenset(disabled)


FEEDBACK_OUTCOMES = ("accepted", "overridden")


MAX_CARD_ID, MAX_TIMESTAMP = 128, 64  # the store's column lengths


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
        if not isinstance(card, str) or not card.strip() or len(card) > MAX_CARD_ID:
            raise RequestError(f"Missing 'card' (the card's uuid, at most {MAX_CARD_ID} characters)", f"{where}.card")
        outcome = item.get("outcome")
        if outcome not in FEEDBACK_OUTCOMES:
            raise RequestError("'outcome' must be 'accepted' or 'overridden'", f"{where}.outcome")
        stamp = item.get("outcomeTimestamp")
        if not isinstance(stamp, str) or len(stamp) > MAX_TIMESTAMP or not _is_datetime(stamp):
            raise RequestError("'outcomeTimestamp' must be an ISO 8601 date-time", f"{where}.outcomeTimestamp")
        # Present means well-formed: CDS Hooks JSON has no nulls.
        accepted = item.get("acceptedSuggestions")
        if "acceptedSuggestions" in item and not (isinstance(accepted, list) and all(
                isinstance(s, dict) and isinstance(s.get("id"), str) for s in accepted)):
            raise RequestError("'acceptedSuggestions' must be a list of {\"id\": uuid}", f"{where}.acceptedSuggestions")
        if outcome == "accepted" and not accepted:
            raise RequestError("An accepted outcome needs 'acceptedSuggestions'", f"{where}.acceptedSuggestions")
        override = item.get("overrideReason")
        if "overrideReason" in item:
            if outcome != "overridden" or not isinstance(override, dict):
                raise RequestError("'overrideReason' is an object, only with outcome 'overridden'",
                                   f"{where}.overrideReason")
            reason = override.get("reason")
            if "reason" in override and not (isinstance(reason, dict) and isinstance(reason.get("code"), str)):
                raise RequestError("'overrideReason.reason' must be a Coding", f"{where}.overrideReason.reason")
            comment = override.get("userComment")
            if "userComment" in override and not isinstance(comment, str):
                raise RequestError("'overrideReason.userComment' must be a string",
                                   f"{where}.overrideReason.userComment")
        rows.append({"service_id": service_id, "card": card.strip(), "outcome": outcome,
                     "accepted_suggestions": accepted, "override_reason": override,
                     "outcome_timestamp": stamp, "received_at": received})
    # The same entry sent twice in one request is one outcome (it would count twice in the analytics).
    unique: dict[bytes, dict[str, Any]] = {}
    for r in rows:
        unique.setdefault(fhir_json.dumps([r["card"], r["outcome"], r["accepted_suggestions"], r["override_reason"],
                                           r["outcome_timestamp"]], option=orjson.OPT_SORT_KEYS), r)
    return list(unique.values())


RFC3339 = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-](\d{2}):(\d{2}))")


def _is_datetime(value: str) -> bool:
    """An RFC 3339 date-time (what CDS Hooks' outcomeTimestamp is), a real calendar day included."""
    m = RFC3339.fullmatch(value)
    if m is None:
        return False
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    offset_ok = m.group(9) is None or (int(m.group(9)) < 24 and int(m.group(10)) < 60)
    try:
        date(year or 2000, month, day)  # RFC 3339 has a year 0000 (a leap year); Python's calendar starts at 1
    except ValueError:
        return False
    return hour < 24 and minute < 60 and second <= 60 and offset_ok  # :60 is a leap second


def utc_today() -> date:
    return datetime.now(UTC).date()
