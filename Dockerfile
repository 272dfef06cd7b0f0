# Liquid-biopsy CDS Hooks service: gunicorn serving cds_service.wsgi:app on port 8080.
#   docker build -t liquid-biopsy-cds .        (or: docker-compose up -d --build, see docker-compose.yml)
# On start the entry point applies the database migrations, then execs gunicorn (docker/entrypoint.sh).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The source tree stays at /app: the service reads fhir_profiles/ and the templates, static files and
# migrations next to cds_service/. The install provides the dependencies (and gunicorn); PYTHONPATH
# makes /app/cds_service the copy that is imported, whatever the current folder.
COPY pyproject.toml ./
COPY cds_service/ ./cds_service/
COPY fhir_profiles/ ./fhir_profiles/
RUN pip install --no-cache-dir . "gunicorn>=23,<28" \
    && rm -rf build ./*.egg-info

COPY gunicorn.conf.py ./
COPY docker/entrypoint.sh ./docker/entrypoint.sh

# Unprivileged user; the Prometheus folder (metrics of all gunicorn workers) and the instance folder
# (embedded SQLite store, used only when CDS_DATABASE_URL is unset) are the only writable places.
RUN chmod 0755 docker/entrypoint.sh \
    && groupadd --system --gid 10001 cds \
    && useradd --system --uid 10001 --gid cds --home-dir /app --no-create-home --shell /usr/sbin/nologin cds \
    && mkdir -p /tmp/prometheus /app/instance \
    && chown cds:cds /tmp/prometheus /app/instance

ENV PYTHONPATH=/app \
    CDS_KNOWLEDGE_DIR=/app/fhir_profiles \
    CDS_BIND=0.0.0.0:8080 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus

USER cds

EXPOSE 8080

# Ready = knowledge artifacts loaded and database reachable at the current schema (GET /readyz).
# python, not curl: the slim image has no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=3).status==200 else 1)"]

ENTRYPOINT ["/app/docker/entrypoint.sh"]
