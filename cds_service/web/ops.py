"""Everyday-use endpoints: health, readiness, metrics, policy pages and the playground."""

from __future__ import annotations

import orjson
from flask import Blueprint, Response, abort, current_app, render_template, send_from_directory
from sqlalchemy import text

from cds_service.knowledge.model import Knowledge
from cds_service.knowledge.model import page_id as policy_page_id
from cds_service.observability import metrics_payload
from cds_service.store import SchemaOutOfDate
from cds_service.web.openapi import openapi_document
from cds_service.web.responses import current_pipeline, json_response, operation_outcome

bp = Blueprint("ops", __name__, template_folder="templates", static_folder="static", static_url_path="/static")




@bp.get("/healthz")
def healthz() -> Response:
    return json_response({"status": "alive"})


@bp.get("/readyz")
def readyz() -> Response:
    engine = current_pipeline()
    try:
        with engine.store.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.store.require_current_schema()
    except SchemaOutOfDate as exc:
        return operation_outcome(503, f"database not ready: {exc}")
    except Exception as exc:
        return operation_outcome(503, f"database unreachable: {exc.__class__.__name__}")
    return json_response({"status": "ready", "artifacts": engine.knowledge.artifact_digest,
                  "policy": engine.knowledge.policy_label, "policyVersion": engine.knowledge.policy_version})


@bp.get("/openapi.json")
def openapi() -> Response:
    body = current_app.extensions.get("cds_openapi")
    if body is None:  # built once: the declarations do not change while the app runs
        pipeline = current_pipeline()
        body = current_app.extensions["cds_openapi"] = orjson.dumps(
            openapi_document(pipeline.services.values(), authenticated=pipeline.verifier is not None))
    return Response(body, mimetype="application/json")


@bp.get("/metrics")
def metrics() -> Response:
    payload, content_type = metrics_payload()
    return Response(payload, content_type=content_type)


# ---------------------------------------------------------------- policy pages


@bp.get("/policies/")
def policy_index() -> str:
    k = current_pipeline().knowledge
    return render_template("policy_index.html", k=k, page_id=policy_page_id)


@bp.get("/policies/<page_id>")
def policy_page(page_id: str) -> str:
    k = current_pipeline().knowledge
    if page_id == policy_page_id(k.policy_label):
        return render_template("policy_main.html", k=k, page_id=policy_page_id, history=_history(k))
    policy = next((p for p in k.policies.values() if policy_page_id(p.label) == page_id), None)
    if policy is None:
        abort(404)
    routes = [r for rs in (*k.routes_by_category.values(), *k.routes_by_purpose.values()) for r in rs
              if r.policy == policy.number]
    related_codes = sorted(c.code for c in k.listed.values() if policy.number in c.related_policies)
    return render_template("policy_alternative.html", k=k, p=policy, routes=routes, related_codes=related_codes,
                           page_id=policy_page_id)


def _history(k: Knowledge) -> list[dict[str, str]]:
    return [{"code": c.code, "display": c.display,
             "joined": m.joined.isoformat() if m.joined else "before the recorded history",
             "removed": m.removed.isoformat() if m.removed else "", "source": m.source}
            for c in sorted(k.listed.values(), key=lambda c: c.code) for m in c.memberships]


# ---------------------------------------------------------------- playground


@bp.get("/")
@bp.get("/playground")
def playground() -> Response:
    return send_from_directory(bp.static_folder or "", "playground.html")


@bp.get("/playground/options")
def playground_options() -> Response:
    """What the playground offers: tests, diagnoses and plans, all from the knowledge artifacts."""
    engine = current_pipeline()
    k = engine.knowledge
    tests = [{"code": c.code, "display": c.display, "listedCode": True,
              "history": "; ".join(m.source for m in c.memberships)} for c in sorted(k.listed.values(),
                                                                                 key=lambda c: c.code)]
    tests += [{"code": code, "display": t.display, "listedCode": False, "history": ""}
              for t in k.catalogue if t.is_liquid_biopsy for system, code in t.codes
              if system == k.code_system_cpt and code not in k.listed]
    diagnoses = [{"code": cat, "display": routes[0].use, "system": k.icd10_system}
                 for cat, routes in sorted(k.routes_by_category.items())]
    services = {s.hook: s.id for s in engine.services.values()}
    return json_response({
        "tests": tests,
        "diagnoses": diagnoses,
        "secondaryDiagnoses": sorted({c for rs in k.routes_by_category.values() for r in rs
                                      for c in r.requires_categories}),
        "plans": [
            {"id": "commercial", "label": f"{k.publisher} commercial plan", "planName": "PPO"},
            {"id": "fep", "label": k.variations[0].name, "planName": k.variations[0].name},
            {"id": "none", "label": "No active coverage", "planName": ""},
        ],
        "purposes": [{"code": code, "display": display} for code, display in sorted(k.purpose_display.items())],
        "purposeSystem": k.purpose_system,
        "codeSystem": k.code_system_cpt,
        "services": services,
        "policy": k.policy_label,
        "retirement": k.retirement.isoformat(),
        "lastDayInForce": k.last_day_in_force.isoformat(),
    })
