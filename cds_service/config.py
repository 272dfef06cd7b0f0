"""Settings: defaults, then ``CDS_*`` environment variables, then the mapping given to create_app.

Every setting is documented in the README's configuration table; ``SETTINGS`` is that table's source.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    kind: type
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting("KNOWLEDGE_DIR", "", str,
            "Folder of the FHIR knowledge artifacts (default: the repository's fhir_profiles/)."),
    Setting("CANONICAL_BASE", "", str,
            "Canonical URL base to publish the artifacts under (default: as written in the files)."),
    Setting("DATABASE_URL", "", str,
            "SQLAlchemy URL of the store (default: SQLite file cds.sqlite3 in the instance folder)."),
    Setting("SQLITE_SYNCHRONOUS", "NORMAL", str,
            "SQLite durability: NORMAL survives a killed process, FULL also an OS crash or power cut (slower)."),
    Setting("MODE", "crd", str,
            "crd: Da Vinci CRD 2.2.1 behaviour (a Coverage this endpoint serves is required: hook-13, 400 otherwise). "
            "sandbox: also serve clients that send no usable Coverage (the public CDS Hooks sandbox, demos): "
            "policy cards without a coverage verdict."),
    Setting("PAYER_NAME", "", str, "Card source label (default: the PlanDefinition's publisher)."),
    Setting("PAYER_NAMES", "", str,
            "Comma-separated extra names that identify the served payer in Coverage.payor (added to the "
            "Organization artifacts' names and aliases)."),
    Setting("PAYER_IDENTIFIERS", "", str,
            "Comma-separated extra payor identifiers (system|value) of the served payer, e.g. an EDI payer id as "
            "the EHR's Coverage carries it."),
    Setting("PLAN_MATCH_KEYWORDS", "", str,
            "Comma-separated extra names of the plan with its own policy manual (the FEP), added to the "
            "InsurancePlan artifact's names."),
    Setting("TODAY", "", str, "Pin 'today' (YYYY-MM-DD) for demos and tests; default: the current UTC date."),
    Setting("MAX_CONTENT_LENGTH", 1024 * 1024, int, "Largest accepted request body in bytes (larger: 413)."),
    Setting("REQUEST_READ_SECONDS", 5.0, float,
            "Longest a client may take to send a request body (slower: 408); it holds a server thread meanwhile."),
    Setting("RETENTION_DAYS", 2190, int,
            "How long `db purge` keeps hook calls, their responses, verdicts, cards, feedback and assertions "
            "(default six years, as HIPAA keeps documentation); nothing is deleted unless `db purge` runs."),
    Setting("CORS_ORIGINS", "*", str, "Comma-separated origins allowed to call from a browser."),
    Setting("TRUSTED_ISSUERS", "", str,
            "JSON or YAML file of trusted clients (iss, keys, allowed jku, FHIR servers); when set, hook, feedback "
            "and assertion calls need a valid JWT."),
    Setting("ALLOW_UNAUTHENTICATED", False, bool,
            "Without trusted issuers, allow serving on a non-loopback address (logs a warning)."),
    Setting("PUBLIC_BASE_URL", "", str,
            "The service's public base URL behind a proxy; the JWT aud is checked against it."),
    Setting("CLOCK_SKEW_SECONDS", 60, int, "Leeway for JWT exp and iat checks."),
    Setting("TOKEN_MAX_LIFETIME_SECONDS", 600, int,
            "Longest a client JWT may still be valid (exp - now); longer-lived tokens are refused."),
    Setting("FHIR_SERVERS", "", str,
            "Comma-separated FHIR base URLs the service may call when no trusted issuers are configured."),
    Setting("FHIR_ALLOW_HTTP", False, bool, "Allow calling FHIR servers over plain http (local testing only)."),
    Setting("FHIR_BUDGET_SECONDS", 2.5, float, "Overall time for fetching missing prefetch data in one hook call."),
    Setting("FHIR_CONNECT_TIMEOUT", 1.0, float, "Connect timeout of a FHIR request, in seconds (within the budget)."),
    Setting("FHIR_MAX_IN_FLIGHT", 8, int,
            "Searches under way at once per FHIR server and process; a further one fails at once (busy)."),
    Setting("JWKS_BUDGET_SECONDS", 2.0, float,
            "Longest a client key set (JWKS) fetch may take, whole (connect, headers and body)."),
    Setting("JWKS_CACHE_SECONDS", 300.0, float, "How long a fetched key set is used before it is fetched again."),
    Setting("JWKS_FAILURE_CACHE_SECONDS", 30.0, float,
            "How long a key source that failed is not asked again (its callers get a 401 at once)."),
)


def _coerce(setting: Setting, value: Any) -> Any:
    if setting.kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).strip().lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).strip().lower() in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(value)
    if setting.kind in (int, float):
        return setting.kind(value)
    return str(value) if value is not None else ""


def server_number(name: str, default: float, kind: type[int] | type[float] = int, minimum: float = 0) -> Any:
    """A number the server reads from the environment itself (gunicorn's CDS_WORKERS and the like, outside
    SETTINGS): ``default`` when unset, else a finite ``kind`` of at least ``minimum``, or an exit naming it."""
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value < minimum:
        whole = "a whole number" if kind is int else "a number"
        raise SystemExit(f"error: {name}={text!r} is not {whole} of {minimum:g} or more")
    return value


def database_url(settings: Mapping[str, Any], instance_path: str) -> str:
    """The configured store, or the embedded default: a SQLite file in the instance folder."""
    if settings["DATABASE_URL"]:
        return str(settings["DATABASE_URL"])
    Path(instance_path).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(instance_path) / 'cds.sqlite3'}"


def load_settings(mapping: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    environ = os.environ if environ is None else environ
    mapping = mapping or {}
    out: dict[str, Any] = {}
    for s in SETTINGS:
        value: Any = s.default
        if f"CDS_{s.name}" in environ:
            value = environ[f"CDS_{s.name}"]
        if s.name in mapping:
            value = mapping[s.name]
        try:
            out[s.name] = _coerce(s, value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"setting {s.name}: {value!r} is not a valid {s.kind.__name__}") from exc
    if out["MODE"] not in ("crd", "sandbox"):
        raise ValueError(f"setting MODE: {out['MODE']!r} is not crd or sandbox")
    if out["RETENTION_DAYS"] < 1:
        raise ValueError(f"setting RETENTION_DAYS: {out['RETENTION_DAYS']} is not a number of days (1 or more)")
    if out["TODAY"]:
        try:
            date.fromisoformat(out["TODAY"])
        except ValueError as exc:
            raise ValueError(f"setting TODAY: {out['TODAY']!r} is not a date (YYYY-MM-DD)") from exc
    # Flask's own and extra keys from the mapping pass through (e.g. TESTING).
    out.update({k: v for k, v in mapping.items() if k not in out})
    return out
