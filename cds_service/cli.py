"""Command line: ``python -m cds_service serve | evaluate | db upgrade|purge | artifacts check|bundle|publish``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import orjson

from cds_service.knowledge import DEFAULT_DIR, KnowledgeError
from cds_service.observability import configure_logging
from cds_service.security import unauthenticated_bind_problem


def cmd_serve(args: argparse.Namespace) -> int:
    from werkzeug.serving import run_simple

    from cds_service import START_UP_ERRORS, create_app, freeze_loaded_objects

    try:
        app = create_app()
    except START_UP_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    problem = unauthenticated_bind_problem([f"{args.host}:{args.port}"], app.config, args.allow_unauthenticated)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    print(f"Liquid-biopsy CDS service on http://{args.host}:{args.port}/cds-services", file=sys.stderr)
    freeze_loaded_objects()
    run_simple(args.host, args.port, app, threaded=True)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cds_service import START_UP_ERRORS, create_app

    try:
        text = sys.stdin.read() if args.request == "-" else Path(args.request).read_text(encoding="utf-8")
    except OSError as exc:
        print(f"error: cannot read {args.request}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        body: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        print(f"error: {args.request} is not valid JSON ({exc.msg} at line {exc.lineno})", file=sys.stderr)
        return 1
    try:
        app = create_app({"TRUSTED_ISSUERS": ""})  # a local command: no client JWT to check
    except START_UP_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    services = app.extensions["cds_pipeline"].services
    hook = body.get("hook") if isinstance(body, dict) else None
    service_id = args.service or next((s.id for s in services.values() if s.hook == hook), None)
    if service_id is None:
        print(f"error: no service answers hook {hook!r}; the request needs 'hook' of "
              f"{sorted({s.hook for s in services.values()})}", file=sys.stderr)
        return 1
    response = app.test_client().post(f"/cds-services/{service_id}", data=text.encode(),
                                      content_type="application/json")
    if response.status_code != 200:
        issues = (response.get_json(silent=True) or {}).get("issue", [{}])
        print(f"error: {response.status_code}: " + "; ".join(
            f"{i.get('diagnostics')} (at {', '.join(i.get('expression', []))})" if i.get("expression")
            else str(i.get("diagnostics")) for i in issues), file=sys.stderr)
        return 1
    sys.stdout.write(response.get_data(as_text=True) + "\n")
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from flask import Flask

    from cds_service.config import database_url, load_settings
    from cds_service.store import make_engine, upgrade_schema

    try:
        settings = load_settings()
        url = database_url(settings, Flask("cds_service", instance_relative_config=True).instance_path)
        revision = upgrade_schema(make_engine(url))
    except Exception as exc:  # report any database failure plainly, without a traceback
        print(f"error: database upgrade failed: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"database at revision {revision}")
    return 0


def cmd_db_purge(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from flask import Flask

    from cds_service.config import database_url, load_settings
    from cds_service.store import Store, make_engine, utcnow

    try:
        settings = load_settings()
        days = args.older_than_days if args.older_than_days is not None else settings["RETENTION_DAYS"]
        if days < 1:
            raise ValueError(f"--older-than-days {days} is not a number of days (1 or more)")
        url = database_url(settings, Flask("cds_service", instance_relative_config=True).instance_path)
        store = Store(make_engine(url, settings["SQLITE_SYNCHRONOUS"].upper()))
        store.require_current_schema()
        cutoff = utcnow() - timedelta(days=days)
        counts = store.purge(cutoff, dry_run=args.dry_run)
    except Exception as exc:  # report any database failure plainly, without a traceback
        print(f"error: purge failed: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} records older than {days} days (before {cutoff.isoformat(timespec='seconds')}): "
          + ", ".join(f"{n} {table}" for table, n in counts.items()))
    return 0


def _knowledge_dir(args: argparse.Namespace) -> Path:
    """--dir, else CDS_KNOWLEDGE_DIR (what the service itself would load), else the packaged artifacts."""
    from cds_service.config import load_settings

    return Path(args.dir or load_settings()["KNOWLEDGE_DIR"] or DEFAULT_DIR)


def cmd_artifacts_check(args: argparse.Namespace) -> int:
    from cds_service.knowledge.check import check_artifacts

    args.dir = _knowledge_dir(args)
    problems = check_artifacts(Path(args.dir))
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) in {args.dir}", file=sys.stderr)
        return 1
    count = len(list(Path(args.dir).glob("*.json")))
    examples = len(list((Path(args.dir) / "examples").glob("*.json")))
    print(f"ok: {count} artifacts and {examples} examples in {args.dir} are valid and consistent")
    if args.record:
        from cds_service.knowledge.loader import record_validation

        print(f"recorded their digest in {record_validation(Path(args.dir))}")
    return 0


def _artifacts(args: argparse.Namespace) -> list[Any]:
    from cds_service.config import load_settings
    from cds_service.knowledge.loader import read_artifacts

    return read_artifacts(_knowledge_dir(args), args.canonical_base or load_settings()["CANONICAL_BASE"] or None)


def cmd_artifacts_bundle(args: argparse.Namespace) -> int:
    from cds_service.knowledge.publish import transaction_bundle

    try:
        bundle = transaction_bundle(_artifacts(args))
    except KnowledgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    data = orjson.dumps(bundle, option=orjson.OPT_INDENT_2) + b"\n"
    if args.out == "-":
        sys.stdout.buffer.write(data)
    else:
        Path(args.out).write_bytes(data)
        print(f"wrote {len(bundle['entry'])} resources to {args.out}", file=sys.stderr)
    return 0


def cmd_artifacts_publish(args: argparse.Namespace) -> int:
    from cds_service.knowledge.publish import PublishError, publish

    try:
        results = publish(_artifacts(args), args.fhir_server, args.token)
    except (KnowledgeError, PublishError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for r in results:
        print(f"{r.outcome:8} {r.reference}")
    print(f"published {len(results)} artifacts to {args.fhir_server}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cds_service", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the service (embedded SQLite store)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--allow-unauthenticated", action="store_true",
                       help="allow serving on a non-loopback address without client authentication")
    serve.set_defaults(func=cmd_serve)

    evaluate = sub.add_parser("evaluate", help="answer one CDS Hooks request from a file (or - for stdin)")
    evaluate.add_argument("request")
    evaluate.add_argument("--service", help="service id (default: chosen by the request's hook)")
    evaluate.set_defaults(func=cmd_evaluate)

    db = sub.add_parser("db", help="database maintenance")
    dbsub = db.add_subparsers(dest="db_command", required=True)
    dbsub.add_parser("upgrade", help="apply the schema migrations to CDS_DATABASE_URL").set_defaults(
        func=cmd_db_upgrade)
    purge = dbsub.add_parser("purge", help="delete records older than the retention period (CDS_RETENTION_DAYS)")
    purge.add_argument("--older-than-days", type=int, help="override CDS_RETENTION_DAYS for this run")
    purge.add_argument("--dry-run", action="store_true", help="count what would be deleted, delete nothing")
    purge.set_defaults(func=cmd_db_purge)

    artifacts = sub.add_parser("artifacts", help="check, bundle or publish the FHIR knowledge artifacts")
    asub = artifacts.add_subparsers(dest="artifacts_command", required=True)
    for name, func, help_text in (
        ("check", cmd_artifacts_check, "validate every artifact and example"),
        ("bundle", cmd_artifacts_bundle, "write a FHIR transaction Bundle of the artifacts"),
        ("publish", cmd_artifacts_publish, "POST the artifacts to a FHIR server as one transaction"),
    ):
        p = asub.add_parser(name, help=help_text)
        p.add_argument("--dir", help="artifact folder (default: CDS_KNOWLEDGE_DIR, else the packaged fhir_profiles/)")
        p.set_defaults(func=func)
        if name == "check":
            p.add_argument("--record", action="store_true", help="when all are valid, record their digest beside "
                           "them (shipped, it spares a service's first start validating them again)")
        else:
            p.add_argument("--canonical-base", help="rewrite the artifacts' canonical URL base (default: "
                           "CDS_CANONICAL_BASE)")
        if name == "bundle":
            p.add_argument("--out", default="-", help="output file (default: stdout)")
        if name == "publish":
            p.add_argument("--fhir-server", required=True, help="FHIR server base URL")
            p.add_argument("--token", help="bearer token for the FHIR server")
    return parser


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result
