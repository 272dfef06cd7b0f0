"""The decision-record pages in a real headless Chromium, against the real service over HTTP: a PA
reviewer opens one assertion and sees the call, the cards and the verdict as sent; a CDS committee
filters the history and sees override rates by reason as a chart. (Skips without a browser, except
under CI; see test_playground_browser.)"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import SIGN, LiveService, hook_request, service_request
from tests.report import SCREENSHOTS
from tests.test_playground_browser import WAIT, driver  # noqa: F401 (the browser fixture)
from tests.test_records import give_feedback

try:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:  # pragma: no cover - the driver fixture skips or fails first
    pass


@pytest.fixture
def records(service_factory: Any) -> LiveService:
    """A service that answered a few orders and got feedback on its cards."""
    cds: LiveService = service_factory()
    bodies = [cds.call(hook_request(service_request(code, "2025-03-03", rid=f"sr-{i}")))
              for i, code in enumerate(("0530U", "0091U", "0530U", "0530U"))]
    give_feedback(cds, bodies[0]["cards"][0], reason=0)
    give_feedback(cds, bodies[1]["cards"][0], reason=1)
    give_feedback(cds, bodies[2]["cards"][0], reason=0)
    give_feedback(cds, next(c for c in bodies[3]["cards"] if c.get("suggestions")), "accepted")
    cds.bodies = bodies  # type: ignore[attr-defined]
    return cds


def shot(browser: Any, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    browser.save_screenshot(str(path))
    SCREENSHOTS.append(path)


def test_a_reviewer_opens_one_assertion_from_the_filtered_history(driver: Any, records: LiveService,  # noqa: F811
                                                                   tmp_path: Path) -> None:
    driver.get(records.url("/records/"))
    rows = driver.find_elements(By.CSS_SELECTOR, "#calls td.code")
    assert sorted(r.text for r in rows) == ["0091U", "0530U", "0530U", "0530U"]
    code = driver.find_element(By.NAME, "code")
    code.send_keys("0091U")
    Select(driver.find_element(By.NAME, "outcome")).select_by_value("not-covered")
    driver.find_element(By.CSS_SELECTOR, "#filters button").click()
    WebDriverWait(driver, WAIT).until(lambda d: "code=0091U" in d.current_url)
    assert [r.text for r in driver.find_elements(By.CSS_SELECTOR, "#calls td.code")] == ["0091U"]
    csv_link = driver.find_element(By.ID, "csv").get_attribute("href")
    exported = list(csv.DictReader(io.StringIO(requests.get(csv_link, timeout=10).text)))
    assert [r["code"] for r in exported] == ["0091U"]
    shot(driver, tmp_path, "records-history")

    driver.find_element(By.CSS_SELECTOR, "a.assertion").click()
    WebDriverWait(driver, WAIT).until(lambda d: "/records/assertions/" in d.current_url)
    sent = records.bodies[1]  # type: ignore[attr-defined]
    page = driver.find_element(By.TAG_NAME, "main").text
    assert "not-covered" in driver.find_element(By.CSS_SELECTOR, "td.outcome").text
    assert sent["cards"][0]["summary"] in page  # the card exactly as the clinician saw it
    assert "overridden" in driver.find_element(By.CSS_SELECTOR, "ul.feedback").text
    info = sent["systemActions"][0]["resource"]["extension"][0]
    assert info["extension"][0]["url"] in driver.find_element(By.CSS_SELECTOR, "pre.information").text
    shot(driver, tmp_path, "records-assertion")


def test_a_committee_sees_override_rates_by_reason_as_a_chart(driver: Any, records: LiveService,  # noqa: F811
                                                              tmp_path: Path) -> None:
    driver.get(records.url("/records/feedback?group=template&bucket=month"))
    reasons = records.pipeline.knowledge.override_reasons
    chart = driver.find_element(By.CSS_SELECTOR, "#reason-chart svg")
    legend = chart.text
    assert reasons[0].display in legend and reasons[1].display in legend
    assert chart.size["width"] > 300 and chart.size["height"] > 150  # drawn, not an empty box
    bars = chart.find_elements(By.CSS_SELECTOR, "g.series rect")
    assert len(bars) >= 2
    assert driver.find_element(By.CSS_SELECTOR, "#rate-chart svg").size["height"] > 150
    rates = {r.find_elements(By.TAG_NAME, "td")[1].text: r.find_element(By.CSS_SELECTOR, "td.rate").text
             for r in driver.find_elements(By.CSS_SELECTOR, "#feedback tbody tr")}
    assert rates["investigational-code-list"] == "100%" and rates["remove-order"] == "0%"
    shot(driver, tmp_path, "records-feedback")
    services = [o.get_attribute("value") for o in driver.find_elements(By.CSS_SELECTOR, "select[name=service] option")]
    assert SIGN in services
