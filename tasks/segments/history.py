"""Who entered and left each segment since the previous run, and segment sizes over time.

Kept as small per-run tables in the lake (``segments/source=audiences/table=changes|sizes``) so a
size chart over a year reads 365 tiny files, not 365 membership lists.
"""

from __future__ import annotations

from datetime import date

import duckdb
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
    Two anti-joins in DuckDB over the frames' Arrow data: at millions of memberships an outer merge in
    pandas took tens of seconds and several copies of both tables.
    """
    cols = ["segment", "customer_key"]
    if previous is None or previous.empty:
        entered = current.assign(change="entered")
        return entered.reindex(columns=[*cols, "change", "reasons"])
    con = duckdb.connect()
    try:
        con.register("cur", current.reindex(columns=[*cols, "reasons"]))
        con.register("prev", previous.reindex(columns=[*cols, "reasons"]))
        # Old partitions may lack reasons: their column is all-null and typed by pandas, not as text.
        changes = con.sql(
            """
            SELECT segment, customer_key, 'entered' AS change, CAST(reasons AS VARCHAR) AS reasons
            FROM cur WHERE NOT EXISTS (
                SELECT 1 FROM prev WHERE prev.segment = cur.segment AND prev.customer_key = cur.customer_key)
            UNION ALL
            SELECT segment, customer_key, 'left' AS change, CAST(reasons AS VARCHAR) AS reasons
            FROM prev WHERE NOT EXISTS (
                SELECT 1 FROM cur WHERE cur.segment = prev.segment AND cur.customer_key = prev.customer_key)
            ORDER BY segment, customer_key
            """
        ).to_arrow_table()
    finally:
        con.close()
    return pd.DataFrame(
        {name: pd.array(changes.column(name), dtype=pd.StringDtype("pyarrow")) for name in changes.column_names}
    )


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
