"""The package as users install it: the wheel and the sdist carry the policy artifacts, and the wheel,
installed into a fresh virtual environment outside the repository, serves (the development server and
gunicorn) and checks its own artifacts."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import SIGN, hook_request, service_request
from tests.processes import free_port, wait_until_answers

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "fhir_profiles"
ARTIFACTS = [*sorted(p.relative_to(PROFILES).as_posix() for p in PROFILES.rglob("*.json")),
             "knowledge-validated"]  # the digest of their validation (spares an installed service's first start)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that would let Python find the repository's sources."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "CDS_"))}
    return {**env, **extra}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(out), str(ROOT)],
                   check=True, capture_output=True, timeout=300, cwd=out)
    [built] = out.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh virtual environment, outside the repository, with the wheel and its pinned dependencies."""
    venv = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-c", str(ROOT / "constraints.txt"), str(wheel)],
                   check=True, capture_output=True, timeout=600, cwd=venv, env=clean_env())
    yield venv


def test_the_wheel_carries_every_artifact_and_the_server_files(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"cds_service/fhir_profiles/{a}" for a in ARTIFACTS} <= names
    assert {"cds_service/migrations/versions/0004_unread_indexes.py", "cds_service/gunicorn_conf.py",
            "cds_service/web/openapi-responses.json", "cds_service/web/static/playground.js",
            "cds_service/web/templates/records_feedback.html"} <= names


def test_the_sdist_carries_every_artifact(tmp_path: Path) -> None:
    build = f"from setuptools import build_meta; build_meta.build_sdist({str(tmp_path)!r})"
    subprocess.run([sys.executable, "-c", build], check=True, capture_output=True, timeout=300, cwd=ROOT)
    [sdist] = tmp_path.glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {f"fhir_profiles/{a}" for a in ARTIFACTS} <= names


def test_the_installed_wheel_serves_and_judges(installed: Path, tmp_path: Path) -> None:
    python = installed / "bin" / "python"
    where = subprocess.run([str(python), "-c", "import cds_service, cds_service.knowledge.loader as l; "
                            "print(cds_service.__file__); print(l.DEFAULT_DIR)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path, env=clean_env())
    module, artifacts = where.stdout.split()
    assert module.startswith(str(installed)) and artifacts.startswith(str(installed)), where.stdout
    check = subprocess.run([str(python), "-m", "cds_service", "artifacts", "check"], capture_output=True, text=True,
                           cwd=tmp_path, env=clean_env(), timeout=120)
    assert check.returncode == 0 and check.stdout.startswith("ok:"), check.stderr
    for command in (["-m", "cds_service", "serve", "--port", "{port}"],
                    ["-m", "gunicorn", "-c", "python:cds_service.gunicorn_conf", "cds_service.wsgi:app"]):
        port = free_port()
        env = clean_env(CDS_DATABASE_URL=f"sqlite:///{tmp_path / f'{port}.sqlite3'}", CDS_BIND=f"127.0.0.1:{port}",
                        CDS_WORKERS="1")
        proc = subprocess.Popen([str(python), *(c.format(port=port) for c in command)], cwd=tmp_path, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until_answers(f"http://127.0.0.1:{port}/readyz", proc, timeout=60)
            answer = requests.post(f"http://127.0.0.1:{port}/cds-services/{SIGN}", timeout=10,
                                   json=hook_request(service_request("0530U", "2025-03-03")))
            assert answer.status_code == 200 and answer.json()["cards"][0]["indicator"] == "warning"
            assert requests.get(f"http://127.0.0.1:{port}/records/feedback", timeout=10).status_code == 200
        finally:
            proc.terminate()
            proc.wait(15)


def test_constraints_pin_every_distribution_installed_here() -> None:
    """constraints.txt is the lock: every requirement of the project (service and tests) and of its
    dependencies is pinned with ==, and what this run installed is exactly that."""
    import tomllib
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep, f"not pinned with ==: {line}"
            pins[canonicalize_name(name)] = version.strip()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in (*project["dependencies"], *project["optional-dependencies"]["test"])]
    seen: set[str] = set()
    while wanted:
        req = wanted.pop()
        name = canonicalize_name(req.name)
        if name in seen or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        assert name in pins, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req} excludes the pin {pins[name]}"
        installed = metadata.version(req.name)
        assert installed == pins[name], f"{req.name} {installed} is installed, constraints.txt pins {pins[name]}"
        for dep in metadata.requires(req.name) or []:
            dep_req = Requirement(dep)
            if dep_req.marker is None or any(dep_req.marker.evaluate({"extra": e}) for e in ("", *req.extras)):
                wanted.append(dep_req)
