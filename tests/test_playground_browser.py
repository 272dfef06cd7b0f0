"""The playground page in a real headless Chromium (Selenium), against the real service over HTTP on 127.0.0.1.

Needs Debian's ``chromium`` and ``chromium-driver`` packages and the ``selenium`` Python package. Without them the
tests skip, except under CI (the ``CI`` environment variable) where a missing browser is a failure.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from tests.report import SCREENSHOTS

try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException, WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.remote.webelement import WebElement
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:  # pragma: no cover - depends on the environment
    webdriver = None  # type: ignore[assignment]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT = 10


def _missing() -> list[str]:
    missing = []
    if webdriver is None:
        missing.append("the selenium Python package (pip install selenium)")
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    if not CHROMEDRIVER.exists():
        missing.append(f"{CHROMEDRIVER} (apt-get install chromium-driver)")
    return missing


def _require_browser() -> None:
    missing = _missing()
    if not missing:
        return
    reason = "browser test needs " + ", ".join(missing)
    if os.environ.get("CI"):
        pytest.fail(reason + " (required under CI)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    _require_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-default-apps", "--disable-extensions", "--window-size=1280,1000",
                 "--lang=en-US", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    try:
        browser = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    except WebDriverException as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"Chromium could not start: {exc.msg}")
    browser.set_page_load_timeout(WAIT)
    yield browser
    browser.quit()


@pytest.fixture
def page(driver: Any, service_factory: Any) -> Any:
    """The playground loaded from a fresh live service, with its options filled in."""
    service = service_factory()
    driver.get(service.url("/"))
    WebDriverWait(driver, WAIT).until(
        lambda d: d.find_element(By.ID, "playground-form").get_attribute("data-ready") == "true")
    return driver


# ---------------------------------------------------------------- helpers


def choose(driver: Any, *, test: str | None = None, date: str | None = None, diagnosis: str | None = None,
           plan: str | None = None) -> None:
    if test is not None:
        Select(driver.find_element(By.ID, "test")).select_by_value(test)
    if diagnosis is not None:
        Select(driver.find_element(By.ID, "diagnosis")).select_by_value(diagnosis)
    if plan is not None:
        Select(driver.find_element(By.ID, "plan")).select_by_value(plan)
    if date is not None:
        # Typing into <input type=date> depends on the browser locale; set the value as a date picker would.
        field = driver.find_element(By.ID, "date")
        driver.execute_script(
            "arguments[0].value = arguments[1];"
            "arguments[0].dispatchEvent(new Event('input', {bubbles: true}));"
            "arguments[0].dispatchEvent(new Event('change', {bubbles: true}));", field, date)
        assert field.get_attribute("value") == date


def seq(driver: Any) -> int:
    return int(driver.find_element(By.ID, "result").get_attribute("data-seq"))


def submit(driver: Any, via: Callable[[], None] | None = None, expect: str = "done") -> None:
    """Press Evaluate (or run ``via``) and wait until this request's answer is on the page."""
    before = seq(driver)
    if via is None:
        driver.find_element(By.ID, "evaluate").click()
    else:
        via()
    WebDriverWait(driver, WAIT).until(lambda d: seq(d) > before)
    state = driver.find_element(By.ID, "result").get_attribute("data-state")
    assert state == expect, driver.find_element(By.ID, "result-status").text


def wait_for_card(driver: Any, indicator: str, *needles: str) -> WebElement:
    def find(d: Any) -> WebElement | bool:
        try:
            for card in d.find_elements(By.CSS_SELECTOR, f'.card[data-indicator="{indicator}"]'):
                summary = card.find_element(By.CLASS_NAME, "card-summary").text
                if all(n in summary for n in needles):
                    return card
        except StaleElementReferenceException:
            return False
        return False

    try:
        card: Any = WebDriverWait(driver, WAIT).until(find)
    except TimeoutException:
        shown = [c.text for c in driver.find_elements(By.CLASS_NAME, "card-summary")]
        pytest.fail(f"no {indicator} card whose summary contains {needles}; cards shown: {shown}")
    return card


def screenshot(driver: Any, path: Path) -> Path:
    """A full-page PNG (through the DevTools protocol, so nothing below the fold is cut off)."""
    try:
        metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}})
        path.write_bytes(base64.b64decode(shot["data"]))
    except WebDriverException:
        driver.save_screenshot(str(path))
    assert path.exists() and path.stat().st_size > 0
    SCREENSHOTS.append(path)  # listed at the end of the test run (tests/conftest.py)
    return path


def verdict_text(driver: Any) -> str:
    text: str = driver.find_element(By.ID, "verdict").text
    return text


def raw_json(driver: Any, element_id: str) -> Any:
    return json.loads(driver.find_element(By.ID, element_id).get_attribute("textContent"))


# ---------------------------------------------------------------- scenarios


def test_investigational_code_shows_warning_card_with_policy_link_and_not_covered_verdict(
        page: Any, tmp_path: Path) -> None:
    choose(page, test="0530U", date="2025-03-03", diagnosis="", plan="commercial")
    submit(page)
    card = wait_for_card(page, "warning", "0530U", "investigational")

    links = card.find_elements(By.CSS_SELECTOR, ".card-links a")
    policy = [a for a in links if a.text.startswith("MP 2.267")]
    assert policy, [a.text for a in links]
    assert (policy[0].get_attribute("href") or "").startswith("http")
    assert policy[0].get_attribute("target") == "_blank"
    assert "noopener" in (policy[0].get_attribute("rel") or "")

    # Detail is markdown rendered to HTML, not shown raw.
    detail = card.find_element(By.CLASS_NAME, "card-detail")
    assert detail.find_elements(By.TAG_NAME, "strong")
    assert "**" not in detail.text
    # Override reasons are shown on the warning; the removal is offered on a card of its own.
    assert "Ordered as part of a clinical trial" in card.text
    remove = wait_for_card(page, "info", "Remove the draft")
    assert "Remove the draft order for" in remove.text

    assert "not-covered" in verdict_text(page)
    assert "Coverage/playground-coverage" in verdict_text(page)
    screenshot(page, tmp_path / "playground-investigational.png")


def test_date_after_retirement_shows_retired_notice_and_conditional_verdict(page: Any, tmp_path: Path) -> None:
    choose(page, test="0530U", date="2026-08-03", diagnosis="", plan="commercial")
    submit(page)
    card = wait_for_card(page, "info", "retired", "2026-07-01")
    assert "EviCore" in card.find_element(By.CLASS_NAME, "card-detail").text
    assert "conditional" in verdict_text(page)
    screenshot(page, tmp_path / "playground-retired.png")


def test_fep_plan_shows_fep_card_and_conditional_verdict(page: Any) -> None:
    choose(page, test="0530U", date="2025-03-03", diagnosis="", plan="fep")
    submit(page)
    wait_for_card(page, "info", "FEP")
    verdict = verdict_text(page)
    assert "conditional" in verdict
    assert "not-covered" not in verdict
    sent = raw_json(page, "raw-request")
    coverage = sent["prefetch"]["coverage"]["entry"][0]["resource"]
    assert "Federal Employee Program" in coverage["class"][0]["value"]


def test_form_submits_from_keyboard(page: Any) -> None:
    assert not page.find_elements(By.CLASS_NAME, "card")
    button = page.find_element(By.ID, "evaluate")
    page.execute_script("arguments[0].focus();", button)
    assert page.switch_to.active_element == button
    submit(page, via=lambda: page.switch_to.active_element.send_keys(Keys.ENTER))
    wait_for_card(page, "warning", "0530U")
    # The result region is announced politely to screen readers.
    assert page.find_element(By.ID, "result").get_attribute("aria-live") == "polite"


def test_raw_request_and_response_show_the_json_exchanged(page: Any) -> None:
    choose(page, test="0368U", date="2025-03-03", diagnosis="C18", plan="commercial")
    page.find_element(By.ID, "metastases").click()
    submit(page)
    wait_for_card(page, "warning", "0368U")

    sent = raw_json(page, "raw-request")
    assert sent["hook"] == "order-sign"
    assert sent["context"]["userId"] == "Practitioner/playground"
    order = sent["context"]["draftOrders"]["entry"][0]["resource"]
    assert order["code"]["coding"][0]["code"] == "0368U"
    assert order["occurrenceDateTime"] == "2025-03-03"
    assert [r["coding"][0]["code"] for r in order["reasonCode"]] == ["C18.9", "C78.0"]

    received = raw_json(page, "raw-response")
    summaries = [c["summary"] for c in received["cards"]]
    shown = [e.text for e in page.find_elements(By.CLASS_NAME, "card-summary")]
    assert shown == summaries
    assert received["systemActions"][0]["resource"]["id"] == "playground-order"

    # The panes open with the keyboard-operable <details> summary.
    page.find_element(By.CSS_SELECTOR, "#raw-request-details summary").click()
    assert page.find_element(By.ID, "raw-request").is_displayed()


def test_no_diagnosis_omits_reason_code_and_no_coverage_is_the_crd_400(page: Any) -> None:
    choose(page, test="0530U", date="2025-03-03", diagnosis="", plan="none")
    submit(page, expect="error")
    alert = page.find_element(By.CSS_SELECTOR, "#result [role=alert]")
    assert "HTTP 400" in alert.text and "No Coverage is accessible" in alert.text
    sent = raw_json(page, "raw-request")
    assert "reasonCode" not in sent["context"]["draftOrders"]["entry"][0]["resource"]
    assert sent["prefetch"]["coverage"] == {"resourceType": "Bundle", "type": "searchset", "entry": []}


def test_markdown_renderer_escapes_html_and_only_links_http(page: Any) -> None:
    html = page.execute_script(
        "return window.playground.renderMarkdown(arguments[0]);",
        "**b** *i* _u_ <img src=x onerror=alert(1)>\n\n- one\n- [ok](https://example.org/a_b)\n\n"
        "[bad](javascript:alert)")
    assert "<strong>b</strong>" in html and "<em>i</em>" in html and "<em>u</em>" in html
    assert "&lt;img" in html and "<img" not in html
    assert "<ul><li>one</li>" in html
    assert 'href="https://example.org/a_b"' in html
    assert "javascript:" not in html


def test_operation_outcome_is_shown_as_an_alert(page: Any) -> None:
    # An order the service refuses (an empty procedure code): its OperationOutcome diagnostics are shown.
    page.execute_script(
        "var s = document.getElementById('test'); var o = document.createElement('option');"
        "o.value = ''; o.textContent = 'broken'; s.appendChild(o); s.value = '';")
    before = seq(page)
    page.find_element(By.ID, "evaluate").click()
    WebDriverWait(page, WAIT).until(lambda d: seq(d) > before)
    alert = page.find_element(By.CSS_SELECTOR, "#result [role=alert]")
    assert "HTTP 400" in alert.text and "Invalid ServiceRequest" in alert.text
    assert not page.find_elements(By.CLASS_NAME, "card")
    assert raw_json(page, "raw-response")["resourceType"] == "OperationOutcome"


def test_jwt_protected_service_explains_the_playground_needs_local_mode(
        driver: Any, service_factory: Any, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    issuers = tmp_path / "issuers.json"
    issuers.write_text(json.dumps({"issuers": [{"iss": "https://ehr.example.org", "jwks": {"keys": [jwk]}}]}))
    service = service_factory(TRUSTED_ISSUERS=str(issuers))
    driver.get(service.url("/playground"))
    WebDriverWait(driver, WAIT).until(
        lambda d: d.find_element(By.ID, "playground-form").get_attribute("data-ready") == "true")
    before = seq(driver)
    driver.find_element(By.ID, "evaluate").click()
    WebDriverWait(driver, WAIT).until(lambda d: seq(d) > before)
    alert = driver.find_element(By.CSS_SELECTOR, "#result [role=alert]")
    assert "401" in alert.text and "without trusted issuers" in alert.text


def test_a_stated_purpose_routes_and_order_select_is_answered(page: Any, knowledge: Any) -> None:
    purpose = next(iter(sorted(knowledge.purposes)))
    Select(page.find_element(By.ID, "purpose")).select_by_value(purpose)
    Select(page.find_element(By.ID, "hook")).select_by_value("order-select")
    choose(page, test="0530U", date="2025-03-03", plan="commercial")
    assert page.find_element(By.ID, "service-path").text.endswith("liquid-biopsy-order-select")
    submit(page)
    sent = raw_json(page, "raw-request")
    assert sent["hook"] == "order-select" and sent["context"]["selections"] == ["ServiceRequest/playground-order"]
    reasons = sent["context"]["draftOrders"]["entry"][0]["resource"]["reasonCode"]
    assert {"system": knowledge.purpose_system, "code": purpose} in [
        {k: c[k] for k in ("system", "code")} for r in reasons for c in r["coding"]]
    assert page.find_elements(By.CLASS_NAME, "card"), "the purpose-routed order got no card"
    assert page.find_element(By.ID, "raw-request-meta").text.startswith("POST /playground/evaluate/")


def test_the_playground_records_nothing(driver: Any, service_factory: Any) -> None:
    from cds_service.store import cards, coverage_assertions, hook_calls

    service = service_factory()
    driver.get(service.url("/"))
    WebDriverWait(driver, WAIT).until(
        lambda d: d.find_element(By.ID, "playground-form").get_attribute("data-ready") == "true")
    choose(driver, test="0530U", date="2025-03-03", plan="commercial")
    submit(driver)
    wait_for_card(driver, "warning", "0530U")
    store = service.pipeline.store
    assert (store.count(hook_calls), store.count(coverage_assertions), store.count(cards)) == (0, 0, 0)
