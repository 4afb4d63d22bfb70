"""Turning a segment's audience into the file a marketer opens, and the few numbers told about it.

Every file destination (local outbox, S3, SFTP, email) hands people the same bytes, so the choices
that make a file usable live here once:

- CSV is UTF-8 with a byte-order mark: Excel on Windows (what most marketers open these in) shows
  Vietnamese diacritics as mojibake without it.
- XLSX is written by pandas with openpyxl. Excel cannot store time-zone-aware datetimes, so
  timestamps (UTC in the feature table) become plain datetimes displayed with a "UTC" suffix
  rather than silently shifting. Text that starts with "=" is stored as text, never as a formula:
  a customer who types ``=HYPERLINK(...)`` as their name must not get code run on a marketer's
  machine. The sheet is named after the segment title (Excel allows 31 characters, none of []:*?/\\).
- Columns are checked against the feature catalog when the config loads, so a typo fails before a
  run, with a suggestion.

The summary ("1,234 members, +56 / -12 since the last run") is computed from the lake's membership
partitions, not from the previously delivered file: a file can be deleted, renamed or never have
existed (email keeps nothing, a failed delivery leaves a gap), and reading it back would mean
re-reading personal data. "The last run" is ``segments.history.previous_run`` -- the same definition
the run-history report uses -- and the diff is taken between the audience actually delivered now and
the previous run's members *outside hold-out groups*, because hold-outs are measured but never sent:
counting them would make the numbers disagree with the file.
"""

from __future__ import annotations

import io
import re
import unicodedata
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import Field, field_validator

from tasks.config.loader import suggest
from tasks.destinations.base import DestinationOptions
from tasks.features import catalog
from tasks.lake import Lake
from tasks.settings import RunWindow

Format = Literal["csv", "xlsx"]

EXTENSION: dict[str, str] = {"csv": "csv", "xlsx": "xlsx"}
MEDIA_TYPE: dict[str, str] = {
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}

DEFAULT_COLUMNS = [
    "customer_key",
    "customer_id",
    "full_name",
    "email",
    "phone",
    "province",
    "orders",
    "monetary_total",
    "last_purchase_at",
    "email_opt_in",
    "sms_opt_in",
    "ads_opt_in",
]

SHEET_NAME_MAX = 31
XLSX_MAX_ROWS = 1_048_575  # Excel's 1,048,576 rows, minus the header
_SHEET_FORBIDDEN = re.compile(r"[\[\]:*?/\\\x00-\x1f]")
_TIMESTAMP_FORMAT = 'yyyy-mm-dd hh:mm:ss "UTC"'
_MAX_COLUMN_WIDTH = 50

# Memberships are written by segments.evaluate under the same source as segments.history reads them.
_MEMBERSHIPS = "memberships"


def check_columns(columns: list[str]) -> list[str]:
    """Every column must be a documented feature (built-in or from config/features.yaml)."""
    known = catalog.known()
    for c in columns:
        if c not in known:
            raise ValueError(f"unknown column {c!r}" + suggest(c, list(known)))
    if len(set(columns)) != len(columns):
        dupes = sorted({c for c in columns if columns.count(c) > 1})
        raise ValueError(f"column(s) listed twice: {', '.join(dupes)}")
    return columns


class FileOptions(DestinationOptions):
    """What every file destination shares: the file format and the columns it carries."""

    format: Format = "csv"
    columns: list[str] = Field(default_factory=lambda: list(DEFAULT_COLUMNS), min_length=1)

    @field_validator("columns")
    @classmethod
    def _known(cls, columns: list[str]) -> list[str]:
        return check_columns(columns)


def file_name(segment: str, fmt: Format) -> str:
    return f"{segment}.{EXTENSION[fmt]}"


def render(audience: pd.DataFrame, columns: list[str], fmt: Format, *, title: str | None = None) -> bytes:
    """The audience's ``columns`` (in that order) as CSV (UTF-8 with BOM) or XLSX bytes."""
    missing = [c for c in columns if c not in audience.columns]
    if missing:
        raise ValueError(
            f"the audience has no column(s) {', '.join(missing)}; they are in the catalog but were not built "
            "into the feature table for this run (check config/features.yaml and the CRM export)"
        )
    frame = audience[columns]
    if fmt == "csv":
        buf = io.BytesIO()
        frame.to_csv(buf, index=False, encoding="utf-8-sig")
        return buf.getvalue()
    if fmt == "xlsx":
        if len(frame) > XLSX_MAX_ROWS:
            raise ValueError(
                f"{len(frame):,} members do not fit in one Excel sheet (at most {XLSX_MAX_ROWS:,} rows below the "
                "header); use format: csv for this segment"
            )
        return _xlsx(frame, sheet_name(title or "Audience"))
    raise ValueError(f"unknown file format {fmt!r}; use csv or xlsx")


def sheet_name(title: str) -> str:
    """An Excel-legal sheet name from a segment title (Vietnamese letters are fine)."""
    name = _SHEET_FORBIDDEN.sub(" ", unicodedata.normalize("NFC", title))  # 31 letters, not 31 code points
    name = re.sub(r"\s+", " ", name).strip().strip("'")[:SHEET_NAME_MAX].strip().strip("'")
    if not name:
        return "Audience"
    if name.casefold() == "history":  # reserved by Excel
        return "History (segment)"
    return name


def _xlsx(frame: pd.DataFrame, sheet: str) -> bytes:
    frame = frame.copy()
    stamped: list[int] = []
    for i, (_, dtype) in enumerate(frame.dtypes.items()):
        if isinstance(dtype, pd.DatetimeTZDtype):
            frame.isetitem(i, frame.iloc[:, i].dt.tz_convert("UTC").dt.tz_localize(None))
            stamped.append(i)
    buf = io.BytesIO()
    with pd.ExcelWriter(buf, engine="openpyxl") as writer:
        frame.to_excel(writer, sheet_name=sheet, index=False)
        ws = writer.sheets[sheet]
        for row in ws.iter_rows(min_row=2):
            for cell in row:
                if cell.data_type == "f":  # a value starting with "=" is data, not a formula
                    cell.data_type = "s"
        for i in stamped:
            for row in ws.iter_rows(min_row=2, min_col=i + 1, max_col=i + 1):
                row[0].number_format = _TIMESTAMP_FORMAT
        ws.freeze_panes = "A2"
        ws.auto_filter.ref = ws.dimensions
        for i, column in enumerate(frame.columns):
            sample = frame.iloc[:1000, i].astype("string").fillna("")
            width = max([len(str(column)), *(len(v) for v in sample)], default=8)
            ws.column_dimensions[ws.cell(row=1, column=i + 1).column_letter].width = min(width + 2, _MAX_COLUMN_WIDTH)
    return buf.getvalue()


# -- the summary ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Changes:
    """Members added and removed since the previous run; ``previous_run`` None means this is the first."""

    added: int
    removed: int
    previous_run: date | None


def changes_since_last_run(
    lake: Lake, segment: str, day: date, current_keys: Iterable[str], hold_out: Collection[str] = ()
) -> Changes:
    """Diff the delivered audience (``current_keys``) against the previous run's members of ``segment``.

    Members of the previous run whose split group is in ``hold_out`` were not delivered then either,
    so they are left out. The previous partition is filtered by DuckDB, not loaded whole into pandas:
    it holds every segment's memberships.
    """
    import duckdb

    from tasks.segments import history

    current = pd.DataFrame({"customer_key": pd.Series(list(current_keys), dtype="string")}).drop_duplicates()
    before = history.previous_run(lake, day)
    if before is None:
        return Changes(added=len(current), removed=0, previous_run=None)
    files = lake.local_files("segments", history.SOURCE, _MEMBERSHIPS, before)
    con = duckdb.connect()
    try:
        con.register("cur", current)
        added, removed = con.execute(
            """
            WITH prev AS (
                SELECT DISTINCT CAST(customer_key AS VARCHAR) AS customer_key
                FROM read_parquet($files)
                WHERE segment = $segment AND NOT coalesce(list_contains($hold::VARCHAR[], "group"), false)
            )
            SELECT (SELECT count(*) FROM cur WHERE customer_key NOT IN (SELECT customer_key FROM prev)),
                   (SELECT count(*) FROM prev WHERE customer_key NOT IN (SELECT customer_key FROM cur))
            """,
            {"files": files, "segment": segment, "hold": list(hold_out)},
        ).fetchone() or (0, 0)
    finally:
        con.close()
    return Changes(added=int(added), removed=int(removed), previous_run=before)


def hold_out_groups(segment: str, config_dir: Path | None = None) -> tuple[str, ...]:
    """The split groups of ``segment`` that are never delivered (none for unsplit or cluster segments)."""
    from tasks import settings
    from tasks.config.loader import load_model
    from tasks.segments.rules import SegmentsConfig

    path = (config_dir or settings.config_dir()) / "segments.yaml"
    if not path.is_file():
        return ()
    for seg in load_model(path, SegmentsConfig).segments:
        if seg.name == segment and seg.split is not None:
            return tuple(seg.split.hold_out)
    return ()


@dataclass(frozen=True)
class Summary:
    """What a marketer is told about one delivered segment: counts only, never who."""

    segment: str
    title: str
    run_date: date
    members: int
    changes: Changes

    @property
    def first_run(self) -> bool:
        return self.changes.previous_run is None


def summarize(segment: str, title: str, audience: pd.DataFrame, window: RunWindow, lake: Lake) -> Summary:
    keys = audience["customer_key"].astype("string") if "customer_key" in audience.columns else pd.Series([])
    changes = changes_since_last_run(lake, segment, window.run_date, keys.dropna(), hold_out_groups(segment))
    return Summary(segment, title, window.run_date, len(audience), changes)
