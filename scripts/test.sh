#!/usr/bin/env bash
# Install everything the tests need and run them all: the README's test command, and what .ci/run runs.
set -uo pipefail
cd "$(dirname "$0")/.."

# System packages for the browser tests (Chromium + ChromeDriver), the reverse-proxy test (nginx, run
# as the proxy in front of the real server) and the benchmark's smoke test (wrk). The compose file is checked against the Compose v2 schema,
# which needs no binary.
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v nginx >/dev/null 2>&1 || need+=(nginx)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" \
      || { echo "could not install ${need[*]}" >&2; exit 1; }
  else
    echo "missing ${need[*]}: install them (sudo apt-get install ${need[*]}) or their tests will skip" >&2
  fi
fi

python3 -m venv .venv && .venv/bin/pip install -q -c constraints.txt -e '.[test]' || { echo "pip install failed" >&2; exit 1; }
.venv/bin/python -m cds_service artifacts check || exit 1

.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating as a failure" >&2
  exit 1
fi
exit "$rc"
