"""The run-history report for marketers: audience size over time per segment and destination,
and what each sync did (added, removed, unchanged, failed, suppressed, duration, errors).

Built from ``sync_plans`` only, which holds counts and redacted errors and never a member, so
the report can be mailed or shared without leaking personal data. One self-contained HTML file
(inline SVG, no scripts, no external assets): it opens from an email, a bucket or a laptop.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

import pandas as pd

STATUS_LABEL = {
    "applied": "sent",
    "held": "held for approval",
    "blocked": "blocked",
    "failed": "failed (resumes next run)",
    "dry_run": "dry run (nothing sent)",
    "superseded": "superseded",
    "rejected": "rejected",
    "approved": "approved",
    "planned": "planned",
    "applying": "in progress",
}


def _sparkline(points: list[tuple[str, int]], width: int = 320, height: int = 60) -> str:
    if not points:
        return ""
    top = max(v for _, v in points) or 1
    step = width / max(len(points) - 1, 1)
    coords = [(i * step, height - 4 - (v / top) * (height - 8)) for i, (_, v) in enumerate(points)]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
    dots = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5"><title>{html.escape(d)}: {v:,}</title></circle>'
        for (x, y), (d, v) in zip(coords, points, strict=True)
    )
    return (
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="audience size over time"><polyline fill="none" stroke="#2563eb" stroke-width="2" '
        f'points="{path}"/>{dots}</svg>'
    )


def _duration(row: Mapping[Any, Any]) -> str:
    started, finished = row.get("started_at"), row.get("finished_at")
    if started is None or finished is None or pd.isna(started) or pd.isna(finished):
        return ""
    return f"{(pd.Timestamp(finished) - pd.Timestamp(started)).total_seconds():.1f} s"


def size_history(plans: pd.DataFrame) -> pd.DataFrame:
    """Audience size after each run's sync, per (segment, destination); the last plan of a date wins."""
    if plans.empty:
        return pd.DataFrame(columns=["segment", "destination", "run_date", "size"])
    done = plans[plans["status"].isin(["applied", "dry_run"])].sort_values("created_at")
    sizes = done.groupby(["segment", "destination", "run_date"], as_index=False).last()
    return sizes.assign(size=sizes["expected_size"] - sizes["failed"])[["segment", "destination", "run_date", "size"]]


def render(plans: pd.DataFrame, run_date: str) -> str:
    sizes = size_history(plans)
    sections = []
    for (segment, destination), group in plans.groupby(["segment", "destination"], sort=True):
        series = sizes[(sizes["segment"] == segment) & (sizes["destination"] == destination)]
        points = [(str(d), int(v)) for d, v in zip(series["run_date"], series["size"], strict=True)]
        recent = group.sort_values("created_at", ascending=False).head(10)
        rows = "".join(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(v))}</td>"
                for v in (
                    r["run_date"],
                    STATUS_LABEL.get(r["status"], r["status"]),
                    f"{r['added']:,}",
                    f"{r['removed']:,}",
                    f"{r['unchanged']:,}",
                    f"{r['failed']:,}",
                    f"{r['suppressed'] + r['excluded_suppressed']:,}",
                    f"{r['excluded_consent']:,}",
                    f"{r['expected_size']:,}",
                    _duration(r),
                    r["hold_reason"] or r["error"] or "",
                )
            )
            + "</tr>"
            for r in recent.to_dict("records")
        )
        current = points[-1][1] if points else 0
        sections.append(
            f"<section><h2>{html.escape(str(segment))} → {html.escape(str(destination))}</h2>"
            f"<p class=size>{current:,} members</p>{_sparkline(points)}"
            "<table><thead><tr><th>run</th><th>status</th><th>added</th><th>removed</th><th>unchanged</th>"
            "<th>failed</th><th>suppressed</th><th>no consent</th><th>size</th><th>duration</th><th>note</th>"
            f"</tr></thead><tbody>{rows}</tbody></table></section>"
        )
    body = "".join(sections) or "<p>No audience has been synced yet.</p>"
    return (
        "<!doctype html><html lang=en><meta charset=utf-8><title>Audience deliveries</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:2rem;color:#111}table{border-collapse:collapse;"
        "font-size:.9rem}td,th{border-bottom:1px solid #ddd;padding:.25rem .6rem;text-align:right}"
        "td:nth-child(2),td:last-child,th:last-child{text-align:left}.size{font-size:1.4rem;margin:.2rem 0}"
        "section{margin-bottom:2.5rem}</style>"
        f"<h1>Audience deliveries — up to {html.escape(run_date)}</h1>"
        "<p>Counts only: this report never contains customer details. “No consent” members were left out "
        "because they have not agreed to the channel; “suppressed” ones unsubscribed or bounced.</p>"
        f"{body}</html>"
    )
