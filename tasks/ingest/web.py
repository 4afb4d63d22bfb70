"""Web analytics from GA4 BigQuery-export-shaped daily files (``events_YYYYMMDD.ndjson|parquet``).

GA4 nests device, traffic source, parameters and items; the canonical ``web_events`` table is flat,
one row per event, so rules and features never parse JSON. NDJSON and Parquet (the BigQuery export's
native shape) go through the same :func:`flatten`, so the format a shop exports in cannot change
the rows. The files live in a local folder or under an S3 prefix (see :mod:`tasks.ingest.location`).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from typing import Any, ClassVar

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from tasks.ingest.base import Extract, ExtractContext, SourceOptions, register
from tasks.ingest.location import location_label, open_location, require_location, top_level, unreadable
from tasks.tables import ROW_COL, SOURCE_COL

_FILE = re.compile(r"^events_(\d{8})\.(ndjson|parquet)$")
_PARSE_ERRORS = (json.JSONDecodeError, TypeError, ValueError, AttributeError, OverflowError)


class Ga4Options(SourceOptions):
    location: str | None = Field(
        None, description="folder (relative to AUDIENCES_HOME or absolute) or s3://bucket/prefix"
    )
    path: str | None = Field(None, description="older name of 'location' (a local folder); still accepted")
    history_days: int = Field(60, ge=1, le=3660, description="daily files read per run, ending on the run date")

    @model_validator(mode="after")
    def _one_location(self) -> Ga4Options:
        if bool(self.location) == bool(self.path):
            raise ValueError("set exactly one of 'location' or 'path' (its older name)")
        return self

    @property
    def where(self) -> str:
        return self.location or self.path or ""


def _param(event: dict[str, Any], key: str) -> Any:
    for p in event.get("event_params") or []:
        if p.get("key") == key:
            value = p.get("value") or {}
            for typed in ("string_value", "int_value", "double_value", "float_value"):
                if value.get(typed) is not None:
                    return value[typed]
    return None


def flatten(event: dict[str, Any]) -> dict[str, Any]:
    device = event.get("device") or {}
    traffic = event.get("traffic_source") or {}
    items = event.get("items") or []
    ts = event.get("event_timestamp")
    return {
        "event_at": pd.Timestamp(int(ts), unit="us", tz="UTC") if ts is not None else None,
        "event_name": event.get("event_name"),
        "user_pseudo_id": event.get("user_pseudo_id"),
        "user_id": event.get("user_id"),
        "session_id": _param(event, "ga_session_id"),
        "page_location": _param(event, "page_location"),
        "device_category": device.get("category"),
        "browser": (device.get("web_info") or {}).get("browser"),
        "traffic_source": traffic.get("source"),
        "traffic_medium": traffic.get("medium"),
        "item_ids": ",".join(str(i.get("item_id")) for i in items if i.get("item_id")) or None,
        "item_categories": ",".join(str(i.get("item_category")) for i in items if i.get("item_category")) or None,
    }


@register("ga4_export")
class Ga4Export:
    kind: ClassVar[str]
    Options = Ga4Options

    def __init__(self, name: str, options: Ga4Options) -> None:
        self.name = name
        self.options = options

    def tables(self) -> list[str]:
        return ["web_events"]

    def files(self, run_date: date) -> list[tuple[date, str]]:
        """Daily files within ``history_days`` ending on the run date, oldest first, as store keys."""
        store = open_location(self.options.where)
        require_location(store, self.name, self.options.where)
        first = run_date - timedelta(days=self.options.history_days - 1)
        found = []
        for key in store.list(""):
            m = _FILE.match(key) if top_level(key) else None
            if m:
                day = datetime.strptime(m.group(1), "%Y%m%d").date()
                if first <= day <= run_date:
                    found.append((day, key))
        return sorted(found)

    def extract(self, table: str, ctx: ExtractContext) -> Extract:
        store = open_location(self.options.where)
        prefix = location_label(self.options.where)
        rows: list[dict[str, Any]] = []
        rejects: list[dict[str, Any]] = []
        notes: list[str] = []
        read_days: set[date] = set()
        # Parquet first within a day: when a day exists in both formats, the NDJSON is only read if
        # the Parquet file could not be, since both hold the same events and reading both doubles them.
        for day, key in sorted(self.files(ctx.window.run_date), key=lambda f: (f[0], not f[1].endswith(".parquet"))):
            if day in read_days:
                notes.append(f"{key} ignored: the Parquet export of {day.isoformat()} is read instead")
                continue
            label = f"{prefix}/{key}" if prefix else key
            data = store.get(key)
            try:
                events = _parquet_events(data) if key.endswith(".parquet") else _ndjson_events(data)
                parsed = list(events)
            except _Unreadable as exc:
                rejects.append(unreadable(label, data, str(exc)))
                continue
            read_days.add(day)
            for line_no, raw, event in parsed:
                try:
                    if isinstance(event, Exception):
                        raise event
                    if not isinstance(event, dict):
                        raise TypeError(f"expected a JSON object, got {type(event).__name__}")
                    row = flatten(event)
                except _PARSE_ERRORS as exc:
                    rejects.append(
                        {
                            SOURCE_COL: label,
                            ROW_COL: line_no,
                            "_raw": raw,
                            "_reason": f"unparseable GA4 event: {type(exc).__name__}: {exc}",
                        }
                    )
                    continue
                row[SOURCE_COL] = label
                row[ROW_COL] = line_no
                rows.append(row)
        frame = pd.DataFrame(rows)
        return Extract(frame, rejects, notes=notes)


class _Unreadable(Exception):
    """The whole file cannot be read; the message says why and what to do."""


# Each reader yields (1-based line/row number, raw text for quarantine, decoded event or an exception).
_Event = tuple[int, str, Any]


def _ndjson_events(data: bytes) -> Iterator[_Event]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _Unreadable(
            f"byte {exc.start} is not valid UTF-8; GA4 exports are UTF-8, so the file is probably damaged: re-export it"
        ) from None
    for line_no, line in enumerate(io.StringIO(text, newline=None), start=1):
        if not line.strip():
            continue
        raw = line.rstrip("\n")
        try:
            event: Any = json.loads(line)
        except json.JSONDecodeError as exc:
            event = exc
        yield line_no, raw, event


def _parquet_events(data: bytes) -> Iterator[_Event]:
    try:
        events = pq.read_table(pa.BufferReader(data)).to_pylist()
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise _Unreadable(
            f"not a readable Parquet file ({type(exc).__name__}: {str(exc)[:200]}); it is probably truncated "
            "or still being copied: re-export or re-copy it"
        ) from None
    for row_no, event in enumerate(events, start=1):
        yield row_no, json.dumps(event, default=str, ensure_ascii=False), event
