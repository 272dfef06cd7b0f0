"""Static checks of the container deployment files: Dockerfile, docker-compose.yml, .env.example, entrypoint.

No container engine runs where the tests run, so nothing is built or started here: the files are parsed
and linted, and ``docker-compose config -q`` validates the compose file (skipped without the binary,
except in CI, which installs it).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}; "$${...}" is an escaped literal for the container.
VAR_REF = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}")
ONLY_REFS = re.compile(r"^(?:\$\{[A-Za-z_][A-Za-z0-9_]*(?::?[-?][^}]*)?\})+$")
SECRET_KEY = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|PRIVATE_?KEY", re.IGNORECASE)
URL_PASSWORD = re.compile(r"://[^:/@\s]+:([^@\s]+)@")
PLACEHOLDER = re.compile(r"^(change[-_]?me|changeme|replace[-_]?me|example|placeholder|xxx+)?$", re.IGNORECASE)


# ---------------------------------------------------------------- helpers


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


def services() -> dict[str, Any]:
    svcs = compose().get("services")
    assert isinstance(svcs, dict), "docker-compose.yml has no services"
    return svcs


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping, whichever of the two compose syntaxes it uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def strings(node: Any) -> list[str]:
    """Every scalar of a YAML tree (keys and values), as text."""
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in (*strings(k), *strings(v))]
    if isinstance(node, list):
        return [s for item in node for s in strings(item)]
    return [] if node is None else [str(node)]


def compose_vars() -> dict[str, list[str]]:
    """Variable name -> the modifiers it is referenced with (":-default", ":?message", "" ...).

    Read from the parsed file: compose interpolates keys and values, never comments."""
    found: dict[str, list[str]] = {}
    for text in strings(compose()):
        for name, modifier in VAR_REF.findall(text):
            found.setdefault(name, []).append(modifier)
    return found


def url_passwords(text: str) -> list[str]:
    """Passwords written into URLs (scheme://user:password@host), with each ${...} reference as "${}"."""
    return URL_PASSWORD.findall(VAR_REF.sub("${}", text))


def env_example() -> list[tuple[int, str, str]]:
    """(line number, name, value) of every assignment in .env.example."""
    out = []
    for number, line in enumerate(ENV_EXAMPLE.read_text().splitlines(), 1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            assert "=" in stripped, f".env.example line {number} is not KEY=value: {line!r}"
            name, value = stripped.split("=", 1)
            out.append((number, name.strip(), value.strip()))
    return out


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; comments dropped and continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical = (pending + stripped).strip()
        pending = ""
        if logical:
            keyword, _, args = logical.partition(" ")
            instructions.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends with a continuation line"
    return instructions


def exec_form_or_shell(args: str) -> list[str]:
    """The argument words of a CMD/ENTRYPOINT/RUN, whether in JSON (exec) form or shell form."""
    if args.startswith("["):
        words = json.loads(args)
        assert isinstance(words, list)
        return [str(w) for w in words]
    return shlex.split(args)


def compose_v2() -> list[str] | None:
    """The Compose v2 command (docker compose), where a Docker CLI with the plugin is installed."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=60)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def interpolate(node: Any, env: dict[str, str]) -> Any:
    """What Compose does to every string of the file before it reads it: ${VAR}, ${VAR:-default},
    ${VAR-default}, ${VAR:?message} (an error when unset or empty), and $$ for a literal $."""
    if isinstance(node, dict):
        return {interpolate(k, env): interpolate(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(item, env) for item in node]
    if not isinstance(node, str):
        return node

    def one(match: re.Match[str]) -> str:
        name, modifier = match.group(1), match.group(2)
        value = env.get(name)
        if modifier.startswith(":-"):
            return value if value else modifier[2:]
        if modifier.startswith("-"):
            return value if value is not None else modifier[1:]
        if modifier.startswith(":?"):
            assert value, f"{name} must be set: {modifier[2:]}"
            return value
        assert not modifier, f"unsupported interpolation ${{{name}{modifier}}}"
        assert value is not None, f"{name} is not set and has no default"
        return value

    return VAR_REF.sub(one, node).replace("$$", "$")


def env_file_values() -> dict[str, str]:
    return {name: value for _, name, value in env_example()}


def compose_schema_errors(document: Any) -> list[str]:
    from jsonschema import Draft202012Validator

    schema = json.loads((ROOT / "tests" / "compose" / "compose-spec.json").read_text())
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in Draft202012Validator(schema).iter_errors(document)]


# ---------------------------------------------------------------- 1. the compose file, as Compose v2 reads it


@pytest.mark.parametrize("env_file", [None, ".env.example"], ids=["fresh-clone-without-env", "env-example"])
def test_compose_file_is_valid_compose_v2(env_file: str | None) -> None:
    assert "version" not in compose(), "Compose v2 ignores 'version' (obsolete): leave it out"
    assert compose_schema_errors(compose()) == []
    values = env_file_values() if env_file else {}
    assert compose_schema_errors(interpolate(compose(), values)) == []


def test_docker_compose_config_where_compose_v2_is_installed(tmp_path: Path) -> None:
    command = compose_v2()
    if command is None:
        pytest.skip("Docker Compose v2 is not installed here: the file is checked against its schema instead")
    env = {k: v for k, v in os.environ.items() if k not in compose_vars() and not k.startswith("COMPOSE_")}
    result = subprocess.run([*command, "--env-file", str(ENV_EXAMPLE), "config", "-q"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"docker compose config -q failed:\n{result.stdout}\n{result.stderr}"


def header_commands() -> list[str]:
    """The commands the compose file's header tells a new user to run, in order."""
    header = COMPOSE.read_text().split("\nservices:", 1)[0]
    return [line.lstrip("# ").split("  #", 1)[0].strip() for line in header.splitlines()
            if re.match(r"#\s{3}\S", line)]


def test_the_compose_header_steps_start_a_service_that_serves() -> None:
    """Run the header's steps as far as this machine can: copy .env.example to .env, interpolate the
    compose file with it, and put the service's environment through the service's own start-up checks
    (the settings, the bind rule gunicorn applies on 0.0.0.0, the trusted-issuers file)."""
    from cds_service.config import load_settings
    from cds_service.security import unauthenticated_bind_problem

    assert header_commands() == ["cp .env.example .env", "docker compose up -d --build"], header_commands()
    document = interpolate(compose(), env_file_values())
    cds = document["services"]["cds"]
    env = environment(cds)
    settings = load_settings(environ={k: v for k, v in env.items() if k.startswith("CDS_")})
    bind = dict(a.split("=", 1) for i, a in dockerfile_instructions() if i == "ENV" for a in shlex.split(a)
                if "=" in a).get("CDS_BIND", "")
    assert bind == "0.0.0.0:8080"
    problem = unauthenticated_bind_problem([bind], settings)
    assert problem is None, f"the service would refuse to start (and restart forever): {problem}"
    if settings["TRUSTED_ISSUERS"]:
        mounted = next(v for v in cds.get("volumes", []) if str(v).split(":")[1] == "/etc/cds")
        local = ROOT / str(mounted).split(":")[0] / Path(settings["TRUSTED_ISSUERS"]).relative_to("/etc/cds")
        assert local.is_file(), f"{settings['TRUSTED_ISSUERS']} is not in the mounted folder"
    # The published port is the proxy's, on this machine only.
    ports = [str(p) for p in document["services"]["proxy"]["ports"]]
    assert all(p.startswith("127.0.0.1:") for p in ports), ports


def test_without_env_the_defaults_refuse_to_serve_unauthenticated() -> None:
    from cds_service.config import load_settings
    from cds_service.security import unauthenticated_bind_problem

    env = environment(interpolate(compose(), {})["services"]["cds"])
    settings = load_settings(environ={k: v for k, v in env.items() if k.startswith("CDS_")})
    assert unauthenticated_bind_problem(["0.0.0.0:8080"], settings) is not None


def test_every_compose_variable_has_a_default_or_a_message() -> None:
    missing = sorted(name for name, modifiers in compose_vars().items()
                     if any(not re.match(r":?[-?]", m) for m in modifiers))
    assert not missing, f"give these a ${{VAR:-default}} so a clone without .env works: {missing}"


# ---------------------------------------------------------------- 2. docker-compose.yml structure


def test_compose_has_the_service_its_proxy_the_database_and_hapi() -> None:
    assert {"cds", "proxy", "db", "hapi"} <= set(services())


def test_service_waits_for_a_healthy_database() -> None:
    depends = services()["cds"].get("depends_on")
    assert isinstance(depends, dict), "cds.depends_on must be the long form, with conditions"
    assert (depends.get("db") or {}).get("condition") == "service_healthy"


def test_service_is_built_here_and_reached_only_through_the_proxy() -> None:
    cds = services()["cds"]
    build = cds.get("build")
    context = build if isinstance(build, str) else (build or {}).get("context")
    assert context in (".", "./"), "cds must be built from this repository's Dockerfile"
    assert not cds.get("ports"), "cds must not publish a port: slow clients would reach gunicorn directly"
    assert "8080" in [str(p) for p in cds.get("expose", [])], cds.get("expose")


def test_proxy_publishes_the_service_port_and_forwards_to_the_service() -> None:
    proxy = services()["proxy"]
    assert "nginx" in str(proxy.get("image", "")), proxy.get("image")
    ports = [str(p) for p in proxy.get("ports", [])]
    assert any(p.endswith(":8080") and "CDS_HOST_PORT" in p for p in ports), ports
    env = environment(proxy)
    assert env.get("CDS_UPSTREAM") == "cds:8080", env
    assert ((proxy.get("depends_on") or {}).get("cds") or {}).get("condition") == "service_healthy"
    mounts = [str(v).split(":") for v in proxy.get("volumes", [])]
    templates = [m for m in mounts if len(m) >= 2 and m[1].startswith("/etc/nginx/templates/")]
    assert templates, "the proxy mounts no configuration template"
    template = (ROOT / templates[0][0]).resolve()
    assert template.is_file(), template
    # The nginx image substitutes only variables set in its environment; any other ${...} would stay
    # literal and break the configuration.
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)\}", template.read_text()))
    assert used <= set(env), f"template variables without a value: {sorted(used - set(env))}"


def test_service_has_a_healthcheck_or_the_image_has_one() -> None:
    healthcheck = services()["cds"].get("healthcheck")
    if healthcheck:
        assert not healthcheck.get("disable"), "the service's healthcheck is disabled"
        assert healthcheck.get("test"), "the service's healthcheck has no test"
    else:
        assert any(k == "HEALTHCHECK" for k, _ in dockerfile_instructions()), "no healthcheck in compose or image"


def test_service_database_url_points_at_the_db_service() -> None:
    url = environment(services()["cds"]).get("CDS_DATABASE_URL", "")
    assert url.startswith("postgresql+psycopg://"), url
    assert "@db:5432/" in url, url


def test_database_is_postgres_with_a_healthcheck_and_a_named_volume() -> None:
    data = compose()
    db = data["services"]["db"]
    assert str(db.get("image", "")).startswith("postgres:"), db.get("image")
    test = (db.get("healthcheck") or {}).get("test")
    assert test and "pg_isready" in " ".join(test if isinstance(test, list) else [test])
    named = [str(v).split(":", 1)[0] for v in db.get("volumes", []) if isinstance(v, str)]
    named += [v.get("source", "") for v in db.get("volumes", []) if isinstance(v, dict) and v.get("type") == "volume"]
    named = [n for n in named if n and not n.startswith((".", "/", "~", "$"))]
    assert named, "db keeps its data in no named volume"
    declared = data.get("volumes") or {}
    assert all(n in declared for n in named), f"volumes {named} are not declared at the top level"


def test_hapi_is_an_r4_server_on_host_port_8081() -> None:
    hapi = services()["hapi"]
    image = str(hapi.get("image", ""))
    assert "hapiproject/hapi" in image, image
    assert environment(hapi).get("hapi.fhir.fhir_version") == "R4"
    ports = [str(p) for p in hapi.get("ports", [])]
    assert any(p.endswith(":8080") and "8081" in p for p in ports), ports


def test_compose_holds_no_literal_secrets() -> None:
    for name, svc in services().items():
        for key, value in environment(svc).items():
            if SECRET_KEY.search(key) and value:
                assert ONLY_REFS.match(value), f"{name}.{key} must be a ${{...}} reference, not a literal"
    for text in strings(compose()):
        for password in url_passwords(text):
            assert password == "${}", f"password written into a URL: {text}"


def test_compose_defaults_of_secrets_are_placeholders() -> None:
    for name, modifiers in compose_vars().items():
        if SECRET_KEY.search(name):
            for modifier in modifiers:
                default = modifier.lstrip(":").lstrip("-")
                if modifier.lstrip(":").startswith("-"):
                    assert PLACEHOLDER.match(default), f"default of {name} looks like a real secret: {default!r}"


def test_service_does_not_allow_unauthenticated_access_by_default() -> None:
    value = environment(services()["cds"]).get("CDS_ALLOW_UNAUTHENTICATED", "")
    assert value in ("", "false", "${CDS_ALLOW_UNAUTHENTICATED:-false}", "${CDS_ALLOW_UNAUTHENTICATED-false}"), value


# ---------------------------------------------------------------- 3. Dockerfile


def test_dockerfile_base_is_a_slim_python_image() -> None:
    froms = [args.split()[0] for keyword, args in dockerfile_instructions() if keyword == "FROM"]
    assert froms, "no FROM"
    assert re.fullmatch(r"python:[^\s:@]*-slim(@sha256:[0-9a-f]+)?", froms[-1]), froms[-1]


def test_dockerfile_runs_as_a_non_root_user() -> None:
    instructions = dockerfile_instructions()
    users = [i for i, (keyword, _) in enumerate(instructions) if keyword == "USER"]
    starts = [i for i, (keyword, _) in enumerate(instructions) if keyword in ("CMD", "ENTRYPOINT")]
    assert users, "no USER instruction"
    assert starts, "no CMD or ENTRYPOINT"
    user = instructions[users[-1]][1].split(":", 1)[0]
    assert user not in ("root", "0"), "the final USER is root"
    assert users[-1] < starts[-1], "USER must come before the final CMD/ENTRYPOINT"


def test_dockerfile_has_a_healthcheck_without_curl() -> None:
    checks = [args for keyword, args in dockerfile_instructions() if keyword == "HEALTHCHECK"]
    assert checks, "no HEALTHCHECK"
    assert not checks[-1].upper().startswith("NONE"), "HEALTHCHECK NONE"
    assert "CMD" in checks[-1]
    assert "curl" not in checks[-1] and "wget" not in checks[-1], "slim images have neither curl nor wget"
    assert "8080" in checks[-1]


def test_dockerfile_exposes_8080() -> None:
    exposed = [p.split("/")[0] for keyword, args in dockerfile_instructions() if keyword == "EXPOSE"
               for p in args.split()]
    assert "8080" in exposed


def test_dockerfile_serves_with_gunicorn() -> None:
    instructions = dockerfile_instructions()
    start = " ".join(" ".join(exec_form_or_shell(args)) for keyword, args in instructions
                     if keyword in ("CMD", "ENTRYPOINT"))
    assert "gunicorn" in start or "gunicorn" in ENTRYPOINT.read_text(), "gunicorn is started nowhere"
    installs = " ".join(args for keyword, args in instructions if keyword == "RUN" and "pip install" in args)
    assert re.search(r"gunicorn[<>=]", installs), "the image must install a pinned gunicorn"


def test_dockerfile_entrypoint_is_the_script() -> None:
    instructions = dockerfile_instructions()
    entrypoints = [exec_form_or_shell(args) for keyword, args in instructions if keyword == "ENTRYPOINT"]
    assert entrypoints, "no ENTRYPOINT"
    copied = [exec_form_or_shell(args) for keyword, args in instructions if keyword == "COPY"]
    assert ["docker/entrypoint.sh", entrypoints[-1][0]] in copied, (entrypoints, copied)


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def test_the_image_installs_the_built_wheel_not_the_source_tree() -> None:
    instructions = dockerfile_instructions()
    runs = [args for keyword, args in instructions if keyword == "RUN"]
    assert any("pip wheel" in r for r in runs), "no stage builds the wheel"
    final = final_stage()
    copies = [args for keyword, args in final if keyword == "COPY"]
    assert not any("cds_service" in c or "fhir_profiles" in c for c in copies), copies  # only the wheel carries them
    assert any("--from=" in c and "wheels" in c for c in copies), copies
    installs = [args for keyword, args in final if keyword == "RUN" and "pip install" in args]
    assert any(".whl" in i and "-c " in i and "constraints.txt" in i for i in installs), installs
    env = " ".join(args for keyword, args in final if keyword == "ENV")
    assert "PYTHONPATH" not in env and "CDS_KNOWLEDGE_DIR" not in env, env  # nothing points at a source tree


def test_dockerfile_sets_the_runtime_environment() -> None:
    env = " ".join(args for keyword, args in dockerfile_instructions() if keyword == "ENV")
    for setting in ("PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1",
                    "PROMETHEUS_MULTIPROC_DIR=", "CDS_BIND=0.0.0.0:8080"):
        assert setting in env, f"ENV {setting} missing"
    match = re.search(r"PROMETHEUS_MULTIPROC_DIR=(\S+)", env)
    assert match
    runs = " ".join(args for keyword, args in dockerfile_instructions() if keyword == "RUN")
    assert match.group(1) in runs, "the Prometheus folder must be created (and given to the app user)"


def test_dockerfile_copies_only_what_exists_and_is_not_ignored() -> None:
    ignored = [p.strip().rstrip("/") for p in DOCKERIGNORE.read_text().splitlines()
               if p.strip() and not p.startswith("#") and not p.startswith("!")]
    for keyword, args in dockerfile_instructions():
        if keyword != "COPY" or "--from" in args:
            continue
        words = [w for w in (exec_form_or_shell(args)) if not w.startswith("--")]
        for source in words[:-1]:
            path = source.rstrip("/")
            assert (ROOT / path).exists(), f"COPY {source}: not in the repository"
            hits = [p for p in ignored if fnmatch(path, p) or path.startswith(p + "/")]
            assert not hits, f"COPY {source} is excluded by .dockerignore ({hits})"


def test_dockerignore_keeps_local_state_and_tests_out() -> None:
    patterns = {p.strip().rstrip("/") for p in DOCKERIGNORE.read_text().splitlines()}
    for needed in (".venv", ".git", "instance", "tests", ".env"):
        assert needed in patterns, f".dockerignore must list {needed}"


def test_dockerfile_adds_no_remote_urls_and_holds_no_secrets() -> None:
    for keyword, args in dockerfile_instructions():
        if keyword == "ADD":
            assert not re.search(r"\b(https?|git)://|git@", args), f"ADD of a remote URL: {args}"
        if keyword in ("ENV", "ARG", "RUN", "LABEL"):
            for key, value in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S*)", args):
                if SECRET_KEY.search(key):
                    assert not value or value.startswith("$"), f"secret in the Dockerfile: {key}={value}"


# ---------------------------------------------------------------- 4. .env.example


def test_env_example_lists_every_compose_variable() -> None:
    documented = {name for _, name, _ in env_example()}
    missing = sorted(set(compose_vars()) - documented)
    assert not missing, f".env.example lacks {missing}"


def test_env_example_lists_only_compose_variables() -> None:
    stale = sorted({name for _, name, _ in env_example()} - set(compose_vars()))
    assert not stale, f".env.example sets variables docker-compose.yml never uses: {stale}"


def test_env_example_documents_every_variable() -> None:
    lines = ENV_EXAMPLE.read_text().splitlines()
    for number, name, _ in env_example():
        assert number >= 2 and lines[number - 2].lstrip().startswith("#"), f"{name} needs a comment above it"


def test_env_example_has_placeholders_only() -> None:
    for _, name, value in env_example():
        assert not value.startswith(("'", '"')), f"{name}: keep values unquoted (one meaning for every reader)"
        if SECRET_KEY.search(name):
            assert PLACEHOLDER.match(value), f"{name} in .env.example must be a placeholder, not {value!r}"
        for password in url_passwords(value):
            assert password == "${}" or PLACEHOLDER.match(password), f"{name} holds a password in a URL"


def test_env_example_explains_unauthenticated_first_try() -> None:
    text = ENV_EXAMPLE.read_text()
    assert "CDS_ALLOW_UNAUTHENTICATED=true" in text
    comment = text.split("CDS_ALLOW_UNAUTHENTICATED=true")[0].rsplit("\n\n", 1)[-1]
    assert "127.0.0.1" in comment and "false" in comment and "CDS_TRUSTED_ISSUERS" in comment, \
        "the comment above CDS_ALLOW_UNAUTHENTICATED must say who can call, and when to turn it off"
    assert env_file_values()["HOST_BIND_ADDRESS"] == "127.0.0.1"


# ---------------------------------------------------------------- 5. entrypoint script


def test_entrypoint_script_is_executable_and_strict() -> None:
    text = ENTRYPOINT.read_text()
    assert text.startswith("#!/bin/sh\n") or text.startswith("#!/usr/bin/env "), "missing shebang"
    assert re.search(r"^set -e", text, re.MULTILINE), "the script must stop on errors (set -e / set -eu)"
    assert ENTRYPOINT.stat().st_mode & stat.S_IXUSR, "chmod +x docker/entrypoint.sh"


def test_entrypoint_migrates_before_it_execs_gunicorn() -> None:
    lines = [line.strip() for line in ENTRYPOINT.read_text().splitlines() if not line.strip().startswith("#")]
    upgrade = next((i for i, line in enumerate(lines) if "python -m cds_service db upgrade" in line), None)
    start = next((i for i, line in enumerate(lines) if line.startswith("exec gunicorn")), None)
    assert upgrade is not None, "the script never runs `python -m cds_service db upgrade`"
    assert start is not None, "the script never runs `exec gunicorn`"
    assert upgrade < start
    assert "-c python:cds_service.gunicorn_conf" in lines[start], lines[start]
    assert "cds_service.wsgi:app" in lines[start], lines[start]


def test_entrypoint_is_valid_shell() -> None:
    shell = shutil.which("sh")
    if shell is None:
        pytest.skip("no sh")
    result = subprocess.run([shell, "-n", str(ENTRYPOINT)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
