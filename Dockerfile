# Liquid-biopsy CDS Hooks service: gunicorn serving cds_service.wsgi:app on port 8080.
#   docker build -t liquid-biopsy-cds .        (or: docker compose up -d --build, see docker-compose.yml)
# The image installs the built wheel (the policy artifacts are its package data), not the source tree.
# On start the entry point applies the database migrations, then execs gunicorn (docker/entrypoint.sh).

# ---- build: the wheel, from the sources
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cds_service/ ./cds_service/
COPY fhir_profiles/ ./fhir_profiles/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---- run: the wheel and its pinned dependencies
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY constraints.txt /tmp/constraints.txt
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-cache-dir -c /tmp/constraints.txt /tmp/wheels/*.whl "gunicorn>=23,<28" \
    && rm -rf /tmp/wheels /tmp/constraints.txt

COPY docker/entrypoint.sh /usr/local/bin/cds-entrypoint

# Unprivileged user; the Prometheus folder (metrics of all gunicorn workers) and the instance folder
# (embedded SQLite store, used only when CDS_DATABASE_URL is unset) are the only writable places.
RUN chmod 0755 /usr/local/bin/cds-entrypoint \
    && groupadd --system --gid 10001 cds \
    && useradd --system --uid 10001 --gid cds --home-dir /app --create-home --shell /usr/sbin/nologin cds \
    && mkdir -p /tmp/prometheus /usr/local/var/cds_service-instance \
    && chown cds:cds /tmp/prometheus /usr/local/var/cds_service-instance

WORKDIR /app
ENV CDS_BIND=0.0.0.0:8080 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus

USER cds

EXPOSE 8080

# Ready = knowledge artifacts loaded and database reachable at the current schema (GET /readyz).
# python, not curl: the slim image has no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=3).status==200 else 1)"]

ENTRYPOINT ["/usr/local/bin/cds-entrypoint"]
