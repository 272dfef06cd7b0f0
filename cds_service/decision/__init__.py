"""The decision core: pure rules over plain values (no Flask, no I/O).

``judge`` says what the policy says about an order; ``members.select`` says which Coverages this
endpoint answers for; ``decide`` turns both into one CRD coverage-information per order and Coverage.
"""

from cds_service.decision.members import identify, select
from cds_service.decision.model import (
    CoverageFacts,
    CoverageProblem,
    CoverageRecord,
    CoverageSource,
    DateWindow,
    Decision,
    Diagnosis,
    MemberCoverage,
    Order,
    OrderJudgement,
    PayerKind,
    Recognised,
    Selection,
    Verdict,
)
from cds_service.decision.rules import Context, decide, judge

__all__ = [
    "Context", "CoverageFacts", "CoverageProblem", "CoverageRecord", "CoverageSource", "DateWindow", "Decision",
    "Diagnosis", "MemberCoverage", "Order", "OrderJudgement", "PayerKind", "Recognised", "Selection", "Verdict",
    "decide", "identify", "judge", "select",
]
