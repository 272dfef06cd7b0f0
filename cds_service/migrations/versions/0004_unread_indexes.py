"""Drop the indexes nothing reads: hookInstance on calls, assertions and cards (retries are found by
the retry key, records by call id, date and assertion id) and verdicts by date (history filters calls
by date and reaches their verdicts by call id). Each was one more B-tree page written by every hook call.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UNREAD = (("ix_hook_calls_hook_instance", "hook_calls", "hook_instance"),
          ("ix_coverage_assertions_hook_instance", "coverage_assertions", "hook_instance"),
          ("ix_cards_hook_instance", "cards", "hook_instance"),
          ("ix_verdicts_received_at", "verdicts", "received_at"))


def upgrade() -> None:
    for name, table, _ in UNREAD:
        op.drop_index(name, table_name=table)


def downgrade() -> None:
    for name, table, column in UNREAD:
        op.create_index(name, table, [column])
