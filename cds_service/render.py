"""Render a Decision as a CDS Hooks 2.0 response: cards for people, CRD systemActions for machines.

Card wording comes from the PlanDefinition's action templates (fhir_profiles/); this module
only fills them in and applies the CDS Hooks / CRD structure rules.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from cds_service import terminology
from cds_service.decision import Assertion, CoverageStatus, Decision, OrderDecision, Outcome
from cds_service.knowledge.model import Knowledge, Link, Route, page_id

SUMMARY_LIMIT = 139  # CDS Hooks: summary SHALL be under 140 characters


@dataclass(frozen=True)
class RenderOptions:
    payer_label: str
    disabled_card_types: frozenset[str] = frozenset()  # CRD configuration: card types turned off
    pages_base: str = ""  # public base URL: when set, cards also link this service's policy pages
    new_id: Callable[[], str] = field(default=lambda: str(uuid.uuid4()))


@dataclass(frozen=True)
class RenderedAssertion:
    """A coverage assertion as sent, for the store."""

    assertion_id: str
    order: OrderDecision
    assertion: Assertion


@dataclass
class Rendered:
    response: dict[str, Any]
    assertions: list[RenderedAssertion]


class _Fill(dict[str, str]):
    def __missing__(self, key: str) -> str:  # an unknown placeholder stays visible rather than failing
        return "{" + key + "}"


def render(decision: Decision, knowledge: Knowledge, options: RenderOptions) -> Rendered:
    cards: list[dict[str, Any]] = []
    for od in decision.orders:
        cards.extend(_order_cards(od, decision, knowledge, options))
    if decision.no_active_coverage:
        codes = ", ".join(sorted({od.code or od.order.reference for od in decision.orders}))
        cards.append(_card("no-active-coverage", knowledge, options, [knowledge.policy_link],
                           {"codes": codes}))
    cards = [c for c in cards if c["source"]["topic"]["code"] not in options.disabled_card_types]

    actions: list[dict[str, Any]] = []
    sent: list[RenderedAssertion] = []
    if "coverage-info" not in options.disabled_card_types:
        for od in decision.orders:
            if od.assertions:
                ids = [options.new_id() for _ in od.assertions]
                actions.append(_coverage_update(od, ids, decision, knowledge))
                sent += [RenderedAssertion(i, od, a) for i, a in zip(ids, od.assertions, strict=True)]

    response: dict[str, Any] = {"cards": cards}
    if actions:
        response["systemActions"] = actions
        response["extension"] = {"systemActions": actions}  # the public sandbox reads only this copy
    return Rendered(response, sent)


# ---------------------------------------------------------------- cards


def _order_cards(od: OrderDecision, decision: Decision, knowledge: Knowledge,
                 options: RenderOptions) -> Iterable[dict[str, Any]]:
    order = od.order
    listed = knowledge.listed.get(od.code)
    values = {
        "code": od.code or order.text or order.reference,
        "display": listed.display if listed else order.text,
        "date_of_service": order.date_of_service.isoformat(),
        "date_basis": order.date_basis,
        "plan": "; ".join(d for c in od.own_manual_coverages for d in c.descriptors) or "the member's plan",
    }
    unavailable = decision.coverage.status is CoverageStatus.UNAVAILABLE
    governing = _route_links(od.routes, knowledge)

    if od.outcome is Outcome.INVESTIGATIONAL:
        related = governing or [_policy_link(knowledge, p) for p in (listed.related_policies if listed else ())]
        card = _card("investigational", knowledge, options, [knowledge.policy_link, *related], values,
                     extra=[_routes_paragraph(od.routes, knowledge, binding=True), _unavailable(unavailable)])
        card["overrideReasons"] = [c.as_fhir() for c in knowledge.override_reasons]
        if order.reference != "ServiceRequest":
            card["selectionBehavior"] = "at-most-one"
            card["suggestions"] = [{
                "label": f"Remove the {values['code']} order",
                "uuid": options.new_id(),
                "isRecommended": False,
                "actions": [{"type": "delete", "description": f"Remove the draft order for {values['code']}",
                             "resourceId": [order.reference]}],
            }]
        yield card
    elif od.outcome is Outcome.RETIRED:
        yield _card("retired", knowledge, options, [knowledge.successor, knowledge.policy_link, *governing], values,
                    extra=[_routes_paragraph(od.routes, knowledge, binding=False), _unavailable(unavailable)])
    elif od.outcome is Outcome.OTHER_POLICY:
        yield _card("other-policy", knowledge, options, [*governing, knowledge.policy_link],
                    {**values, **_route_values(od.routes, knowledge)})
    if od.own_manual_coverages:
        yield _card("fep", knowledge, options, [knowledge.fep_manual, knowledge.policy_link], values)


def _card(action_id: str, knowledge: Knowledge, options: RenderOptions, links: list[Link],
          values: dict[str, str], extra: Iterable[str] = ()) -> dict[str, Any]:
    template = knowledge.templates[action_id]
    fill = _Fill({"policy": knowledge.policy_label, "policy_title": knowledge.policy_title,
                  "retirement_date": knowledge.retirement.isoformat(), "successor": knowledge.successor.label,
                  "payer": options.payer_label, **values})
    summary = template.summary.format_map(fill)
    if len(summary) > SUMMARY_LIMIT:
        summary = summary[: SUMMARY_LIMIT - 1].rstrip() + "…"
    detail = "\n\n".join(p for p in (template.detail.format_map(fill), *extra) if p)
    unique = list(dict.fromkeys(links))
    if options.pages_base:
        unique.append(Link(f"{knowledge.policy_label} summary and code history (this service)",
                           f"{options.pages_base}/policies/{page_id(knowledge.policy_label)}"))
    return {
        "uuid": options.new_id(),
        "summary": summary,
        "detail": detail,
        "indicator": terminology.INDICATOR_BY_PRIORITY[template.priority],
        "source": {"label": options.payer_label, "url": knowledge.policy_link.url,
                   "topic": template.card_type.as_fhir()},
        "links": [{"label": link.label, "url": link.url, "type": "absolute"} for link in unique],
    }


def _policy_link(knowledge: Knowledge, number: str) -> Link:
    p = knowledge.policies[number]
    return Link(f"{p.label} {p.title}", p.url)


def _route_links(routes: tuple[Route, ...], knowledge: Knowledge) -> list[Link]:
    return [_policy_link(knowledge, r.policy) for r in routes if r.policy]


def _route_values(routes: tuple[Route, ...], knowledge: Knowledge) -> dict[str, str]:
    named = [knowledge.policies[r.policy] for r in routes if r.policy]
    labels = list(dict.fromkeys(p.label for p in named))
    sentences = list(dict.fromkeys(f"{p.label} ({p.title}) governs it." for p in named)) or [
        f"{knowledge.policy_label} names no single policy for it; check the payer's policy library."]
    return {
        "use": "; ".join(dict.fromkeys(r.use for r in routes)),
        "governing": " and ".join(labels) or "another policy",
        "governing_sentence": " ".join(sentences),
        "basis_sentence": _basis(routes, knowledge),
    }


def _basis(routes: tuple[Route, ...], knowledge: Knowledge) -> str:
    parts = []
    for r in routes:
        if r.basis == "inference":
            parts.append(f"*This routing is an inference, not {knowledge.policy_label}'s own words:* {r.comment}")
        else:
            parts.append(f"*This routing follows {knowledge.policy_label}'s own words:* {r.comment}")
    return "\n\n".join(dict.fromkeys(parts))


def _routes_paragraph(routes: tuple[Route, ...], knowledge: Knowledge, binding: bool) -> str:
    if not routes:
        return ""
    values = _route_values(routes, knowledge)
    lead = (f"This order's reason points to a use {knowledge.policy_label} does not address "
            f"({values['use']}); {values['governing_sentence']}")
    if binding:
        lead += f" The code is on {knowledge.policy_label}'s list, so the list still applies to it."
    return lead + "\n\n" + values["basis_sentence"]


def _unavailable(unavailable: bool) -> str:
    if not unavailable:
        return ""
    return ("_The patient's coverage could not be checked, so plan-specific variations (such as plans "
            "with their own policy manual) could not be checked either._")


# ---------------------------------------------------------------- CRD coverage information


def _coverage_update(od: OrderDecision, ids: list[str], decision: Decision, knowledge: Knowledge) -> dict[str, Any]:
    resource = pruned(od.order.resource)
    resource.setdefault("extension", [])
    resource["extension"] = [e for e in resource["extension"]
                             if not (isinstance(e, dict) and e.get("url") == terminology.CRD_COVERAGE_INFORMATION)]
    system = knowledge.code_system_cpt
    for assertion_id, a in zip(ids, od.assertions, strict=True):
        reason = knowledge.coverage_reasons[a.reason]
        sub: list[dict[str, Any]] = [
            {"url": "coverage", "valueReference": {"reference": a.coverage}},
            {"url": "covered", "valueCode": a.covered.value},
        ]
        if a.pa_needed:
            sub.append({"url": "pa-needed", "valueCode": a.pa_needed})
        if od.code:
            sub.append({"url": "billingCode", "valueCoding": {"system": system, "code": od.code}})
        sub += [
            {"url": "reason", "valueCodeableConcept": {"coding": [reason.as_fhir()], "text": _reason_text(a, od,
                                                                                                         knowledge)}},
            {"url": "detail", "extension": [
                {"url": "code", "valueCodeableConcept": {
                    "coding": [{"system": reason.system, "code": "medical-policy"}], "text": knowledge.policy_label}},
                {"url": "value", "valueUrl": knowledge.policy_link.url},
            ]},
            {"url": "date", "valueDate": decision.today.isoformat()},
            {"url": "coverage-assertion-id", "valueString": assertion_id},
        ]
        resource["extension"].append({"url": terminology.CRD_COVERAGE_INFORMATION, "extension": sub})
    return {"type": "update", "description": f"Coverage information for {od.code or od.order.reference}",
            "resource": resource}


def pruned(node: Any) -> Any:
    """A copy without empty strings, arrays or objects, which FHIR JSON does not allow."""
    if isinstance(node, dict):
        items = ((k, pruned(v)) for k, v in node.items())
        return {k: v for k, v in items if v not in ("", [], {}, None)}
    if isinstance(node, list):
        return [v for v in map(pruned, node) if v not in ("", [], {})]
    return node


def _reason_text(a: Assertion, od: OrderDecision, knowledge: Knowledge) -> str:
    day = od.order.date_of_service.isoformat()
    if od.outcome is Outcome.INVESTIGATIONAL:
        return f"{od.code} is investigational, therefore not covered, under {knowledge.policy_label} on {day}."
    return (f"{knowledge.policy_label} was retired effective {knowledge.retirement.isoformat()}; coverage is "
            f"reviewed under the delegated {knowledge.successor.label} program.")
