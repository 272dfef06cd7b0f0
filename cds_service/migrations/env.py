"""Alembic environment: runs on the connection the service hands it (see cds_service/db.py)."""

from __future__ import annotations

from alembic import context

from cds_service.store import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
