"""WSGI entry point for production servers: ``gunicorn -c python:cds_service.gunicorn_conf cds_service.wsgi:app``."""

import os

from cds_service import create_app, freeze_loaded_objects
from cds_service.observability import configure_logging

configure_logging()
app = create_app()
freeze_loaded_objects()

# gunicorn preloads the app in its master and forks workers: a worker must not reuse the master's
# database connections, so each child starts with an empty pool.
os.register_at_fork(after_in_child=lambda: app.extensions["cds_pipeline"].store.engine.dispose(close=False))
