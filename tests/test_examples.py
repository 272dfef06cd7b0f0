"""The example requests in examples/ produce the situation their names promise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SELECT, SIGN, LiveService

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXPECTED = {  # file -> (indicators of the cards in order, whether coverage-information is sent)
    "01-investigational-listed-code": (["warning"], True),
    "02-retired-policy": (["info"], True),
    "03-fep-member": (["info"], False),
    "04-other-policy-nsclc": (["info"], False),
    "05-listed-code-routed-use": (["warning"], True),
    "06-no-active-coverage": (["warning", "info"], False),
    "07-coverage-unavailable": (["warning"], False),
    "08-unrelated-order": ([], False),
    "09-order-select": (["warning"], True),
    "10-code-before-it-joined": ([], False),
}


def test_every_example_is_listed() -> None:
    assert {p.stem for p in EXAMPLES.glob("*.json")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example(cds: LiveService, name: str) -> None:
    body = json.loads((EXAMPLES / f"{name}.json").read_text())
    response = cds.call(body, service=SELECT if body["hook"] == "order-select" else SIGN)
    indicators, coverage_info = EXPECTED[name]
    assert [c["indicator"] for c in response["cards"]] == indicators
    assert ("systemActions" in response) is coverage_info
