"""The CDS services this product offers, declared once: discovery is generated from these."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cds_service.knowledge import Knowledge

PREFETCH = {
    "patient": "Patient/{{context.patientId}}",
    "coverage": "Coverage?patient={{context.patientId}}&status=active",
}

# CRD configuration options: each turns one card type (and, for coverage-info, the
# coverage-information systemActions) on or off for a request.
CONFIGURATION_OPTIONS = (
    {"code": "coverage-info", "type": "boolean", "name": "Coverage information",
     "description": "Coverage verdicts: warning/info cards and CRD coverage-information systemActions.",
     "default": True},
    {"code": "external-reference", "type": "boolean", "name": "Other applicable policies",
     "description": "Information cards pointing to the policy that governs a use or a plan.", "default": True},
)


@dataclass(frozen=True)
class ServiceSpec:
    id: str
    hook: str
    title: str
    description: str


def service_specs(knowledge: Knowledge) -> dict[str, ServiceSpec]:
    subject = (f"liquid-biopsy (ctDNA / CTC) orders against {knowledge.publisher} medical policy "
               f"{knowledge.policy_label}")
    specs = (
        ServiceSpec("liquid-biopsy-order-sign", "order-sign", "Liquid biopsy coverage (order-sign)",
                    f"Checks signed {subject}: investigational codes, retired policy, FEP, and uses other "
                    "policies govern; returns cards and CRD coverage information."),
        ServiceSpec("liquid-biopsy-order-select", "order-select", "Liquid biopsy coverage (order-select)",
                    f"Checks the selected {subject} while the clinician is still choosing."),
    )
    return {s.id: s for s in specs}


def discovery(specs: dict[str, ServiceSpec]) -> dict[str, Any]:
    return {"services": [
        {"hook": s.hook, "id": s.id, "title": s.title, "description": s.description, "prefetch": PREFETCH,
         "extension": {"davinci-crd.configuration-options": list(CONFIGURATION_OPTIONS)}}
        for s in specs.values()
    ]}
