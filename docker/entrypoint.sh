#!/bin/sh
# Container entry point of the liquid-biopsy CDS service image.
#
# Without arguments: apply the database migrations to CDS_DATABASE_URL (retrying while the database
# starts), then replace this shell with gunicorn, so gunicorn is PID 1 and receives the stop signals.
# With arguments: run them instead, e.g.
#   docker compose run --rm cds python -m cds_service artifacts check
set -eu

# prometheus_client (multiprocess mode) needs its folder before cds_service is imported.
if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
    mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
fi

if [ "$#" -gt 0 ]; then
    exec "$@"
fi

attempts="${CDS_MIGRATE_ATTEMPTS:-10}"
delay="${CDS_MIGRATE_DELAY_SECONDS:-3}"
attempt=1
until python -m cds_service db upgrade; do
    if [ "$attempt" -ge "$attempts" ]; then
        echo "entrypoint: database upgrade failed $attempt times; giving up" >&2
        exit 1
    fi
    echo "entrypoint: database not ready (attempt $attempt of $attempts); retrying in ${delay}s" >&2
    attempt=$((attempt + 1))
    sleep "$delay"
done

# Metric files of earlier runs (a restarted container keeps /tmp) or of the migration process
# would be aggregated with the new workers' metrics: start from an empty folder.
if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
    find "$PROMETHEUS_MULTIPROC_DIR" -mindepth 1 -delete
fi

# /dev/shm for the worker heartbeat files: a container's /tmp may sit on a slow overlay disk.
exec gunicorn -c python:cds_service.gunicorn_conf --worker-tmp-dir /dev/shm cds_service.wsgi:app
