"""Decision history: one verdict row per order and Coverage judged in a call (what history is filtered
by), cards tied to their call with the suggestions and override reasons they offered, indexes for
date-range reads. Calls stored before this revision get their verdict rows from their order summary.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    verdicts = op.create_table(
        "verdicts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("call_id", sa.Integer, sa.ForeignKey("hook_calls.id"), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("service_id", sa.String(64), nullable=False),
        sa.Column("client_iss", sa.String(512)),
        sa.Column("order_reference", sa.String(256), nullable=False),
        sa.Column("code", sa.String(64)),
        sa.Column("policy_outcome", sa.String(64), nullable=False),
        sa.Column("coverage_reference", sa.String(256)),
        sa.Column("covered", sa.String(32)),
        sa.Column("pa_needed", sa.String(32)),
        sa.Column("reason", sa.String(64)),
        sa.Column("assertion_id", sa.String(64)),
    )
    op.create_index("ix_verdicts_call_id", "verdicts", ["call_id"])
    op.create_index("ix_verdicts_received_at", "verdicts", ["received_at"])
    op.create_index("ix_verdicts_assertion_id", "verdicts", ["assertion_id"])
    op.create_index("ix_hook_calls_received_at", "hook_calls", ["received_at"])
    op.create_index("ix_feedback_received_at", "feedback", ["received_at"])
    with op.batch_alter_table("cards") as t:
        t.add_column(sa.Column("call_id", sa.Integer))
        t.add_column(sa.Column("summary", sa.String(256)))
        t.add_column(sa.Column("suggestions", sa.JSON))  # uuids of the suggestions the card offered
        t.add_column(sa.Column("override_reasons", sa.JSON))  # codes of the override reasons it offered
    op.create_index("ix_cards_call_id", "cards", ["call_id"])

    conn = op.get_bind()
    calls = sa.table("hook_calls", sa.column("id"), sa.column("received_at"), sa.column("service_id"),
                     sa.column("client_iss"), sa.column("orders", sa.JSON))
    rows = []
    for call in conn.execute(sa.select(calls)).mappings():
        for order in call["orders"] or []:
            reasons = order.get("verdicts") or [None]
            codes = order.get("codes") or [None]
            rows += [{"call_id": call["id"], "received_at": call["received_at"], "service_id": call["service_id"],
                      "client_iss": call["client_iss"], "order_reference": str(order.get("reference", ""))[:256],
                      "code": codes[0], "policy_outcome": order.get("outcome") or "none", "reason": reason}
                     for reason in reasons]
    if rows:
        op.bulk_insert(verdicts, rows)


def downgrade() -> None:
    op.drop_index("ix_cards_call_id", "cards")
    with op.batch_alter_table("cards") as t:
        for column in ("override_reasons", "suggestions", "summary", "call_id"):
            t.drop_column(column)
    op.drop_index("ix_feedback_received_at", "feedback")
    op.drop_index("ix_hook_calls_received_at", "hook_calls")
    op.drop_table("verdicts")
