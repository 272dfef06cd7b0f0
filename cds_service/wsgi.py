"""WSGI entry point for production servers: ``gunicorn -c gunicorn.conf.py cds_service.wsgi:app``."""

from cds_service import create_app
from cds_service.observability import configure_logging

configure_logging()
app = create_app()
