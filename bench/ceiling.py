"""The ceiling: the fastest possible answer on the same stack (Flask under gunicorn).

It answers every request with a fixed, pre-serialised body recorded from the real service for the
same request shape (chosen by the ``case`` query parameter), so the only difference left between
the two servers is the service's own work. bench/run.py runs it twice: under the fastest gunicorn
configuration (sync workers, no access log) and under the service's own settings.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from flask import Flask, Response, request

BODIES = {name: body.encode() for name, body in json.loads(Path(os.environ["CEILING_BODIES"]).read_text()).items()}
app = Flask(__name__)


@app.route("/cds-services", methods=["GET"])
@app.route("/cds-services/<service_id>", methods=["POST"])
def fixed(service_id: str | None = None) -> Response:
    request.get_data()  # receive the body like the service does; only parsing and deciding are skipped
    return Response(BODIES[request.args.get("case", "discovery")], mimetype="application/json")
