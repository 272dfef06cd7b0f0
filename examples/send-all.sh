#!/usr/bin/env bash
# Send every example request to a running service and print each response.
# Usage: examples/send-all.sh [BASE_URL]   (default http://127.0.0.1:8080)
set -euo pipefail
base="${1:-http://127.0.0.1:8080}"
cd "$(dirname "$0")"
for f in [0-9]*.json; do
  hook=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["hook"])' "$f")
  echo "== $f ($hook)"
  curl -sS -w " (HTTP %{http_code})" -X POST "$base/cds-services/liquid-biopsy-$hook" -H 'Content-Type: application/json' --data @"$f"
  echo
done
