"""The decision core: pure rules over plain values (no Flask, no I/O)."""

from cds_service.decision.model import (
    Assertion,
    CoverageFacts,
    CoverageStatus,
    Covered,
    Decision,
    Order,
    OrderDecision,
    Outcome,
    PlanCoverage,
)
from cds_service.decision.rules import applies, decide

__all__ = [
    "Assertion", "CoverageFacts", "CoverageStatus", "Covered", "Decision", "Order", "OrderDecision",
    "Outcome", "PlanCoverage", "applies", "decide",
]
