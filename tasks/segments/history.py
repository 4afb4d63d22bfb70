"""Who entered and left each segment since the previous run, and segment sizes over time.

Kept as small per-run tables in the lake (``segments/source=audiences/table=changes|sizes``) so a
size chart over a year reads 365 tiny files, not 365 membership lists.
"""

from __future__ import annotations

from datetime import date

import duckdb
import numpy as np
import pandas as pd

from tasks.lake import Lake

SOURCE = "audiences"
STRING = pd.StringDtype("pyarrow")


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
        return entered.reindex(columns=[*cols, "change", "reasons"]).astype(STRING)
    # Segments as small integer codes over the names of both runs: the anti-joins then hash a number and
    # the key instead of two strings (at 12M memberships a run that kept segment names as text peaked at
    # 3.9 GiB in the joins).
    seen = {str(v) for f in (current, previous) for v in f["segment"].dropna().unique()}
    names = pd.Index(sorted(seen), dtype=STRING)

    def codes(segment: pd.Series) -> np.ndarray:
        if isinstance(segment.dtype, pd.CategoricalDtype):  # as finalize writes them: recode, no hashing
            return segment.cat.set_categories(names).cat.codes.to_numpy()
        return pd.Categorical(segment, categories=names).codes  # text, as older partitions hold it

    def coded(frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "seg": codes(frame["segment"]),
                "customer_key": frame["customer_key"],
                "reasons": frame["reasons"] if "reasons" in frame else pd.Series(pd.NA, index=frame.index),
            }
        )

    con = duckdb.connect()
    try:
        con.register("cur", coded(current))
        con.register("prev", coded(previous))
        # Old partitions may lack reasons: their column is all-null and typed by pandas, not as text.
        changes = con.sql(
            """
            SELECT seg, customer_key, 'entered' AS change, CAST(reasons AS VARCHAR) AS reasons
            FROM cur WHERE NOT EXISTS (
                SELECT 1 FROM prev WHERE prev.seg = cur.seg AND prev.customer_key = cur.customer_key)
            UNION ALL
            SELECT seg, customer_key, 'left' AS change, CAST(reasons AS VARCHAR) AS reasons
            FROM prev WHERE NOT EXISTS (
                SELECT 1 FROM cur WHERE cur.seg = prev.seg AND cur.customer_key = prev.customer_key)
            ORDER BY seg, customer_key
            """
        ).to_arrow_table()
    finally:
        con.close()
    return pd.DataFrame(
        {
            "segment": pd.array(names.take(changes.column("seg").to_numpy()).array, dtype=STRING),
            **{name: pd.array(changes.column(name), dtype=STRING) for name in ("customer_key", "change", "reasons")},
        }
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
