"""The benchmark harness still runs and measures what it says (figures are not asserted: the machine is
shared; bench/run.py reports ratios from one run). Every side answers every request with a 2xx: each
request its own hookInstance and, on the authenticated side, its own single-use token."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (scripts/test.sh installs it)")
def test_bench_runs_every_side_without_errors(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "bench/run.py", "--cases", "sign-1-listed", "sign-1-listed-jwt",
                          "sign-1-listed-jwt-rs384",
                          "--warmup", "0", "--duration", "1", "--rounds", "1", "--out", str(tmp_path),
                          "--compare", str(ROOT),  # this checkout against itself: the side runs and answers
                          "--grow", "20"],  # both sides on a store grown first
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    [figures] = [json.loads(p.read_text()) for p in tmp_path.glob("bench-*.json")]
    assert "store grown by 20 calls" in out.stderr and figures["settings"]["grow"] == "20"
    sides = {row["case"]: row["sides"] for row in figures["results"]}
    ceilings = {"ceiling", "ceiling-sync", "ceiling-keepalive", "ceiling-same-config"}
    [compared] = [side for side in sides["sign-1-listed"] if side.startswith("service-at-")]
    assert set(sides["sign-1-listed"]) == {"service", compared, *ceilings}
    for signed in ("sign-1-listed-jwt", "sign-1-listed-jwt-rs384"):  # ES384 and RS384 client tokens
        assert set(sides[signed]) == {"service-jwt", "service", *ceilings}
    for case, measured in sides.items():
        for side, figures_of_side in measured.items():
            assert figures_of_side["rps"] > 0, (case, side)
            assert 0 < figures_of_side["cpu_ms_per_request"] < 1000, (case, side)  # the server's own, measured
            assert figures_of_side["non_2xx"] == 0 and figures_of_side["socket_errors"] == 0, (case, side)
    listed = figures["results"][0]
    assert listed["sides"]["ceiling"]["share_of_ceiling"] == 1.0
    # the ceiling of the round is the fastest of its candidates
    assert listed["sides"]["ceiling"]["rps"] == max(listed["sides"][c]["rps"] for c in ceilings - {"ceiling"})
    assert 0 < figures["cold_start_s"]["service"] < 60


def test_a_compared_checkout_runs_its_own_code(tmp_path: Path) -> None:
    """The compared side is started in its own checkout: started from this one, `python -m gunicorn`
    imported this checkout's package whatever PYTHONPATH said, and both sides ran the same code."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from run import package_location
    finally:
        sys.path.remove(str(ROOT / "bench"))
    other = tmp_path / "other"
    (other / "cds_service").mkdir(parents=True)
    (other / "cds_service" / "__init__.py").write_text("")
    env = {**os.environ, "PYTHONPATH": str(other)}
    assert package_location(other, env).is_relative_to(other)
    assert not package_location(ROOT, env).is_relative_to(other)  # the trap the bench fell into
