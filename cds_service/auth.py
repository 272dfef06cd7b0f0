"""CDS Hooks 2.0 client authentication: JWTs from trusted issuers, checked with PyJWT.

Trust is configured per issuer (``CDS_TRUSTED_ISSUERS``, JSON or YAML):

    issuers:
      - iss: https://ehr.example.org
        jwks_url: https://ehr.example.org/.well-known/jwks.json   # or jwks: {keys: [...]} inline
        jku: [https://ehr.example.org/.well-known/jwks.json]       # jku header values it may present
        fhir_servers: [https://fhir.ehr.example.org/r4]            # FHIR servers we may call for it
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import yaml

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
        issuers[e["iss"]] = TrustedIssuer(e["iss"], e.get("jwks_url"), e.get("jwks"), tuple(lists["jku"]),
                                          tuple(u.rstrip("/") for u in lists["fhir_servers"]))
    return issuers


@dataclass(frozen=True)
class Client:
    iss: str
    issuer: TrustedIssuer


class TokenVerifier:
    def __init__(self, issuers: dict[str, TrustedIssuer], remember_jti: Callable[[str, str, datetime], bool],
                 leeway: int = 60, max_lifetime: int = 600) -> None:
        self.issuers = issuers
        self.remember_jti = remember_jti
        self.leeway = leeway
        self.max_lifetime = max_lifetime  # longest exp - now accepted; each jti is kept until its exp
        self._clients: dict[str, jwt.PyJWKClient] = {}
        self._inline = {iss: jwt.PyJWKSet.from_dict(i.jwks) for iss, i in issuers.items() if i.jwks}
        self._lock = threading.Lock()

    def verify(self, authorization: str | None, audience: str) -> Client:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("A bearer token (JWT) is required")
        token = token.strip()
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise AuthError("The token is not a well-formed JWT") from exc
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALGORITHMS:
            raise AuthError(f"Algorithm {alg!r} is not accepted; use one of {', '.join(ALGORITHMS)}")
        if not isinstance(kid, str) or not kid:
            raise AuthError("The token header needs a 'kid'")
        issuer = self.issuers.get(str(unverified.get("iss")))
        if issuer is None:
            raise AuthError("The token's issuer is not trusted")
        iss = issuer.iss
        key = self._signing_key(issuer, header.get("jku"), kid)
        try:
            claims = jwt.decode(token, key, algorithms=[alg], audience=audience, issuer=iss, leeway=self.leeway,
                                options={"require": ["iss", "aud", "exp", "iat", "jti"]})
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("The token has expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise AuthError("The token's iat is in the future") from exc
        except jwt.InvalidAudienceError as exc:
            raise AuthError(f"The token's aud does not name this endpoint ({audience})") from exc
        except jwt.PyJWTError as exc:
            raise AuthError(f"The token is not valid: {exc}") from exc
        jti = claims["jti"]
        if not isinstance(jti, str) or not jti:
            raise AuthError("The token's jti must be a non-empty string")
        try:
            expires = datetime.fromtimestamp(claims["exp"], UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise AuthError("The token's exp is out of range") from exc
        if claims["exp"] - time.time() > self.max_lifetime + self.leeway:
            raise AuthError(f"The token's exp is more than {self.max_lifetime} s ahead; "
                            "CDS Hooks client tokens are short-lived (about 5 minutes)")
        if not self.remember_jti(iss, jti, expires):
            raise AuthError("The token has already been used (jti replay)")
        return Client(iss, issuer)

    def _signing_key(self, issuer: TrustedIssuer, jku: Any, kid: str) -> Any:
        if jku is not None:
            if jku not in issuer.jku:
                raise AuthError("The token's jku is not on this issuer's allow-list")
            source = jku
        elif issuer.iss in self._inline:
            try:
                return self._inline[issuer.iss][kid].key
            except KeyError as exc:
                raise AuthError("No key with the token's kid is known for this issuer") from exc
        else:
            source = issuer.jwks_url
        try:
            return self._jwks_client(source).get_signing_key(kid).key
        except jwt.PyJWKClientConnectionError as exc:
            raise AuthError("The issuer's keys could not be fetched") from exc
        except jwt.PyJWKClientError as exc:
            raise AuthError("No key with the token's kid is known for this issuer") from exc
        except jwt.PyJWTError as exc:  # e.g. the jku answered something that is not a usable JWKS
            raise AuthError("The issuer's key set could not be read") from exc

    def _jwks_client(self, url: str) -> jwt.PyJWKClient:
        with self._lock:
            if url not in self._clients:
                self._clients[url] = jwt.PyJWKClient(url, cache_keys=True, lifespan=300, timeout=5)
            return self._clients[url]
