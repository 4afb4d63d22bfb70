"""A readable HTML data-quality report per run, for the people who own the sources.

Counts and expectation names only: row values (which may be personal data) stay in the quarantine
zone, which has access controls a shared HTML file does not.
"""

from __future__ import annotations

from html import escape
from typing import Any

_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222}
table{border-collapse:collapse;margin:0 0 1.5rem}
td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}
th{background:#f3f3f3}.ok{color:#176b2c}.warn{color:#8a5a00}.bad{color:#b00020;font-weight:600}
"""


def _status(exp: dict[str, Any]) -> tuple[str, str]:
    if exp["success"]:
        return "ok", "passed"
    return ("bad", "FAILED (critical)") if exp["severity"] == "critical" else ("warn", "failed (warning)")


def render(run_date: str, reports: list[dict[str, Any]]) -> str:
    critical = sum(len(r["critical_failures"]) for r in reports)
    verdict = (
        f'<p class="bad">{critical} critical failure(s): nothing was delivered for this run.</p>'
        if critical
        else '<p class="ok">No critical failure: the run went on to segments and deliveries.</p>'
    )
    parts = [
        f"<!doctype html><html lang='en'><meta charset='utf-8'><title>Data quality {escape(run_date)}</title>",
        f"<style>{_CSS}</style><h1>Data quality for {escape(run_date)}</h1>{verdict}",
        "<table><tr><th>source.table</th><th>rows</th><th>clean</th><th>quarantined</th></tr>",
    ]
    for r in reports:
        parts.append(
            f"<tr><td>{escape(r['source'])}.{escape(r['table'])}</td><td>{r['rows']:,}</td>"
            f"<td>{r['clean']:,}</td><td>{r['quarantined']:,}</td></tr>"
        )
    parts.append("</table>")
    for r in reports:
        parts.append(f"<h2>{escape(r['source'])}.{escape(r['table'])}</h2>")
        parts.append("<table><tr><th>expectation</th><th>severity</th><th>result</th><th>failing rows</th>")
        parts.append("<th>detail</th></tr>")
        for exp in r.get("expectations", []):
            css, label = _status(exp)
            parts.append(
                f"<tr><td>{escape(exp['name'])}</td><td>{escape(exp['severity'])}</td>"
                f"<td class='{css}'>{label}</td><td>{exp['failed_rows']:,}</td>"
                f"<td>{escape(exp.get('error') or '')}</td></tr>"
            )
        parts.append("</table>")
    parts.append("</html>")
    return "".join(parts)
