"""Verdict records: full responses and retry keys for hook calls, verdict fingerprints for stable
assertion ids, the coverage-information as sent, and the cards each call issued.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("hook_calls") as t:
        t.add_column(sa.Column("hook", sa.String(32)))
        t.add_column(sa.Column("request_digest", sa.String(64)))
        t.add_column(sa.Column("retry_key", sa.String(64)))  # issuer + hookInstance: one record per call
        t.add_column(sa.Column("response", sa.JSON))
    op.create_index("ux_hook_calls_retry_key", "hook_calls", ["retry_key"], unique=True)
    with op.batch_alter_table("coverage_assertions") as t:
        t.add_column(sa.Column("subject_key", sa.String(64)))  # issuer + patient + order + coverage, hashed
        t.add_column(sa.Column("fingerprint", sa.String(64)))  # the verdict's content, hashed
        t.add_column(sa.Column("information", sa.JSON))  # the coverage-information as sent
        t.add_column(sa.Column("date_of_service_end", sa.Date))
        t.add_column(sa.Column("date_of_service_stated", sa.Boolean))
        t.add_column(sa.Column("expiry_date", sa.Date))
    op.create_index("ix_coverage_assertions_subject", "coverage_assertions", ["subject_key", "fingerprint"])
    op.create_table(
        "cards",
        sa.Column("uuid", sa.String(64), primary_key=True),
        sa.Column("hook_instance", sa.String(128), nullable=False),
        sa.Column("client_iss", sa.String(512)),
        sa.Column("service_id", sa.String(64), nullable=False),
        sa.Column("template", sa.String(64), nullable=False),
        sa.Column("card_type", sa.String(32), nullable=False),
        sa.Column("indicator", sa.String(16), nullable=False),
        sa.Column("order_reference", sa.String(256)),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_cards_hook_instance", "cards", ["hook_instance"])


def downgrade() -> None:
    op.drop_table("cards")
    op.drop_index("ix_coverage_assertions_subject", "coverage_assertions")
    with op.batch_alter_table("coverage_assertions") as t:
        for column in ("expiry_date", "date_of_service_stated", "date_of_service_end", "information", "fingerprint",
                       "subject_key"):
            t.drop_column(column)
    op.drop_index("ux_hook_calls_retry_key", "hook_calls")
    with op.batch_alter_table("hook_calls") as t:
        for column in ("response", "retry_key", "request_digest", "hook"):
            t.drop_column(column)
