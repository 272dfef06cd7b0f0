"""Render a Decision as a CDS Hooks 2.0 response: cards for people, CRD system actions for machines.

Card wording comes from the PlanDefinition's action templates (fhir_profiles/), filled with the
same values the verdict's reason text uses (``rules.wording``); the verdicts themselves are
serialised by ``CoverageInformation.to_fhir``. This module only chooses which cards to show and
applies the CDS Hooks / CRD structure rules (External Reference cards carry no suggestions).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from cds_service import terminology
from cds_service.coverage_information import CoverageInformation, extensions_on
from cds_service.decision import Decision, OrderJudgement, PayerKind, Verdict
from cds_service.decision.rules import Context, Wording, fill, governing_policies, policy_url, wording
from cds_service.ids import new_id
from cds_service.knowledge.model import Knowledge, Link

SUMMARY_LIMIT = 139  # CDS Hooks: summary SHALL be under 140 characters
COVERAGE_CARDS = ("product-variation-manual", "no-active-coverage", "technical")
WARNINGS = ("investigational-code-list", "investigational-policy-statement")


@dataclass(frozen=True)
class Issued:
    """A verdict with the assertion id and date it is sent under, and whether the order needs it."""

    verdict: Verdict
    information: CoverageInformation
    fingerprint: str  # the verdict's content, hashed (CoverageInformation.fingerprint)
    new: bool  # first time this verdict was given (False: the id the EHR already has, reused)
    send: bool  # False when the order already carries exactly this coverage-information (CRD resp-35)
    extension: dict[str, Any] = field(init=False, compare=False)  # information.to_fhir(), made once

    def __post_init__(self) -> None:
        object.__setattr__(self, "extension", self.information.to_fhir())


@dataclass(frozen=True)
class RenderOptions:
    disabled_card_types: frozenset[str] = frozenset()  # CRD configuration: card types turned off
    primary_hook: bool = True  # order-sign / order-dispatch: systemActions is always present
    sandbox_note: tuple[str, str] | None = None  # sandbox mode, no verdict: (card template, why)
    new_id: Callable[[], str] = new_id


@dataclass
class Rendered:
    response: dict[str, Any]
    cards: list[dict[str, Any]]  # for the store: uuid, template, card type, indicator, order, what it offered


def render(decision: Decision, issued: dict[str, list[Issued]], knowledge: Knowledge, ctx: Context,
           options: RenderOptions) -> Rendered:
    cards: list[tuple[str, str, dict[str, Any]]] = []  # (template, order reference, card)
    for j in decision.judgements:
        cards += [(t, j.order.reference, c) for t, c in _order_cards(j, knowledge, ctx, options)]
    if decision.judgements and options.sandbox_note:
        template, why = options.sandbox_note
        values = Wording.of({"tests": ", ".join(dict.fromkeys(j.label for j in decision.judgements)),
                             "policy": knowledge.policy_label, "payer": knowledge.publisher, "problem_detail": why})
        cards.append((template, "", _card(template, knowledge, options, values, [])))
    shown = [(t, ref, c) for t, ref, c in cards if c["source"]["topic"]["code"] not in options.disabled_card_types]

    actions: list[dict[str, Any]] = []
    if "coverage-info" not in options.disabled_card_types:
        for j in decision.judgements:
            sent = issued.get(j.order.reference, [])
            if any(i.send for i in sent):
                actions.append(_coverage_update(j, sent))
    response: dict[str, Any] = {"cards": [c for _, _, c in shown]}
    if actions or options.primary_hook:
        response["systemActions"] = actions  # CRD: primary hooks always answer with systemActions
    if actions:
        response["extension"] = {"systemActions": actions}  # the public sandbox reads only this copy
    records = [{"uuid": c["uuid"], "template": t, "card_type": c["source"]["topic"]["code"],
                "indicator": c["indicator"], "order_reference": ref or None, "summary": c["summary"],
                "suggestions": [s["uuid"] for s in c.get("suggestions", []) if "uuid" in s],
                "override_reasons": [r["code"] for r in c.get("overrideReasons", [])]} for t, ref, c in shown]
    return Rendered(response, records)


# ---------------------------------------------------------------- cards


def _order_cards(j: OrderJudgement, knowledge: Knowledge, ctx: Context,
                 options: RenderOptions) -> Iterable[tuple[str, dict[str, Any]]]:
    policy_verdicts = [v for v in j.verdicts if v.reason not in COVERAGE_CARDS]
    template = policy_verdicts[0].reason if policy_verdicts else (j.policy_reason if not j.verdicts else None)
    if template is not None:
        verdict = policy_verdicts[0] if policy_verdicts else None
        values = wording(j, knowledge, verdict.coverage if verdict else None, verdict.segments if verdict else ())
        values["route_note"] = _route_note(j, knowledge) if template == "investigational-code-list" else ""
        card = _card(template, knowledge, options, values, _links(template, j, knowledge, ctx))
        if template in WARNINGS:
            card["overrideReasons"] = [c.as_fhir() for c in knowledge.override_reasons]
        yield template, card
        if template in WARNINGS and j.order.draft and j.order.named:
            yield "remove-order", _remove_order_card(j, knowledge, options, values)
    shown: set[tuple[str, str]] = set()
    for v in j.verdicts:
        if v.reason in COVERAGE_CARDS and (v.reason, v.coverage.reference) not in shown:
            shown.add((v.reason, v.coverage.reference))
            values = wording(j, knowledge, v.coverage, v.segments)
            links = ([v.coverage.variation.manual, _policy_link(knowledge, ctx)]
                     if v.coverage.payer is PayerKind.VARIATION and v.coverage.variation else [])
            yield v.reason, _card(v.reason, knowledge, options, values, links)


def _links(template: str, j: OrderJudgement, knowledge: Knowledge, ctx: Context) -> list[Link]:
    main = _policy_link(knowledge, ctx)
    governing = [Link(f"{p.label} {p.title}", policy_url(p.label, p.url, ctx))
                 for p in governing_policies(j, knowledge)]
    library = knowledge.policy_library
    if template == "investigational-code-list":
        listed = knowledge.listed[j.recognition.code]
        related = governing or [Link(f"{p.label} {p.title}", policy_url(p.label, p.url, ctx))
                                for p in (knowledge.policies[n] for n in listed.related_policies)]
        return [main, *related, library]
    if template == "policy-retired-delegated":
        # The card names the delegated reviewer but does not link its provider portal: CRD resp-17, no
        # External Reference card directs users to a portal to determine coverage.
        return [main, library]
    if template == "other-policy-governs":
        return [*governing, main]
    return [main, library]


def _policy_link(knowledge: Knowledge, ctx: Context) -> Link:
    return Link(f"{knowledge.policy_label} {knowledge.policy_title}",
                policy_url(knowledge.policy_label, knowledge.policy_link.url, ctx))


def _route_note(j: OrderJudgement, knowledge: Knowledge) -> str:
    """A listed code whose test or diagnosis points to a use another policy governs: say so, and that the
    list decides this order (only an order's stated purpose takes it out of the list)."""
    if not j.routes:
        return ""
    v = wording(j, knowledge)
    lead = (f"{j.recognition.test.display} is made for" if j.use.basis == "test" and j.recognition.test
            else "The order's diagnosis points to")
    return (f"\n\n{lead} {v['use']}, a use {v['policy']} leaves to {v['governing']} ({v['route_basis']}); "
            f"{v['code']} is on {v['policy']}'s list, so the list decides this order.")


def _remove_order_card(j: OrderJudgement, knowledge: Knowledge, options: RenderOptions,
                       values: Wording) -> dict[str, Any]:
    card = _card("remove-order", knowledge, options, values, [])
    card["selectionBehavior"] = "at-most-one"
    card["suggestions"] = [{
        "label": f"Remove the draft order for {j.label}",
        "uuid": options.new_id(),
        "isRecommended": False,
        "actions": [{"type": "delete", "description": f"Remove the draft order for {j.label}",
                     "resourceId": j.order.reference}],
    }]
    return card


def _card(template_id: str, knowledge: Knowledge, options: RenderOptions, values: Wording,
          links: list[Link]) -> dict[str, Any]:
    template = knowledge.templates[template_id]
    summary = fill(template.summary, values)
    if len(summary) > SUMMARY_LIMIT:
        summary = summary[: SUMMARY_LIMIT - 1].rstrip() + "…"
    card: dict[str, Any] = {
        "uuid": options.new_id(),
        "summary": summary,
        "detail": fill(template.detail, values),
        "indicator": terminology.INDICATOR_BY_PRIORITY[template.priority],
        "source": {"label": knowledge.publisher, "topic": template.card_type.as_fhir()},
    }
    unique = [link for link in dict.fromkeys(links) if link.url]
    if unique:
        card["links"] = [{"label": link.label, "url": link.url, "type": "absolute"} for link in unique]
    return card


# ---------------------------------------------------------------- CRD coverage information


def _coverage_update(j: OrderJudgement, sent: list[Issued]) -> dict[str, Any]:
    """An update of the order adding our coverage-information (replacing what we said before about the
    same Coverages) and changing nothing else (CRD resp-37)."""
    resource = dict(j.order.resource)  # already as echoed (pruned) by intake
    ours = {i.information.coverage for i in sent}
    kept = [e for e in resource.get("extension", []) if not _about(e, ours)]
    resource["extension"] = kept + [i.extension for i in sent]
    return {"type": "update", "description": f"Coverage information for {j.label}", "resource": resource}


def _about(extension: Any, coverages: set[str]) -> bool:
    if not isinstance(extension, dict) or not list(extensions_on({"extension": [extension]})):
        return False
    refs = {(e.get("valueReference") or {}).get("reference") for e in extension["extension"]
            if isinstance(e, dict) and e.get("url") == "coverage"}
    return bool(refs & coverages)
