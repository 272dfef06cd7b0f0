"""Card and assertion ids: RFC 9562 version-7 UUIDs, unique, in the order they were issued."""

from __future__ import annotations

import time
import uuid

from cds_service.ids import new_id
from tests.conftest import LiveService, assertion_ids, hook_request, service_request


def test_ids_are_version_7_uuids_unique_and_random() -> None:
    ids = [new_id() for _ in range(20_000)]
    parsed = [uuid.UUID(i) for i in ids]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 and str(u) == i for u, i in zip(parsed, ids, strict=True))
    assert len(set(ids)) == len(ids)
    assert len({i[-12:] for i in ids}) == len(ids)  # the tail is random, not a counter


def test_ids_issued_later_sort_later() -> None:
    """So the store's indexes on them take each new one at their end (random version-4 ids land anywhere)."""
    issued = []
    for _ in range(50):
        issued.append(new_id())
        time.sleep(0.002)
    assert issued == sorted(issued)
    millis = int(uuid.UUID(issued[-1]).hex[:12], 16)
    assert abs(millis - time.time() * 1000) < 5000


def test_cards_and_assertions_carry_them(cds: LiveService) -> None:
    body = cds.call(hook_request(service_request("0530U")))
    ids = [card["uuid"] for card in body["cards"]] + assertion_ids(body)
    assert body["cards"] and assertion_ids(body)
    assert all(uuid.UUID(i).version == 7 for i in ids)
