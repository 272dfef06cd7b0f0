"""Gunicorn settings for deployment: ``gunicorn -c python:cds_service.gunicorn_conf cds_service.wsgi:app``.

Every value can be set through the environment (CDS_BIND, CDS_WORKERS, CDS_THREADS, CDS_TIMEOUT,
CDS_ACCESS_LOG, CDS_PIN_WORKERS, CDS_KEEPALIVE_LINGER_MS). It is
a module of the package, so an installed service (the wheel, the container image) has it too. Gunicorn's
own lines (start-up, workers, access) are written as the same JSON lines as the service's.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

from gunicorn.glogging import Logger

from cds_service.config import load_settings, server_number
from cds_service.gunicorn_worker import LINGER_MS
from cds_service.observability import HookInstanceFilter, JsonFormatter
from cds_service.security import unauthenticated_bind_problem

bind = [b.strip() for b in os.environ.get("CDS_BIND", "127.0.0.1:8080").split(",") if b.strip()]
# Each worker listens on a socket of its own on the same TCP port (SO_REUSEPORT) and the kernel spreads new
# connections across them. On one shared socket, the worker that woke first took a burst of connections;
# kept alive, they stayed there: in 1 of 4 runs of 8 keep-alive connections, one worker served every
# request while the other idled (403 against 784 requests/s). A Unix socket path cannot be shared this way.
reuse_port = all(not b.startswith(("unix:", "fd://")) for b in bind)
workers = server_number("CDS_WORKERS", 2, minimum=1)
threads = server_number("CDS_THREADS", 16, minimum=1)
# gthread, whose pool threads also take a kept-alive connection's next request when it comes at once
# (cds_service/gunicorn_worker.py; CDS_KEEPALIVE_LINGER_MS=0 runs gunicorn's own gthread).
worker_class = "cds_service.gunicorn_worker.LingeringThreadWorker" if LINGER_MS > 0 else "gthread"
preload_app = True  # load knowledge and migrate once, in the master, then fork (faster cold start)
timeout = server_number("CDS_TIMEOUT", 30)  # 0: no timeout, as in gunicorn
graceful_timeout = 20
keepalive = 5
# The service writes its own JSON line for every hook call, feedback, lookup and error; gunicorn's line
# per request repeats it (with it on, one A/B at 8 connections ran 616 against 757 requests/s).
# CDS_ACCESS_LOG=true adds it back.
accesslog = "-" if os.environ.get("CDS_ACCESS_LOG", "false").lower() == "true" else None
# Each worker runs on a CPU of its own. Left to the kernel, a worker's threads ran on both cores at once
# (the computing thread on one, the one handing over the next request or checkpointing on the other),
# passing the interpreter lock between cores: pinned, 3 pairs at 8 connections ran 1,474/1,652/1,567
# against 1,268/1,407/1,368 requests/s, -5 % CPU per call, ~20 % fewer thread switches.
pin_workers = os.environ.get("CDS_PIN_WORKERS", "true").lower() == "true" and hasattr(os, "sched_setaffinity")
errorlog = "-"
logger_class = "cds_service.gunicorn_conf.JsonLogger"


class JsonLogger(Logger):
    """Gunicorn's error and access logs as the service's JSON lines (one format for every line)."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(JsonFormatter())
                handler.addFilter(HookInstanceFilter())

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if not self.access_log_enabled:
            return
        path = environ.get("PATH_INFO", "")
        self.access_log.info("%s %s %s", environ.get("REQUEST_METHOD"), path, resp.status_code, extra={
            "status": resp.status_code, "remote": environ.get("REMOTE_ADDR"), "bytes": getattr(resp, "sent", None),
            "latency_ms": round(request_time.total_seconds() * 1000, 2)})


def pre_fork(server: Any, worker: Any) -> None:
    """In the master, which knows the other workers: the new one takes the allowed CPU fewest of them run
    on (a restarted worker takes the CPU its predecessor left)."""
    if pin_workers:
        taken = Counter(getattr(w, "cds_cpu", None) for w in server.WORKERS.values())
        worker.cds_cpu = min(sorted(os.sched_getaffinity(0)), key=lambda cpu: taken[cpu])


def post_fork(server: Any, worker: Any) -> None:
    cpu = getattr(worker, "cds_cpu", None)
    if cpu is not None:  # before the worker starts a thread: every thread it starts inherits the CPU
        os.sched_setaffinity(0, {cpu})


def on_starting(server: Any) -> None:
    """Refuse to serve unauthenticated on a non-loopback address unless explicitly allowed."""
    problem = unauthenticated_bind_problem(server.cfg.bind, load_settings())
    if problem:
        raise SystemExit(problem)


def child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)

