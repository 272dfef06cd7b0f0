"""The command line, run as a user runs it (subprocesses), plus the project's static checks."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import hook_request, service_request
from tests.crd_conformance import assert_valid_response
from tests.fhir_test_server import FhirTestServer

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, stdin: str | None = None, tmp: Path | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CDS_TODAY": "2026-11-25", **(env or {})}
    if tmp is not None:
        env["CDS_DATABASE_URL"] = f"sqlite:///{tmp / 'cli.sqlite3'}"
    return subprocess.run([sys.executable, "-m", "cds_service", *args], input=stdin, capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=60)


def test_evaluate_prints_the_http_response(tmp_path: Path) -> None:
    request = tmp_path / "req.json"
    request.write_text(json.dumps(hook_request(service_request("0530U", "2025-03-03"))))
    out = run("evaluate", str(request), tmp=tmp_path)
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert_valid_response(body)
    assert body["cards"][0]["indicator"] == "warning"


def test_evaluate_works_when_the_service_requires_client_tokens(tmp_path: Path) -> None:
    issuers = tmp_path / "issuers.yaml"
    issuers.write_text("issuers:\n  - iss: https://ehr.example\n    jwks_url: https://ehr.example/jwks.json\n")
    request = json.dumps(hook_request(service_request("0530U", "2025-03-03")))
    env_run = subprocess.run([sys.executable, "-m", "cds_service", "evaluate", "-"], input=request, text=True,
                             capture_output=True, cwd=ROOT, timeout=60,
                             env={**os.environ, "CDS_TODAY": "2026-11-25", "CDS_TRUSTED_ISSUERS": str(issuers),
                                  "CDS_DATABASE_URL": f"sqlite:///{tmp_path / 'e.sqlite3'}"})
    assert env_run.returncode == 0, env_run.stderr
    assert json.loads(env_run.stdout)["cards"][0]["indicator"] == "warning"


def test_evaluate_reads_stdin(tmp_path: Path) -> None:
    out = run("evaluate", "-", stdin=json.dumps(hook_request(service_request("0530U", "2026-08-01"))), tmp=tmp_path)
    assert out.returncode == 0 and "retired" in json.loads(out.stdout)["cards"][0]["summary"]


@pytest.mark.parametrize(("stdin", "message"), [
    ("{broken", "not valid JSON"),
    (json.dumps({"hook": "order-sign", "context": {}}), "hookInstance"),
    (json.dumps({"hook": "patient-view", "hookInstance": "x", "context": {}}), "no service answers"),
])
def test_evaluate_bad_input_fails_with_clear_message(tmp_path: Path, stdin: str, message: str) -> None:
    out = run("evaluate", "-", stdin=stdin, tmp=tmp_path)
    assert out.returncode != 0 and out.stdout == ""
    assert message in out.stderr and "Traceback" not in out.stderr


def test_evaluate_missing_file(tmp_path: Path) -> None:
    out = run("evaluate", str(tmp_path / "nope.json"), tmp=tmp_path)
    assert out.returncode == 2 and "cannot read" in out.stderr


def test_serve_refuses_non_loopback_without_opt_in() -> None:
    out = run("serve", "--host", "0.0.0.0", "--port", "1")
    assert out.returncode == 2 and "--allow-unauthenticated" in out.stderr


def test_artifacts_check_command() -> None:
    out = run("artifacts", "check")
    assert out.returncode == 0 and out.stdout.startswith("ok:")


def test_artifacts_check_fails_on_broken_copy(tmp_path: Path) -> None:
    copy = tmp_path / "fp"
    shutil.copytree(ROOT / "fhir_profiles", copy)
    (copy / "ValueSet-liquid-biopsy-tests.json").write_text("[]")
    out = run("artifacts", "check", "--dir", str(copy))
    assert out.returncode == 1 and "ValueSet-liquid-biopsy-tests.json" in out.stderr


def test_artifacts_bundle_is_a_transaction_of_every_artifact(tmp_path: Path) -> None:
    out = run("artifacts", "bundle", "--out", str(tmp_path / "b.json"))
    assert out.returncode == 0, out.stderr
    bundle = json.loads((tmp_path / "b.json").read_text())
    files = list((ROOT / "fhir_profiles").glob("*.json"))
    assert bundle["type"] == "transaction" and len(bundle["entry"]) == len(files)
    assert all(e["request"]["method"] == "PUT" for e in bundle["entry"])


def test_artifacts_publish_puts_each_artifact_then_updates() -> None:
    server = FhirTestServer()
    try:
        first = run("artifacts", "publish", "--fhir-server", server.base)
        assert first.returncode == 0, first.stderr
        assert "PlanDefinition/mp-2-267" in server.resources
        assert first.stdout.count("created") == len(list((ROOT / "fhir_profiles").glob("*.json")))
        second = run("artifacts", "publish", "--fhir-server", server.base)
        assert second.returncode == 0 and "created" not in second.stdout and "updated" in second.stdout
    finally:
        server.close()


def test_artifacts_publish_is_all_or_nothing_and_fails_clearly() -> None:
    server = FhirTestServer(reject_put="ConceptMap")
    try:
        out = run("artifacts", "publish", "--fhir-server", server.base)
        assert out.returncode == 1 and "ConceptMap/" in out.stderr and "rejected by test" in out.stderr
        assert "nothing was published" in out.stderr and server.resources == {}  # not half a policy
        assert [path for path, _ in server.requests] == ["/fhir"]  # one transaction, not a PUT per artifact
    finally:
        server.close()
    down = run("artifacts", "publish", "--fhir-server", "http://127.0.0.1:9/fhir")
    assert down.returncode == 1 and "could not reach" in down.stderr


def test_artifacts_commands_read_the_knowledge_dir_setting(tmp_path: Path) -> None:
    copy = tmp_path / "artifacts"
    shutil.copytree(ROOT / "fhir_profiles", copy)
    (copy / "ValueSet-liquid-biopsy-tests.json").write_text("[]")
    env = {"CDS_KNOWLEDGE_DIR": str(copy)}
    assert run("artifacts", "check", env=env).returncode == 1  # the broken copy, not the repository's files
    bundled = run("artifacts", "bundle", env=env)
    assert bundled.returncode == 1 and "ValueSet-liquid-biopsy-tests.json" in bundled.stderr
    assert run("artifacts", "check", "--dir", str(ROOT / "fhir_profiles"), env=env).returncode == 0  # --dir wins


# ---------------------------------------------------------------- static checks


@pytest.mark.parametrize("tool", [["ruff", "check", "cds_service", "tests", "bench"], ["mypy"]],
                         ids=["ruff", "mypy"])
def test_static_checks(tool: list[str]) -> None:
    out = subprocess.run([sys.executable, "-m", *tool], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def test_no_policy_facts_in_python_code() -> None:
    """Codes, dates, policy numbers and policy URLs live in fhir_profiles/, never in the package."""
    facts = ["2.267", "0530U", "0091U", "81277", "86152", "2026-07-01", "2025-08-05", "2.241", "evicore",
             "fepblue", "capbluecross"]
    for path in (ROOT / "cds_service").rglob("*.py"):
        text = path.read_text().lower()
        found = [f for f in facts if f.lower() in text]
        assert not found, f"{path.relative_to(ROOT)} contains policy facts {found}"


def test_readme_documents_every_setting_and_only_settings() -> None:
    from cds_service.config import SETTINGS

    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Configuration"):readme.index("## Security")]
    documented = set(re.findall(r"^\| `CDS_([A-Z_]+)`", table, re.MULTILINE))
    assert documented == {s.name for s in SETTINGS}
    # The README's defaults are the code's.
    for setting in SETTINGS:
        row = re.search(rf"^\| `CDS_{setting.name}` \| ([^|]+) \|", table, re.MULTILINE)
        assert row, setting.name
        if setting.kind in (int, float) and not isinstance(setting.default, bool):
            assert float(row.group(1).strip()) == float(setting.default), (setting.name, row.group(1))
