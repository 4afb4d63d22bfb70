"""A canonical table's state as of a date, from the clean zone's snapshot and increments.

Sources load either whole snapshots or increments (rows changed since the last load). Downstream
stages need "the table as it stood at the end of day D": the latest snapshot on or before D plus the
increments after it, keeping the newest version of each primary key. This is set-based DuckDB SQL
over the Parquet files; nothing is loaded into Python row by row.
"""

from __future__ import annotations

from datetime import date

import duckdb
import pandas as pd

from tasks.lake import Lake
from tasks.tables import ROW_COL, SOURCE_COL, TABLES


def register_current(con: duckdb.DuckDBPyConnection, lake: Lake, source: str, table: str, day: date) -> int:
    """Create view ``table`` in ``con``; returns how many partitions it spans (0 = none loaded yet)."""
    parts = lake.history("clean", source, table, day)
    if not parts:
        raise FileNotFoundError(
            f"no clean data for {source}.{table} on or before {day}; run the pipeline for that date first"
        )
    files = [(f, i) for i, p in enumerate(parts) for f in p.files]
    con.register(f"{table}__files", pd.DataFrame(files, columns=["filename", "_part"]))
    con.read_parquet([f for f, _ in files], union_by_name=True, filename=True).create_view(f"{table}__all")
    spec = TABLES[table]
    key = ", ".join(spec.primary_key or (SOURCE_COL, ROW_COL))
    con.execute(
        f"""
        CREATE OR REPLACE VIEW {table} AS
        SELECT a.* EXCLUDE (filename)
        FROM {table}__all a JOIN {table}__files f USING (filename)
        QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY f._part DESC, a.{ROW_COL} DESC) = 1
        """
    )
    return len(parts)


def current_frame(lake: Lake, source: str, table: str, day: date) -> pd.DataFrame:
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        register_current(con, lake, source, table, day)
        return con.execute(f"SELECT * FROM {table} ORDER BY {ROW_COL}").df()
    finally:
        con.close()
