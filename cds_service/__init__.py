"""Liquid-biopsy CDS Hooks service. ``create_app`` builds the Flask application."""

from __future__ import annotations

import gc
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

from flask import Flask, Response, request
from flask_cors import CORS

from cds_service.auth import KeyFetcher, TokenVerifier, load_trusted_issuers
from cds_service.config import database_url, load_settings
from cds_service.fhir_client import FhirClient
from cds_service.knowledge import KnowledgeError, load_knowledge
from cds_service.knowledge.loader import VALIDATED_KNOWLEDGE, with_deployment_payers
from cds_service.pipeline import FhirAccess, Pipeline, utc_today
from cds_service.services import declarations
from cds_service.store import SchemaOutOfDate, Store, make_engine, upgrade_schema
from cds_service.web.body_reader import BodyReader


class _Flask(Flask):
    """Flask, asking once per view or request hook whether it is a coroutine function. Flask asks on every
    request (``inspect`` on four functions a hook call); the answer cannot change."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sync: dict[Callable[..., Any], Callable[..., Any]] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        sync = self._sync.get(func)
        if sync is None:
            sync = self._sync[func] = super().ensure_sync(func)
        return sync


def freeze_loaded_objects() -> None:
    """Exempt what is loaded so far (policy knowledge, FHIR models, the app) from garbage collection.

    It lives as long as the process, yet every full collection walked it: ~160,000 objects, a 65 ms
    pause once in about 1,000 calls, with every request in flight waiting behind it. Called once the
    app is built, before gunicorn forks its workers (which then also keep sharing those pages instead
    of copying them when the collector touches the objects)."""
    gc.freeze()


# What create_app raises for something an operator fixes (an artifact, a setting, the database's schema):
# every way of starting the service says it in one line instead of a traceback.
START_UP_ERRORS = (KnowledgeError, ValueError, SchemaOutOfDate)


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: settings, knowledge (loaded and checked once), store, blueprints.

    A broken knowledge artifact raises ``KnowledgeError`` here, so the service never starts with it;
    a bad setting or trusted-issuers file raises ``ValueError``; a database not migrated, ``SchemaOutOfDate``
    (all three: START_UP_ERRORS).
    """
    app = _Flask(__name__, instance_relative_config=True, static_folder=None)
    settings = load_settings(config)
    app.config.update(settings)

    knowledge = load_knowledge(Path(settings["KNOWLEDGE_DIR"]) if settings["KNOWLEDGE_DIR"] else None,
                               settings["CANONICAL_BASE"] or None, Path(app.instance_path) / VALIDATED_KNOWLEDGE)
    knowledge = with_deployment_payers(knowledge, _list(settings["PAYER_NAMES"]), _list(settings["PAYER_IDENTIFIERS"]),
                                       _list(settings["PLAN_MATCH_KEYWORDS"]))
    if settings["PAYER_NAME"]:
        knowledge = replace(knowledge, publisher=settings["PAYER_NAME"])

    store = Store(make_engine(database_url(settings, app.instance_path), settings["SQLITE_SYNCHRONOUS"].upper()))
    if store.engine.dialect.name == "sqlite":
        upgrade_schema(store.engine)  # the embedded default migrates itself
    else:
        store.require_current_schema()  # shared databases are migrated once, by `db upgrade`

    verifier = None
    if settings["TRUSTED_ISSUERS"]:
        verifier = TokenVerifier(load_trusted_issuers(settings["TRUSTED_ISSUERS"]), store.remember_jti,
                                 settings["CLOCK_SKEW_SECONDS"], settings["TOKEN_MAX_LIFETIME_SECONDS"],
                                 KeyFetcher(settings["JWKS_BUDGET_SECONDS"], settings["JWKS_CACHE_SECONDS"],
                                            settings["JWKS_FAILURE_CACHE_SECONDS"]))
    fhir = FhirAccess(
        client=FhirClient(settings["FHIR_CONNECT_TIMEOUT"], settings["FHIR_MAX_IN_FLIGHT"]),
        unauthenticated_servers=tuple(u.rstrip("/") for u in _list(settings["FHIR_SERVERS"])),
        allow_http=settings["FHIR_ALLOW_HTTP"],
        budget_seconds=settings["FHIR_BUDGET_SECONDS"],
    )

    pinned = date.fromisoformat(settings["TODAY"]) if settings["TODAY"] else None
    app.extensions["cds_pipeline"] = Pipeline(
        knowledge=knowledge,
        store=store,
        services=declarations(knowledge),
        today=(lambda: pinned) if pinned else utc_today,
        fhir=fhir,
        mode=settings["MODE"],
        verifier=verifier,
        public_base_url=settings["PUBLIC_BASE_URL"].rstrip("/"),
    )

    from cds_service.web import hook_calls, hooks, ops, records, responses

    # Hook calls from servers are answered without Flask (hook_calls); BodyReader hands them the body whole
    app.wsgi_app = BodyReader(  # type: ignore[method-assign]
        hook_calls.HookCalls(app.wsgi_app, app.extensions["cds_pipeline"], settings["PUBLIC_BASE_URL"]),
        settings["REQUEST_READ_SECONDS"], settings["MAX_CONTENT_LENGTH"])
    # CORS headers only for requests that carry an Origin (browsers; an EHR calling server to server sends
    # none and reads none): flask-cors' default adds them to every answer. Its after-request function
    # still spends ~18 us of a call in place finding that out, so it runs only for requests with an Origin.
    before = list(app.after_request_funcs.get(None, []))
    CORS(app, origins=[o.strip() for o in settings["CORS_ORIGINS"].split(",")],
         allow_headers=["authorization", "content-type"], max_age=3600, always_send=False)
    app.after_request_funcs[None] = [f if f in before else _only_with_origin(f) for f in app.after_request_funcs[None]]

    responses.register(app)
    app.register_blueprint(hooks.bp)
    app.register_blueprint(ops.bp)
    app.register_blueprint(records.bp)
    return app


def _only_with_origin(after: Callable[[Response], Any]) -> Callable[[Response], Any]:
    def for_browsers(response: Response) -> Any:
        return after(response) if "HTTP_ORIGIN" in request.environ else response
    return for_browsers


def _list(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


__all__ = ["create_app"]
