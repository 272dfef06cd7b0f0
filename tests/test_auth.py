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
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from cds_service.store import coverage_assertions, feedback, hook_calls
from tests.conftest import SIGN, LiveService, assertion_ids, hook_request, service_request
from tests.fhir_test_server import FhirTestServer
from tests.hostile_server import HostileServer

ISS = "https://ehr.example.org"
EC_KEY = ec.generate_private_key(ec.SECP384R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_EC_KEY = ec.generate_private_key(ec.SECP384R1())


def jwk(private: Any, kid: str) -> dict[str, Any]:
    algo = ECAlgorithm if isinstance(private, ec.EllipticCurvePrivateKey) else RSAAlgorithm
    key: dict[str, Any] = algo.to_jwk(private.public_key(), as_dict=True)
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


@pytest.mark.parametrize("bearer", [
    "not.a-jwt",  # two segments
    "a.b.c.d",  # four
    f"{b64(b'[1]')}.{b64(b'{}')}.c2ln",  # a header that is not a JSON object
    f"{b64(b'{}')}.{b64(b'not json')}.c2ln",  # claims that are not JSON
    f"{b64(b'{}')}.a.c2ln",  # claims that are not base64 (one character)
])
def test_malformed_token(secured: LiveService, bearer: str) -> None:
    assert_rejected(secured, call(secured, bearer), "well-formed")


def test_a_token_with_padded_segments_is_accepted(secured: LiveService) -> None:
    """Some issuers pad each segment with '=' and sign what they send (PyJWT accepts it); the key is still
    found from the padded header and claims."""
    header, claims, _ = token(secured).split(".")
    signing_input = ".".join(p + "=" * (-len(p) % 4) for p in (header, claims))
    assert "=" in signing_input
    signature = jwt.algorithms.ECAlgorithm(jwt.algorithms.ECAlgorithm.SHA384).sign(signing_input.encode(), EC_KEY)
    assert call(secured, f"{signing_input}.{b64(signature)}").status_code == 200


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


def test_a_token_is_spent_by_its_first_use_whatever_came_of_it(secured: LiveService) -> None:
    """The jti is written with the call's record, and on its own when nothing is recorded: after a 400,
    an unreadable body, a wrong address or an answered retry, the same token is still a 401."""
    headers = {"Content-Type": "application/json"}
    url = secured.url(f"/cds-services/{SIGN}")
    firsts = {
        "invalid request": lambda bearer: requests.post(url, json={"hook": "order-sign"}, headers=bearer, timeout=10),
        "unreadable body": lambda bearer: requests.post(url, data=b"{not json", headers={**headers, **bearer},
                                                        timeout=10),
        "no such service": lambda bearer: requests.post(secured.url("/cds-services/nope"), json={}, headers=bearer,
                                                        timeout=10),
        "body too large": lambda bearer: requests.post(url, data=b" " * (1024 * 1024 + 1),
                                                       headers={**headers, **bearer}, timeout=10),
    }
    for what, first in firsts.items():
        once = token(secured) if what != "no such service" else token(secured, "/cds-services/nope")
        assert first({"Authorization": f"Bearer {once}"}).status_code in (400, 404, 413), what
        if what == "no such service":
            again = requests.post(secured.url("/cds-services/nope"), json={},
                                  headers={"Authorization": f"Bearer {once}"}, timeout=10)
        else:
            again = call(secured, once)
        assert again.status_code == 401 and "replay" in again.json()["issue"][0]["diagnostics"], what
    # An answered retry (same hookInstance, a new token) spends its token too.
    body = hook_request(service_request("0530U", "2025-03-03"))
    first_token, retry_token = token(secured), token(secured)
    for bearer in (first_token, retry_token):
        answer = requests.post(url, json=body, headers={"Authorization": f"Bearer {bearer}"}, timeout=10)
        assert answer.status_code == 200
    assert requests.post(url, json=body, headers={"Authorization": f"Bearer {retry_token}"},
                         timeout=10).status_code == 401
    assert secured.pipeline.store.count(hook_calls) == 1


def test_one_token_sent_twice_at_once_is_accepted_once(secured: LiveService) -> None:
    """Two calls racing with one token (each its own hookInstance): one answer, one 401, one record."""
    from concurrent.futures import ThreadPoolExecutor

    once = token(secured)
    bodies = [hook_request(service_request("0530U", "2025-03-03")) for _ in range(2)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        statuses = sorted(pool.map(lambda b: requests.post(secured.url(f"/cds-services/{SIGN}"), json=b, timeout=10,
                                                           headers={"Authorization": f"Bearer {once}"}).status_code,
                                   bodies))
    assert statuses == [200, 401]
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
    issued = secured.http.post(secured.url(f"/cds-services/{SIGN}"), json=hook_request(service_request()),
                               headers={"Authorization": f"Bearer {token(secured)}"}, timeout=5).json()
    path = f"/cds-services/{SIGN}/feedback"
    fb = {"feedback": [{"card": issued["cards"][0]["uuid"], "outcome": "overridden",
                        "outcomeTimestamp": "2026-11-25T10:00:00Z"}]}
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



# ---------------------------------------------------------------- hostile tokens and key sources


@pytest.mark.parametrize(("key", "alg", "kid"), [(RSA_KEY, "RS384", "ec-1"), (EC_KEY, "ES384", "rsa-1"),
                                                 (RSA_KEY, "PS384", "ec-1")],
                         ids=["rs384-header-ec-key", "es384-header-rsa-key", "ps384-header-ec-key"])
def test_algorithm_that_does_not_fit_the_key_is_401(secured: LiveService, key: Any, alg: str, kid: str) -> None:
    assert_rejected(secured, call(secured, token(secured, key=key, alg=alg, kid=kid)), "does not fit")


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
def test_numeric_date_given_as_a_string_is_401(secured: LiveService, claim: str) -> None:
    now = int(time.time())
    value = {"exp": now + 300, "iat": now, "nbf": now}[claim]
    as_text: dict[str, Any] = {claim: str(value)}
    assert_rejected(secured, call(secured, token(secured, **as_text)), f"{claim} must be a number")


def test_nbf_in_the_future_is_401(secured: LiveService) -> None:
    assert_rejected(secured, call(secured, token(secured, nbf=int(time.time()) + 3600)), "in the future")


@pytest.mark.parametrize("jti", ["x" * 5000, "a\x00b", "tab\there"], ids=["5000-chars", "nul", "tab"])
def test_jti_the_store_cannot_keep_is_401(secured: LiveService, jti: str) -> None:
    assert_rejected(secured, call(secured, token(secured, jti=jti)), "jti must be")


@pytest.fixture
def hostile_jku(service_factory: Any, tmp_path: Path) -> Any:
    """A service trusting an issuer whose allow-listed jku is a misbehaving server (mode set per test)."""
    server = HostileServer({"keys": [jwk(EC_KEY, "jku-ec")]})
    issuers = tmp_path / "issuers.json"
    issuers.write_text(json.dumps({"issuers": [{"iss": ISS, "jwks": {"keys": [jwk(EC_KEY, "ec-1")]},
                                                "jku": [server.url()]}]}))
    svc = service_factory(TRUSTED_ISSUERS=str(issuers), JWKS_BUDGET_SECONDS=1.0)
    yield svc, server
    server.close()


@pytest.mark.parametrize("mode", ["garbage", "html", "short", "hang", "trickle", "slow-headers"])
def test_misbehaving_jku_is_401_within_the_budget_and_its_failure_is_remembered(hostile_jku: Any, mode: str) -> None:
    svc, server = hostile_jku
    server.mode = mode
    start = time.monotonic()
    resp = call(svc, token(svc, kid="jku-ec", headers={"jku": server.url()}))
    assert time.monotonic() - start < 1.0 + 0.5
    assert_rejected(svc, resp, "could not be")
    hits = server.hits
    start = time.monotonic()
    again = call(svc, token(svc, kid="jku-ec", headers={"jku": server.url()}))
    assert again.status_code == 401 and time.monotonic() - start < 0.3  # the failure is cached
    assert server.hits == hits  # and the key source is not asked again


def test_a_hanging_key_source_costs_only_its_own_callers(hostile_jku: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor

    svc, server = hostile_jku
    server.mode = "hang"
    with ThreadPoolExecutor(max_workers=12) as pool:
        stalled = [pool.submit(call, svc, token(svc, kid="jku-ec", headers={"jku": server.url()}))
                   for _ in range(8)]
        time.sleep(0.1)
        start = time.monotonic()
        valid = call(svc, token(svc))  # inline key: never waits on the hanging source
        elapsed = time.monotonic() - start
        assert valid.status_code == 200 and elapsed < 0.5, elapsed
        assert all(f.result().status_code == 401 for f in stalled)


def test_a_good_jku_is_cached(hostile_jku: Any) -> None:
    svc, server = hostile_jku
    for _ in range(3):
        assert call(svc, token(svc, kid="jku-ec", headers={"jku": server.url()})).status_code == 200
    assert server.hits == 1


OTHER_ISS = "https://other-ehr.example.org"


@pytest.fixture
def two_issuers(service_factory: Any, tmp_path: Path) -> LiveService:
    issuers = tmp_path / "issuers.json"
    issuers.write_text(json.dumps({"issuers": [
        {"iss": ISS, "jwks": {"keys": [jwk(EC_KEY, "ec-1")]}},
        {"iss": OTHER_ISS, "jwks": {"keys": [jwk(OTHER_EC_KEY, "other-1")]}}]}))
    service: LiveService = service_factory(TRUSTED_ISSUERS=str(issuers))
    return service


def theirs(svc: LiveService, path: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(svc, path, key=OTHER_EC_KEY, kid='other-1', iss=OTHER_ISS)}"}


def test_assertions_are_visible_only_to_the_issuer_whose_call_made_them(two_issuers: LiveService) -> None:
    svc = two_issuers
    [assertion_id] = assertion_ids(call(svc, token(svc)).json())
    path = f"/coverage-assertions/{assertion_id}"
    mine = svc.http.get(svc.url(path), headers={"Authorization": f"Bearer {token(svc, path)}"}, timeout=5)
    assert mine.status_code == 200
    assert svc.http.get(svc.url(path), headers=theirs(svc, path), timeout=5).status_code == 404


def test_feedback_only_on_cards_issued_to_the_same_issuer(two_issuers: LiveService) -> None:
    svc = two_issuers
    card = call(svc, token(svc)).json()["cards"][0]["uuid"]
    path = f"/cds-services/{SIGN}/feedback"
    fb = {"feedback": [{"card": card, "outcome": "overridden", "outcomeTimestamp": "2026-11-25T10:00:00Z"}]}
    refused = svc.http.post(svc.url(path), json=fb, headers=theirs(svc, path), timeout=5)
    assert refused.status_code == 404 and "to this client" in refused.json()["issue"][0]["diagnostics"]
    assert svc.pipeline.store.count(feedback) == 0
    ok = svc.http.post(svc.url(path), json=fb, headers={"Authorization": f"Bearer {token(svc, path)}"}, timeout=5)
    assert ok.status_code == 200 and svc.pipeline.store.count(feedback) == 1
