"""CDS Hooks client authentication over real HTTP: the JWT negative matrix, each case its own test,
none of them processed; and the valid ES384 / RS384 cases accepted."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from cds_service.store import coverage_assertions, feedback, hook_calls
from tests.conftest import SIGN, LiveService, assertion_ids, hook_request, service_request
from tests.fhir_test_server import FhirTestServer

ISS = "https://ehr.example.org"
EC_KEY = ec.generate_private_key(ec.SECP384R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_EC_KEY = ec.generate_private_key(ec.SECP384R1())


def jwk(private: Any, kid: str) -> dict[str, Any]:
    algo = ECAlgorithm if isinstance(private, ec.EllipticCurvePrivateKey) else RSAAlgorithm
    key: dict[str, Any] = algo.to_jwk(private.public_key(), as_dict=True)  # type: ignore[attr-defined]
    return {**key, "kid": kid, "use": "sig"}


def jwks_url(server: FhirTestServer) -> str:
    return server.base.rsplit("/fhir", 1)[0] + "/jwks.json"


@pytest.fixture(scope="module")
def jwks_server() -> Iterator[FhirTestServer]:
    """Serves a JWKS over real HTTP, as an EHR's jku endpoint would."""
    server = FhirTestServer(documents={"/jwks.json": {"keys": [jwk(EC_KEY, "jku-ec")]}})
    yield server
    server.close()


@pytest.fixture
def secured(service_factory: Any, tmp_path: Path, jwks_server: FhirTestServer) -> LiveService:
    issuers = {"issuers": [{"iss": ISS, "jwks": {"keys": [jwk(EC_KEY, "ec-1"), jwk(RSA_KEY, "rsa-1")]},
                            "jku": [jwks_url(jwks_server)], "fhir_servers": []}]}
    path = tmp_path / "issuers.json"
    path.write_text(json.dumps(issuers))
    service: LiveService = service_factory(TRUSTED_ISSUERS=str(path))
    return service


def token(service: LiveService, path: str = f"/cds-services/{SIGN}", *, key: Any = EC_KEY, alg: str = "ES384",
          kid: str = "ec-1", headers: dict[str, str] | None = None, **overrides: Any) -> str:
    """A client JWT as CDS Hooks describes it; ``overrides`` replace claims (None drops one)."""
    now = int(time.time())
    claims = {"iss": ISS, "aud": service.url(path), "exp": now + 300, "iat": now, "jti": str(uuid.uuid4())}
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid, "typ": "JWT", **(headers or {})})


def call(service: LiveService, bearer: str | None, path: str = f"/cds-services/{SIGN}") -> Any:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer is not None else {}
    return service.http.post(service.url(path), json=hook_request(service_request()), headers=headers, timeout=5)


def assert_rejected(service: LiveService, resp: Any, reason: str) -> None:
    assert resp.status_code == 401, resp.text
    assert resp.headers["WWW-Authenticate"].startswith("Bearer ")
    body = resp.json()
    assert body["resourceType"] == "OperationOutcome" and reason in body["issue"][0]["diagnostics"]
    store = service.pipeline.store
    assert store.count(hook_calls) == 0 and store.count(coverage_assertions) == 0


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# ---------------------------------------------------------------- the negative matrix


def test_no_token(secured: LiveService) -> None:
    assert_rejected(secured, call(secured, None), "bearer token")


def test_malformed_token(secured: LiveService) -> None:
    assert_rejected(secured, call(secured, "not.a-jwt"), "well-formed")


def test_alg_none(secured: LiveService) -> None:
    claims = {"iss": ISS, "aud": secured.url(f"/cds-services/{SIGN}"), "exp": int(time.time()) + 300,
              "iat": int(time.time()), "jti": "n1"}
    unsigned = b64(json.dumps({"alg": "none", "typ": "JWT", "kid": "ec-1"}).encode()) + "." + \
        b64(json.dumps(claims).encode()) + "."
    assert_rejected(secured, call(secured, unsigned), "'none' is not accepted")


def test_hs256_signed_with_the_public_key(secured: LiveService) -> None:
    public_pem = EC_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    claims = {"iss": ISS, "aud": secured.url(f"/cds-services/{SIGN}"), "exp": int(time.time()) + 300,
              "iat": int(time.time()), "jti": "h1"}
    signing_input = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "ec-1"}).encode()) + "." + \
        b64(json.dumps(claims).encode())
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    assert_rejected(secured, call(secured, signing_input + "." + b64(signature)), "'HS256' is not accepted")


def test_expired(secured: LiveService) -> None:
    now = int(time.time())
    assert_rejected(secured, call(secured, token(secured, exp=now - 120, iat=now - 600)), "expired")


def test_iat_in_the_future(secured: LiveService) -> None:
    now = int(time.time())
    assert_rejected(secured, call(secured, token(secured, iat=now + 600, exp=now + 900)), "future")


def test_wrong_aud(secured: LiveService) -> None:
    assert_rejected(secured, call(secured, token(secured, aud="https://elsewhere.example/cds-services/x")), "aud")


def test_unknown_iss(secured: LiveService) -> None:
    assert_rejected(secured, call(secured, token(secured, iss="https://evil.example")), "not trusted")


def test_unknown_kid(secured: LiveService) -> None:
    assert_rejected(secured, call(secured, token(secured, kid="nope")), "kid")


def test_tampered_payload(secured: LiveService) -> None:
    header, _payload, signature = token(secured).split(".")
    forged = {"iss": ISS, "aud": secured.url(f"/cds-services/{SIGN}"), "exp": int(time.time()) + 9999,
              "iat": int(time.time()), "jti": "forged"}
    assert_rejected(secured, call(secured, f"{header}.{b64(json.dumps(forged).encode())}.{signature}"), "not valid")


def test_signed_by_another_key_with_a_known_kid(secured: LiveService) -> None:
    assert_rejected(secured, call(secured, token(secured, key=OTHER_EC_KEY)), "not valid")


def test_jku_not_on_allow_list(secured: LiveService) -> None:
    bad = token(secured, headers={"jku": "https://attacker.example/jwks.json"})
    assert_rejected(secured, call(secured, bad), "jku")


def test_replayed_jti(secured: LiveService) -> None:
    once = token(secured)
    assert call(secured, once).status_code == 200
    replay = call(secured, once)
    assert replay.status_code == 401 and "replay" in replay.json()["issue"][0]["diagnostics"]
    assert secured.pipeline.store.count(hook_calls) == 1


def test_exp_out_of_range(secured: LiveService) -> None:
    assert_rejected(secured, call(secured, token(secured, exp=10**20)), "out of range")


def test_long_lived_token_is_refused(secured: LiveService) -> None:
    # CDS Hooks client tokens live about 5 minutes; the default ceiling is 600 s (+ 60 s clock leeway).
    assert_rejected(secured, call(secured, token(secured, exp=int(time.time()) + 3600)), "short-lived")
    assert call(secured, token(secured, exp=int(time.time()) + 600)).status_code == 200


def test_missing_jti(secured: LiveService) -> None:
    assert_rejected(secured, call(secured, token(secured, jti=None)), "jti")


# ---------------------------------------------------------------- accepted


@pytest.mark.parametrize(("key", "alg", "kid"), [(EC_KEY, "ES384", "ec-1"), (RSA_KEY, "RS384", "rsa-1"),
                                                 (RSA_KEY, "PS256", "rsa-1")])
def test_valid_tokens_are_accepted(secured: LiveService, key: Any, alg: str, kid: str) -> None:
    resp = call(secured, token(secured, key=key, alg=alg, kid=kid))
    assert resp.status_code == 200 and resp.json()["cards"]
    assert secured.pipeline.store.count(hook_calls) == 1


def test_key_from_an_allowed_jku(secured: LiveService, jwks_server: FhirTestServer) -> None:
    resp = call(secured, token(secured, kid="jku-ec", headers={"jku": jwks_url(jwks_server)}))
    assert resp.status_code == 200, resp.text


def test_jku_answering_no_usable_key_set_is_401_not_500(service_factory: Any, tmp_path: Path) -> None:
    broken = FhirTestServer(documents={"/jwks.json": {"keys": []}})
    try:
        issuers = tmp_path / "issuers.json"
        issuers.write_text(json.dumps({"issuers": [{"iss": ISS, "jwks": {"keys": [jwk(EC_KEY, "ec-1")]},
                                                    "jku": [jwks_url(broken)]}]}))
        svc = service_factory(TRUSTED_ISSUERS=str(issuers))
        resp = call(svc, token(svc, kid="jku-ec", headers={"jku": jwks_url(broken)}))
        assert_rejected(svc, resp, "key set could not be read")
    finally:
        broken.close()


def test_audit_and_assertions_record_the_client(secured: LiveService) -> None:
    body = call(secured, token(secured)).json()
    [assertion_id] = assertion_ids(body)
    path = f"/coverage-assertions/{assertion_id}"
    assert secured.http.get(secured.url(path), timeout=5).status_code == 401
    looked_up = secured.http.get(secured.url(path), headers={"Authorization": f"Bearer {token(secured, path)}"},
                                 timeout=5)
    assert looked_up.status_code == 200 and looked_up.json()["client_iss"] == ISS


def test_feedback_needs_a_token_for_its_own_url(secured: LiveService) -> None:
    path = f"/cds-services/{SIGN}/feedback"
    fb = {"feedback": [{"card": "c1", "outcome": "overridden", "outcomeTimestamp": "2026-11-25T10:00:00Z"}]}
    assert secured.http.post(secured.url(path), json=fb, timeout=5).status_code == 401
    wrong_aud = {"Authorization": f"Bearer {token(secured)}"}  # minted for the hook URL, not feedback
    assert secured.http.post(secured.url(path), json=fb, headers=wrong_aud, timeout=5).status_code == 401
    ok = {"Authorization": f"Bearer {token(secured, path)}"}
    assert secured.http.post(secured.url(path), json=fb, headers=ok, timeout=5).status_code == 200
    assert secured.pipeline.store.count(feedback) == 1


def test_discovery_and_preflight_need_no_token(secured: LiveService) -> None:
    assert secured.http.get(secured.url("/cds-services"), timeout=5).status_code == 200
    pre = secured.http.options(secured.url(f"/cds-services/{SIGN}"), timeout=5, headers={
        "Origin": "https://sandbox.cds-hooks.org", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert pre.status_code == 200 and "authorization" in pre.headers["Access-Control-Allow-Headers"].lower()


def test_public_base_url_sets_the_expected_aud(service_factory: Any, tmp_path: Path) -> None:
    path = tmp_path / "issuers.yaml"
    path.write_text(f"issuers:\n  - iss: {ISS}\n    jwks: {json.dumps({'keys': [jwk(EC_KEY, 'ec-1')]})}\n")
    proxied = service_factory(TRUSTED_ISSUERS=str(path), PUBLIC_BASE_URL="https://cds.payer.example")
    route = f"/cds-services/{SIGN}"
    as_called = token(proxied, aud=f"https://cds.payer.example{route}")
    assert call(proxied, as_called).status_code == 200
    assert call(proxied, token(proxied)).status_code == 401  # the internal address is not the aud


@pytest.mark.parametrize(("content", "message"), [
    ("issuers: []", "non-empty"),
    ("issuers:\n  - iss: x\n", "jwks_url"),
    ("issuers:\n  - iss: x\n    jwks: {keys: [{kty: EC}]}\n", "not a valid JWKS"),
    ("{not yaml: [", "cannot be read"),
])
def test_bad_trusted_issuers_file_stops_start_up(tmp_path: Path, content: str, message: str) -> None:
    from cds_service import create_app

    path = tmp_path / "issuers.yaml"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        create_app({"TRUSTED_ISSUERS": str(path), "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"})

