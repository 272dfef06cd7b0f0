"""The CDS services this product offers, each declared once: hook, prefetch templates (with what
fills each when the client leaves it out), configuration options. Discovery, the prefetch
completion and the OpenAPI service list are all derived from these declarations."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cds_service import terminology
from cds_service.intake import HookRequest, order_dispatch_context, order_select_context, order_sign_context
from cds_service.knowledge import Knowledge

Search = Callable[[HookRequest], tuple[str, dict[str, str]] | None]


@dataclass(frozen=True)
class Prefetch:
    key: str
    template: str  # as discovery declares it
    search: Search  # the FHIR search that stands in when the key is missing, null or an OperationOutcome


def _coverage_search(request: HookRequest) -> tuple[str, dict[str, str]]:
    return "Coverage", {"patient": request.patient_id, "status": "active"}


def _dispatched_search(request: HookRequest) -> tuple[str, dict[str, str]] | None:
    ids = [ref.split("/", 1)[1] for ref in request.missing_orders]
    return ("ServiceRequest", {"_id": ",".join(ids)}) if ids else None


# Read only when some order is judged (nobody's coverage is read for a blood count).
COVERAGE = Prefetch("coverage", "Coverage?patient={{context.patientId}}&status=active", _coverage_search)
# The IG's standard order-dispatch prefetch (FHIRPath-in-token, CRD found-23).
DISPATCHED_ORDERS = Prefetch(
    "serviceRequests", "ServiceRequest?_id={{context.dispatchedOrders.resolve().ofType(ServiceRequest).id}}",
    _dispatched_search)

# CRD configuration options (dev-4/dev-5): one per card type the services return, codes from the
# card-type code system. coverage-info also governs the coverage-information system actions.
CONFIGURATION_OPTIONS: tuple[dict[str, Any], ...] = (
    {"code": "coverage-info", "type": "boolean", "name": "Coverage information",
     "description": "Coverage verdicts: the coverage-information system actions and the cards that explain them "
                    "(investigational, retired policy, coverage not in force).",
     "default": True},
    {"code": "guideline", "type": "boolean", "name": "Governing policies",
     "description": "Cards pointing to the medical policy or manual that governs a use or a plan, and to the "
                    "policy's own documents.",
     "default": True},
)


@dataclass(frozen=True)
class ServiceDeclaration:
    id: str
    hook: str
    title: str
    description: str
    context: Callable[[HookRequest], HookRequest]  # reads the hook's context (and its orders) from the request
    prefetch: tuple[Prefetch, ...]
    primary: bool  # CRD primary hook: a coverage-information system action for every judged order

    def discovery(self) -> dict[str, Any]:
        return {"hook": self.hook, "id": self.id, "title": self.title, "description": self.description,
                "prefetch": {p.key: p.template for p in self.prefetch},
                "extension": {"davinci-crd.version": [terminology.CRD_VERSION],
                              "davinci-crd.configuration-options": list(CONFIGURATION_OPTIONS)}}


def declarations(knowledge: Knowledge) -> dict[str, ServiceDeclaration]:
    subject = (f"liquid-biopsy (ctDNA / CTC) orders against {knowledge.publisher} medical policy "
               f"{knowledge.policy_label}")
    services = (
        ServiceDeclaration("liquid-biopsy-order-sign", "order-sign", "Liquid biopsy coverage (order-sign)",
                           f"Checks signed {subject}; returns CRD coverage information and cards.",
                           order_sign_context, (COVERAGE,), primary=True),
        ServiceDeclaration("liquid-biopsy-order-select", "order-select", "Liquid biopsy coverage (order-select)",
                           f"Checks the selected {subject} while the clinician is still choosing.",
                           order_select_context, (COVERAGE,), primary=False),
        ServiceDeclaration("liquid-biopsy-order-dispatch", "order-dispatch", "Liquid biopsy coverage (order-dispatch)",
                           f"Checks dispatched {subject} when a performing laboratory is chosen; returns CRD "
                           "coverage information.",
                           order_dispatch_context, (COVERAGE, DISPATCHED_ORDERS), primary=True),
    )
    return {s.id: s for s in services}


def discovery(services: dict[str, ServiceDeclaration]) -> dict[str, Any]:
    return {"services": [s.discovery() for s in services.values()]}
