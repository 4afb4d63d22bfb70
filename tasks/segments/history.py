"""Who entered and left each segment since the previous run, and segment sizes over time.

Kept as small per-run tables in the lake (``segments/source=audiences/table=changes|sizes``) so a
size chart over a year reads 365 tiny files, not 365 membership lists.
"""

from __future__ import annotations

from datetime import date

import pandas as pd

from tasks.lake import Lake

SOURCE = "audiences"


def previous_run(lake: Lake, day: date) -> date | None:
    earlier = [d for d in lake.partitions("segments", SOURCE, "memberships") if d < day]
    return earlier[-1] if earlier else None


def membership_changes(current: pd.DataFrame, previous: pd.DataFrame | None) -> pd.DataFrame:
    """Rows (segment, customer_key, change) with change 'entered' or 'left'.

    ``current``/``previous`` hold (segment, customer_key[, reasons]); a member's reasons travel with
    the change, so "entered because orders ≥ 3" and "left: it was there because ..." can be shown.
    """
    cols = ["segment", "customer_key"]
    if previous is None or previous.empty:
        entered = current.assign(change="entered")
        return entered.reindex(columns=[*cols, "change", "reasons"])
    merged = current.merge(previous, on=cols, how="outer", suffixes=("", "_before"), indicator=True)
    entered = merged[merged["_merge"] == "left_only"].assign(change="entered")
    left = merged[merged["_merge"] == "right_only"].assign(change="left")
    if "reasons_before" in left.columns:
        left = left.assign(reasons=left["reasons_before"])
    out = pd.concat([entered, left], ignore_index=True)
    return out.reindex(columns=[*cols, "change", "reasons"]).sort_values(cols).reset_index(drop=True)


def sizes(current: pd.DataFrame, changes: pd.DataFrame, segments: list[str], day: date) -> pd.DataFrame:
    counts = current.groupby("segment").size()
    moved = changes.groupby(["segment", "change"]).size()
    return pd.DataFrame(
        {
            "run_date": [day.isoformat()] * len(segments),
            "segment": segments,
            "members": [int(counts.get(s, 0)) for s in segments],
            "entered": [int(moved.get((s, "entered"), 0)) for s in segments],
            "left": [int(moved.get((s, "left"), 0)) for s in segments],
        }
    )


def record(lake: Lake, day: date, current: pd.DataFrame, segments: list[str]) -> pd.DataFrame:
    """Write this run's changes and sizes; returns the sizes row per segment."""
    before = previous_run(lake, day)
    previous = lake.read("segments", SOURCE, "memberships", before) if before else None
    changes = membership_changes(current, previous)
    lake.write("segments", SOURCE, "changes", day, changes)
    table = sizes(current, changes, segments, day)
    lake.write("segments", SOURCE, "sizes", day, table)
    return table


def size_history(lake: Lake, until: date | None = None) -> pd.DataFrame:
    days = [d for d in lake.partitions("segments", SOURCE, "sizes") if until is None or d <= until]
    if not days:
        return pd.DataFrame(columns=["run_date", "segment", "members", "entered", "left"])
    return pd.concat([lake.read("segments", SOURCE, "sizes", d) for d in days], ignore_index=True)
