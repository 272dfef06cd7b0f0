"""Initial schema: hook-call audit, coverage assertions, feedback, seen JWT ids.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hook_calls",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("hook_instance", sa.String(128), nullable=False),
        sa.Column("service_id", sa.String(64), nullable=False),
        sa.Column("client_iss", sa.String(512)),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("decision_summary", sa.String(256), nullable=False),
        sa.Column("orders", sa.JSON, nullable=False),
    )
    op.create_index("ix_hook_calls_hook_instance", "hook_calls", ["hook_instance"])
    op.create_table(
        "coverage_assertions",
        sa.Column("assertion_id", sa.String(64), primary_key=True),
        sa.Column("hook_instance", sa.String(128), nullable=False),
        sa.Column("client_iss", sa.String(512)),
        sa.Column("order_reference", sa.String(256), nullable=False),
        sa.Column("coverage_reference", sa.String(256), nullable=False),
        sa.Column("code", sa.String(32), nullable=False),
        sa.Column("covered", sa.String(32), nullable=False),
        sa.Column("pa_needed", sa.String(32)),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("policy", sa.String(64), nullable=False),
        sa.Column("policy_version", sa.String(64), nullable=False),
        sa.Column("artifact_version", sa.String(64), nullable=False),
        sa.Column("date_of_service", sa.Date, nullable=False),
        sa.Column("assertion_date", sa.Date, nullable=False),
    )
    op.create_index("ix_coverage_assertions_hook_instance", "coverage_assertions", ["hook_instance"])
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("service_id", sa.String(64), nullable=False),
        sa.Column("client_iss", sa.String(512)),
        sa.Column("card", sa.String(128), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("accepted_suggestions", sa.JSON),
        sa.Column("override_reason", sa.JSON),
        sa.Column("outcome_timestamp", sa.String(64), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_feedback_card", "feedback", ["card"])
    op.create_table(
        "seen_jti",
        sa.Column("iss", sa.String(512), primary_key=True),
        sa.Column("jti", sa.String(256), primary_key=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_seen_jti_expires_at", "seen_jti", ["expires_at"])


def downgrade() -> None:
    for table in ("seen_jti", "feedback", "coverage_assertions", "hook_calls"):
        op.drop_table(table)
