"""HTTP adapter for the decision records: history, the record behind one call or assertion, and
feedback analytics, as JSON, CSV and pages with charts.

Access follows the hook endpoints' authentication: with trusted issuers every request needs a JWT
whose aud is the URL called, and a client sees its own calls only, unless its issuer entry says
``records: all`` (the payer's own tooling). Every read is logged with who made it (CRD found-37/38:
these records hold PHI, so access to them is restricted and logged).
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable, Iterator
from datetime import date
from typing import Any

from flask import Blueprint, Response, g, render_template, request, stream_with_context

from cds_service import history
from cds_service.intake import RequestError
from cds_service.json_limits import json_problem
from cds_service.web.responses import authenticated_client, current_pipeline, json_response, operation_outcome

bp = Blueprint("records", __name__, url_prefix="/records", template_folder="templates")
log = logging.getLogger("cds_service.records")

MAX_PARAM = 512  # longest filter value (an issuer URL); the store holds nothing longer


@bp.before_request
def _authorise() -> None:
    client = authenticated_client()
    g.records_scope = None if client is None or client.issuer.records == "all" else client.iss
    g.records_reader = client.iss if client else "(unauthenticated)"


@bp.after_request
def _log_access(response: Response) -> Response:
    log.info("records read %s %s", request.path, response.status_code,
             extra={"reader": g.get("records_reader", "(refused)"), "status": response.status_code})
    return response


# ---------------------------------------------------------------- parameters


def _raw(name: str) -> str | None:
    """The parameter as sent (None when absent), refused when too long or holding a control character."""
    value = request.args.get(name)
    if value == "" and g.get("form_fields"):
        return None  # a page's filter form sends the fields left empty: they filter nothing
    if value is not None and (len(value) > MAX_PARAM or json_problem(value) is not None):
        raise RequestError(f"Parameter '{name}' is longer than {MAX_PARAM} characters or holds a control character",
                           name)
    return value


def _text(name: str) -> str | None:
    value = _raw(name)
    return value.strip() or None if value is not None else None


def _day(name: str) -> date | None:
    value = _raw(name)
    if value is None:
        return None
    try:
        if len(value) == 10:
            return date.fromisoformat(value)
    except ValueError:
        pass
    raise RequestError(f"Parameter '{name}' must be a date (YYYY-MM-DD)", name)


def _choice(name: str, allowed: Iterable[str], default: str | None = None) -> str | None:
    value = _raw(name)
    allowed = tuple(allowed)
    if value is None:
        return default
    if value not in allowed:
        raise RequestError(f"Parameter '{name}' must be one of {', '.join(allowed)}", name)
    return value


def _number(name: str, default: int, low: int, high: int) -> int:
    value = _raw(name)
    if value is None:
        return default
    if not (value.isascii() and value.isdigit()) or not low <= int(value) <= high:
        raise RequestError(f"Parameter '{name}' must be a whole number from {low} to {high}", name)
    return int(value)


def _filters() -> history.Filters:
    return history.Filters(start=_day("from"), end=_day("to"), service=_text("service"), issuer=_text("issuer"),
                           code=_text("code"), outcome=_choice("outcome", history.OUTCOMES), reason=_text("reason"))


def _format() -> str:
    return _choice("format", ("json", "csv"), "json") or "json"


def _analytics_options() -> tuple[str, str]:
    return (_choice("bucket", history.BUCKETS, "week") or "week",
            _choice("group", history.GROUPS, "card-type") or "card-type")


def _engine() -> Any:
    return current_pipeline().store.engine


# ---------------------------------------------------------------- JSON and CSV


@bp.get("/api/calls")
def api_calls() -> Response:
    f = _filters()
    limit, offset = _number("limit", 50, 1, history.MAX_PAGE), _number("offset", 0, 0, 10_000_000)
    if _format() == "csv":  # every matching row: the page parameters are checked, not applied
        return _csv("calls.csv", CALL_COLUMNS, history.verdict_rows(_engine(), f, g.records_scope))
    return json_response(history.calls(_engine(), f, g.records_scope, limit, offset))


@bp.get("/api/calls/<int:call_id>")
def api_call(call_id: int) -> Response:
    record = history.call_record(_engine(), call_id, g.records_scope)
    if record is None:
        return operation_outcome(404, f"No recorded call {call_id}")
    return json_response(record)


@bp.get("/api/assertions/<assertion_id>")
def api_assertion(assertion_id: str) -> Response:
    record = _assertion(assertion_id)
    if record is None:
        return operation_outcome(404, f"No coverage assertion with id '{assertion_id[:64]}'")
    return json_response(record)


@bp.get("/api/feedback")
def api_feedback() -> Response:
    bucket, group = _analytics_options()
    summary = history.feedback_summary(_engine(), _filters(), g.records_scope, bucket, group)
    if _format() == "csv":
        reasons = sorted({code for r in summary["rows"] for code in r["reasons"]})
        columns = ["period", "group", "issued", "accepted", "overridden", "overrideRate",
                   *(f"overridden:{code}" for code in reasons)]
        rows = ({**r, **{f"overridden:{code}": r["reasons"].get(code, 0) for code in reasons}}
                for r in summary["rows"])
        return _csv("feedback.csv", columns, rows)
    return json_response(summary)


def _assertion(assertion_id: str) -> dict[str, Any] | None:
    if len(assertion_id) > 64 or not assertion_id.isprintable():
        return None
    return history.assertion_record(_engine(), assertion_id, g.records_scope)


CALL_COLUMNS = ["id", "receivedAt", "service", "hook", "issuer", "hookInstance", "summary", "latencyMs", "order",
                "code", "policyOutcome", "coverage", "covered", "paNeeded", "reason", "assertionId"]


def _csv(filename: str, columns: list[str], rows: Iterable[dict[str, Any]]) -> Response:
    def lines() -> Iterator[str]:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in columns])
            yield out.getvalue()
            out.seek(0)
            out.truncate()
        yield out.getvalue()

    return Response(stream_with_context(lines()), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


def _cell(value: Any) -> Any:
    """A CSV cell that a spreadsheet will not run: text from clients may start with = + - @."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value


# ---------------------------------------------------------------- pages


@bp.get("/")
def page_calls() -> str:
    g.form_fields = True
    f = _filters()
    limit, offset = _number("limit", 50, 1, history.MAX_PAGE), _number("offset", 0, 0, 10_000_000)
    page = history.calls(_engine(), f, g.records_scope, limit, offset)
    args = {k: v for k, v in request.args.items() if v and k not in ("offset", "format")}  # for the links
    return render_template("records_calls.html", k=current_pipeline().knowledge, page=page, f=f, args=args,
                           limit=limit, offset=offset, outcomes=history.OUTCOMES,
                           services=sorted(current_pipeline().services))


@bp.get("/calls/<int:call_id>")
def page_call(call_id: int) -> tuple[str, int] | str:
    record = history.call_record(_engine(), call_id, g.records_scope)
    k = current_pipeline().knowledge
    if record is None:
        return render_template("records_missing.html", k=k, what=f"recorded call {call_id}"), 404
    return render_template("records_call.html", k=k, call=record)


@bp.get("/assertions/<assertion_id>")
def page_assertion(assertion_id: str) -> tuple[str, int] | str:
    record = _assertion(assertion_id)
    k = current_pipeline().knowledge
    if record is None:
        return render_template("records_missing.html", k=k, what=f"coverage assertion {assertion_id[:64]}"), 404
    return render_template("records_assertion.html", k=k, record=record)


@bp.get("/feedback")
def page_feedback() -> str:
    g.form_fields = True
    f = _filters()
    bucket, group = _analytics_options()
    summary = history.feedback_summary(_engine(), f, g.records_scope, bucket, group)
    k = current_pipeline().knowledge
    displays = {c.code: c.display for c in k.override_reasons}
    args = {k_: v for k_, v in request.args.items() if v and k_ != "format"}  # for the links
    return render_template("records_feedback.html", k=k, summary=summary, f=f, args=args, displays=displays,
                           rate_chart=_rate_chart(summary), reason_chart=_reason_chart(summary, displays),
                           buckets=history.BUCKETS, groups=history.GROUPS, services=sorted(current_pipeline().services))


CHART_COLORS = ("#0b4f9c", "#c0392b", "#27ae60", "#8e44ad", "#d35400", "#16a085", "#7f8c8d")


def _chart_config(title: str) -> dict[str, Any]:
    from pygal.style import Style  # imported when a chart is drawn: it cost every start-up ~25 ms

    style = Style(background="white", plot_background="white", font_family="system-ui, sans-serif",
                  colors=CHART_COLORS)
    # js=[]: no script from a CDN (the page works offline and under a strict CSP); the SVG is inline.
    return {"title": title, "js": [], "disable_xml_declaration": True, "style": style, "width": 900,
            "height": 360, "legend_at_bottom": True, "x_label_rotation": 30, "print_values": False,
            "no_data_text": "No feedback in this period"}


def _rate_chart(summary: dict[str, Any]) -> str:
    import pygal

    periods = sorted({r["period"] for r in summary["rows"]})
    chart = pygal.Line(**_chart_config(f"Override rate by {summary['group']} (% of feedback)"), range=(0, 100),
                       allow_interruptions=True)
    chart.x_labels = periods
    for name in sorted({r["group"] for r in summary["rows"]}):
        by_period = {r["period"]: r for r in summary["rows"] if r["group"] == name}
        chart.add(name, [None if (r := by_period.get(p)) is None or r["overrideRate"] is None
                         else round(100 * r["overrideRate"], 1) for p in periods])
    return str(chart.render(is_unicode=True))


def _reason_chart(summary: dict[str, Any], displays: dict[str, str]) -> str:
    import pygal

    periods = sorted({r["period"] for r in summary["rows"]})
    chart = pygal.StackedBar(**_chart_config("Overrides by reason"))
    chart.x_labels = periods
    for code in sorted({c for r in summary["rows"] for c in r["reasons"]}):
        chart.add(displays.get(code, code), [sum(r["reasons"].get(code, 0) for r in summary["rows"]
                                                 if r["period"] == p) for p in periods])
    return str(chart.render(is_unicode=True))
