"""Hook calls from servers are answered before Flask (cds_service.web.hook_calls); calls from browsers go
through Flask for CORS's headers. Both must answer every call alike."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest
import requests

from cds_service.observability import HookInstanceFilter
from tests.conftest import SIGN, LiveService, hook_request, service_request

BROWSER = {"Origin": "https://sandbox.cds-hooks.org"}


def _both(cds: LiveService, path: str, data: bytes, content_type: str = "application/json",
          headers: dict[str, str] | None = None) -> tuple[requests.Response, requests.Response]:
    """The same request as a server sends it and as a browser does."""
    sent = {"Content-Type": content_type, **(headers or {})}
    server = cds.http.post(cds.url(path), data=data, headers=sent, timeout=10)
    browser = cds.http.post(cds.url(path), data=data, headers={**sent, **BROWSER}, timeout=10)
    assert "Access-Control-Allow-Origin" in browser.headers and "Access-Control-Allow-Origin" not in server.headers
    return server, browser


def test_server_calls_do_not_go_through_flask(cds: LiveService) -> None:
    def flask_view(service_id: str) -> Any:
        raise AssertionError("served by Flask")

    cds.app.view_functions["cds_hooks.call_service"] = flask_view
    body = cds.call(hook_request(service_request("0530U")))
    assert body["cards"]
    browser = cds.http.post(cds.url(f"/cds-services/{SIGN}"), json=hook_request(service_request("0530U")),
                            headers=BROWSER, timeout=10)
    assert browser.status_code == 500  # the browser's call reached the Flask view, which failed


CASES = {
    "unknown service": (f"/cds-services/{SIGN}-nope", b"{}", "application/json", 404),
    "unknown service, non-ASCII id": ("/cds-services/caf%C3%A9", b"{}", "application/json", 404),
    "not JSON content": (f"/cds-services/{SIGN}", b"{}", "text/plain", 415),
    "broken JSON": (f"/cds-services/{SIGN}", b'{"hook": ', "application/json", 400),
    "nesting beyond the limit": (f"/cds-services/{SIGN}", b"[" * 5000 + b"]" * 5000, "application/json", 400),
    "not a hook request": (f"/cds-services/{SIGN}", b'{"hook": "order-sign"}', "application/json", 400),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_server_and_browser_calls_are_refused_alike(cds: LiveService, case: str) -> None:
    path, data, content_type, status = CASES[case]
    server, browser = _both(cds, path, data, content_type)
    assert server.status_code == browser.status_code == status
    assert server.headers["Content-Type"] == browser.headers["Content-Type"] == "application/fhir+json"
    assert server.json() == browser.json()
    assert server.json()["resourceType"] == "OperationOutcome"


def test_server_and_browser_calls_are_answered_alike(cds: LiveService) -> None:
    def without_ids(body: dict[str, Any]) -> list[Any]:
        return [(c["summary"], c["indicator"], [link["url"] for link in c.get("links", [])]) for c in body["cards"]]

    request = hook_request(service_request("0530U"))
    server = cds.call(request)
    browser = cds.http.post(cds.url(f"/cds-services/{SIGN}"), json={**request, "hookInstance": "b-1"},
                            headers=BROWSER, timeout=10)
    assert browser.status_code == 200 and browser.headers["Content-Type"] == "application/json"
    assert without_ids(server) == without_ids(browser.json()) and server["cards"]


def test_the_non_ascii_id_is_named_as_sent(cds: LiveService) -> None:
    server, _ = _both(cds, "/cds-services/caf%C3%A9", b"{}")
    assert server.json()["issue"][0]["diagnostics"] == "No CDS service with id 'café'"


def test_an_unexpected_error_is_a_logged_500_on_both_paths(cds: LiveService, monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("store on fire")

    monkeypatch.setattr(cds.pipeline, "handle_hook", broken)
    caplog.set_level(logging.ERROR, logger="cds_service.web.responses")
    data = b'{"hook": "order-sign"}'
    server, browser = _both(cds, f"/cds-services/{SIGN}", data)
    assert server.status_code == browser.status_code == 500
    assert server.json() == browser.json()
    assert "store on fire" not in server.text  # the cause is logged, not told
    assert [r for r in caplog.records if r.exc_info and "store on fire" in str(r.exc_info[1])]


def test_other_methods_and_paths_stay_with_flask(cds: LiveService) -> None:
    wrong_method = cds.http.get(cds.url(f"/cds-services/{SIGN}"), timeout=5)
    assert wrong_method.status_code == 405 and "POST" in wrong_method.headers["Allow"]
    trailing = cds.http.post(cds.url(f"/cds-services/{SIGN}/"), json={}, timeout=5)
    assert trailing.status_code == 404 and trailing.json()["resourceType"] == "OperationOutcome"
    feedback = cds.http.post(cds.url(f"/cds-services/{SIGN}/feedback"), json={"feedback": [{}]}, timeout=5)
    assert feedback.status_code == 400 and "feedback" in feedback.json()["issue"][0]["expression"][0]


def test_server_calls_are_counted_and_logged_as_flask_did(cds: LiveService, caplog: pytest.LogCaptureFixture) -> None:
    samples = {"ok": f'cds_requests_total{{endpoint="call_service",service="{SIGN}",status="200"}}',
               "unknown": 'cds_requests_total{endpoint="call_service",service="unknown",status="404"}'}

    def counts() -> dict[str, float]:
        metrics = cds.http.get(cds.url("/metrics"), timeout=5).text
        found = {name: re.search(re.escape(sample) + r" ([\d.e+]+)", metrics) for name, sample in samples.items()}
        return {name: float(m.group(1)) if m else 0.0 for name, m in found.items()}

    caplog.set_level(logging.INFO, logger="cds_service.requests")
    caplog.handler.addFilter(HookInstanceFilter())
    before = counts()
    request = hook_request(service_request("0530U"))
    cds.call(request)
    cds.http.post(cds.url(f"/cds-services/{SIGN}-nope"), json={}, timeout=5)
    lines = [r for r in caplog.records if r.name == "cds_service.requests"]
    assert [(r.getMessage(), r.service, r.status) for r in lines] == [  # type: ignore[attr-defined]
        (f"POST /cds-services/{SIGN} 200", SIGN, 200), (f"POST /cds-services/{SIGN}-nope 404", "unknown", 404)]
    assert lines[0].hookInstance == request["hookInstance"]  # type: ignore[attr-defined]
    assert {name: n - before[name] for name, n in counts().items()} == {"ok": 1.0, "unknown": 1.0}
