"""Gunicorn settings for deployment: ``gunicorn -c gunicorn.conf.py cds_service.wsgi:app``.

Every value can be set through the environment (CDS_BIND, CDS_WORKERS, CDS_THREADS, CDS_TIMEOUT).
"""

import os

from cds_service.config import load_settings
from cds_service.security import unauthenticated_bind_problem

bind = [b.strip() for b in os.environ.get("CDS_BIND", "127.0.0.1:8080").split(",") if b.strip()]
workers = int(os.environ.get("CDS_WORKERS", "2"))
threads = int(os.environ.get("CDS_THREADS", "16"))
worker_class = "gthread"
preload_app = True  # load knowledge and migrate once, in the master, then fork (faster cold start)
timeout = int(os.environ.get("CDS_TIMEOUT", "30"))
graceful_timeout = 20
keepalive = 5
accesslog = "-"
access_log_format = '{"time":"%(t)s","remote":"%(h)s","request":"%(r)s","status":%(s)s,"bytes":%(B)s,"ms":%(M)s}'
errorlog = "-"


def on_starting(server):  # type: ignore[no-untyped-def]
    """Refuse to serve unauthenticated on a non-loopback address unless explicitly allowed."""
    problem = unauthenticated_bind_problem(server.cfg.bind, load_settings())
    if problem:
        raise SystemExit(problem)


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
