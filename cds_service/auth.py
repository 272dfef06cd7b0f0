"""CDS Hooks 2.0 client authentication: JWTs from trusted issuers, checked with PyJWT.

Trust is configured per issuer (``CDS_TRUSTED_ISSUERS``, JSON or YAML):

    issuers:
      - iss: https://ehr.example.org
        jwks_url: https://ehr.example.org/.well-known/jwks.json   # or jwks: {keys: [...]} inline
        jku: [https://ehr.example.org/.well-known/jwks.json]       # jku header values it may present
        fhir_servers: [https://fhir.ehr.example.org/r4]            # FHIR servers we may call for it
        records: own      # decision records it may read: own (its own calls, the default) or all
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import orjson
import yaml
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cds_service import http_fetch
from cds_service.compute_gate import GATE

# Asymmetric only: never "none", never HMAC (a public key must not double as a shared secret).
ALGORITHMS = ("ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512")


class AuthError(Exception):
    """The request is not authenticated; the message says why (safe to return to the client)."""


@dataclass(frozen=True)
class TrustedIssuer:
    iss: str
    jwks_url: str | None
    jwks: dict[str, Any] | None
    jku: tuple[str, ...]
    fhir_servers: tuple[str, ...]
    records: str = "own"  # which decision records it may read: "own" (its calls) or "all" (payer tooling)


def load_trusted_issuers(path: str) -> dict[str, TrustedIssuer]:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
        data = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"trusted issuers file {path}: cannot be read ({exc})") from exc
    entries = data.get("issuers") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"trusted issuers file {path}: needs a non-empty 'issuers' list")
    issuers: dict[str, TrustedIssuer] = {}
    for i, e in enumerate(entries):
        where = f"trusted issuers file {path}: issuers[{i}]"
        if not isinstance(e, dict) or not isinstance(e.get("iss"), str) or not e["iss"]:
            raise ValueError(f"{where} needs an 'iss'")
        if bool(e.get("jwks_url")) == bool(e.get("jwks")):
            raise ValueError(f"{where} needs exactly one of 'jwks_url' or 'jwks'")
        if e.get("jwks") is not None:
            try:
                jwt.PyJWKSet.from_dict(e["jwks"])
            except jwt.PyJWTError as exc:
                raise ValueError(f"{where}: inline jwks is not a valid JWKS ({exc})") from exc
        lists = {k: e.get(k) or [] for k in ("jku", "fhir_servers")}
        for k, v in lists.items():
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise ValueError(f"{where}: '{k}' must be a list of URLs")
        records = e.get("records", "own")
        if records not in ("own", "all"):
            raise ValueError(f"{where}: 'records' must be 'own' or 'all'")
        issuers[e["iss"]] = TrustedIssuer(e["iss"], e.get("jwks_url"), e.get("jwks"), tuple(lists["jku"]),
                                          tuple(u.rstrip("/") for u in lists["fhir_servers"]), records)
    return issuers


@dataclass(frozen=True)
class TokenId:
    """A verified token's id, to be remembered until it expires (a second use is a replay)."""

    iss: str
    jti: str
    expires: datetime


@dataclass(frozen=True)
class Client:
    iss: str
    issuer: TrustedIssuer
    token: TokenId | None = None  # set when the replay check was deferred to the caller (check_replay)


REPLAYED = "The token has already been used (jti replay)"

# Lengths the store keeps (seen_jti.iss / .jti): longer values are refused, not truncated.
MAX_ISS, MAX_JTI = 512, 256
KEY_FAMILY = {"ES": ec.EllipticCurvePublicKey, "RS": rsa.RSAPublicKey, "PS": rsa.RSAPublicKey}


class TokenVerifier:
    def __init__(self, issuers: dict[str, TrustedIssuer], remember_jti: Callable[[str, str, datetime], bool],
                 leeway: int = 60, max_lifetime: int = 600, keys: KeyFetcher | None = None) -> None:
        self.issuers = issuers
        self.remember_jti = remember_jti
        self.leeway = leeway
        self.max_lifetime = max_lifetime  # longest exp - now accepted; each jti is kept until its exp
        self.keys = keys or KeyFetcher()
        self._inline = {iss: jwt.PyJWKSet.from_dict(i.jwks) for iss, i in issuers.items() if i.jwks}

    def verify(self, authorization: str | None, audience: str, defer_replay_check: bool = False) -> Client:
        """The client a valid token names. Its jti is remembered here (a second use is a 401), unless
        ``defer_replay_check``: then the caller must remember it (``check_replay``, or in its own write,
        as a hook call does with its record) before anything the request caused is kept or answered."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("A bearer token (JWT) is required")
        token = token.strip()
        header, unverified = _peek(token)
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALGORITHMS:
            raise AuthError(f"Algorithm {alg!r} is not accepted; use one of {', '.join(ALGORITHMS)}")
        if not isinstance(kid, str) or not kid or len(kid) > 256:
            raise AuthError("The token header needs a 'kid'")
        _check_claim_types(unverified)
        issuer = self.issuers.get(str(unverified.get("iss")))
        if issuer is None:
            raise AuthError("The token's issuer is not trusted")
        iss = issuer.iss
        key = self._signing_key(issuer, header.get("jku"), kid)
        if not _fits(key, alg):
            raise AuthError(f"The key {kid!r} does not fit the token's algorithm {alg}")
        try:
            claims = jwt.decode(token, key, algorithms=[alg], audience=audience, issuer=iss, leeway=self.leeway,
                                options={"require": ["iss", "aud", "exp", "iat", "jti"]})
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("The token has expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise AuthError("The token's iat or nbf is in the future") from exc
        except jwt.InvalidAudienceError as exc:
            raise AuthError(f"The token's aud does not name this endpoint ({audience})") from exc
        except (jwt.PyJWTError, TypeError, ValueError) as exc:  # ValueError/TypeError: a key PyJWT cannot use
            raise AuthError(f"The token is not valid: {exc}") from exc
        jti = claims["jti"]
        try:
            expires = datetime.fromtimestamp(claims["exp"], UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise AuthError("The token's exp is out of range") from exc
        if claims["exp"] - time.time() > self.max_lifetime + self.leeway:
            raise AuthError(f"The token's exp is more than {self.max_lifetime} s ahead; "
                            "CDS Hooks client tokens are short-lived (about 5 minutes)")
        token_id = TokenId(iss, jti, expires)
        if defer_replay_check:
            return Client(iss, issuer, token_id)
        self.check_replay(token_id)
        return Client(iss, issuer)

    def check_replay(self, token: TokenId) -> None:
        if not self.remember_jti(token.iss, token.jti, token.expires):
            raise AuthError(REPLAYED)

    def _signing_key(self, issuer: TrustedIssuer, jku: Any, kid: str) -> Any:
        if jku is not None:
            if jku not in issuer.jku:
                raise AuthError("The token's jku is not on this issuer's allow-list")
            return self.keys.key(jku, kid)
        if issuer.iss in self._inline:
            try:
                return self._inline[issuer.iss][kid].key
            except KeyError as exc:
                raise AuthError("No key with the token's kid is known for this issuer") from exc
        assert issuer.jwks_url is not None
        return self.keys.key(issuer.jwks_url, kid)


def _peek(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims, unverified: only to choose the issuer's key. PyJWT's decode, which checks the
    signature, then reads the token again in full (and strictly: its base64 is checked character by
    character, in Python). Reading it with PyJWT here too cost that check twice (~0.4 M instructions)."""
    parts = token.split(".")
    try:
        if len(parts) != 3:
            raise ValueError("not three segments")
        header, claims = (orjson.loads(jwt.utils.base64url_decode(p)) for p in parts[:2])
    except ValueError as exc:  # binascii.Error and orjson's JSONDecodeError are ValueErrors
        raise AuthError("The token is not a well-formed JWT") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise AuthError("The token is not a well-formed JWT")
    return header, claims


def _fits(key: Any, alg: str) -> bool:
    """An ES token needs an EC key, an RS or PS token an RSA key (PyJWT would fail with a TypeError)."""
    return isinstance(key, KEY_FAMILY[alg[:2]])


def _check_claim_types(claims: dict[str, Any]) -> None:
    """RFC 7519 types, checked before anything else: NumericDate claims are JSON numbers (not strings,
    not booleans); jti and iss are strings the store can keep."""
    for name in ("exp", "iat", "nbf"):
        if name in claims and (isinstance(claims[name], bool) or not isinstance(claims[name], int | float)):
            raise AuthError(f"The token's {name} must be a number (NumericDate)")
    iss, jti = claims.get("iss"), claims.get("jti")
    if not isinstance(iss, str) or not iss or len(iss) > MAX_ISS or not iss.isprintable():
        raise AuthError("The token's iss must be a printable string of at most 512 characters")
    if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI or not jti.isprintable():
        raise AuthError("The token's jti must be a non-empty printable string of at most 256 characters")


class KeyFetcher:
    """Client key sets (JWKS) fetched so that one slow or hostile key source costs its own callers only:
    the whole fetch has a deadline (http_fetch), one fetch per source is under way at a time (others
    wait for it, within their own deadline), and failures are remembered as well as successes."""

    def __init__(self, budget_seconds: float = 2.0, ttl_seconds: float = 300.0, failure_ttl_seconds: float = 30.0,
                 refetch_after_seconds: float = 60.0, max_bytes: int = 256 * 1024, wait_seconds: float = 0.5) -> None:
        self.budget = budget_seconds
        self.wait_seconds = wait_seconds
        self.ttl = ttl_seconds
        self.failure_ttl = failure_ttl_seconds
        self.refetch_after = refetch_after_seconds  # an unknown kid triggers a new fetch at most this often
        self.max_bytes = max_bytes
        self._sources: dict[str, _Source] = {}
        self._lock = threading.Lock()

    def key(self, url: str, kid: str) -> Any:
        source = self._source(url)
        deadline = time.monotonic() + self.budget
        # One fetch per source at a time; a caller waits briefly for one under way (a healthy source
        # answers in milliseconds), not for as long as a hanging source would hold it.
        with GATE.waiting():  # the thread fetching needs the gate to finish
            acquired = source.lock.acquire(timeout=min(self.budget, self.wait_seconds))
        if not acquired:
            raise AuthError("The issuer's keys could not be fetched (key source busy)")
        try:
            now = time.monotonic()
            if source.failure and now < source.failure_until:
                raise AuthError(f"The issuer's keys could not be fetched ({source.failure})")
            fresh = source.keys is not None and now - source.fetched_at < self.ttl
            if not fresh or (kid not in (source.keys or {}) and now - source.fetched_at >= self.refetch_after):
                self._fetch(url, source, deadline)
            key = (source.keys or {}).get(kid)
        finally:
            source.lock.release()
        if key is None:
            raise AuthError("No key with the token's kid is known for this issuer")
        return key

    def _fetch(self, url: str, source: _Source, deadline: float) -> None:
        try:
            answer = http_fetch.get(url, deadline, headers={"Accept": "application/json"}, max_bytes=self.max_bytes)
            if answer.status != 200:
                raise ValueError(f"answered {answer.status}")
            keys = {k.key_id: k.key for k in jwt.PyJWKSet.from_dict(json.loads(answer.body)).keys if k.key_id}
        except (http_fetch.HttpFailure, ValueError, jwt.PyJWTError, TypeError, AttributeError) as exc:
            source.failure, source.failure_until = str(exc) or exc.__class__.__name__, \
                time.monotonic() + self.failure_ttl
            raise AuthError(f"The issuer's key set could not be read ({source.failure})") from exc
        source.keys, source.fetched_at, source.failure = keys, time.monotonic(), ""

    def _source(self, url: str) -> _Source:
        with self._lock:
            return self._sources.setdefault(url, _Source())


@dataclass
class _Source:
    keys: dict[str, Any] | None = None
    fetched_at: float = 0.0
    failure: str = ""
    failure_until: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
