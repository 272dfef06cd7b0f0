"""WSGI entry point for production servers: ``gunicorn -c python:cds_service.gunicorn_conf cds_service.wsgi:app``."""

import os

from cds_service import START_UP_ERRORS, create_app, freeze_loaded_objects
from cds_service.observability import configure_logging

configure_logging()
try:
    app = create_app()
except START_UP_ERRORS as exc:  # a setting, artifact or database to fix: say which
    raise SystemExit(f"error: {exc}") from None
freeze_loaded_objects()

# gunicorn preloads the app in its master and forks workers: a worker must not reuse the master's
# database connections, so each child starts with an empty pool.
os.register_at_fork(after_in_child=lambda: app.extensions["cds_pipeline"].store.engine.dispose(close=False))
