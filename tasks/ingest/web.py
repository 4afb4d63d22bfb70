"""Web analytics from GA4 BigQuery-export-shaped daily files (``events_YYYYMMDD.ndjson``).

GA4 nests device, traffic source, parameters and items; the canonical ``web_events`` table is flat,
one row per event, so rules and features never parse JSON.
"""

from __future__ import annotations

import json
import re
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
from pydantic import Field

from tasks import settings
from tasks.ingest.base import Extract, ExtractContext, SourceOptions, register
from tasks.tables import ROW_COL, SOURCE_COL

_FILE = re.compile(r"^events_(\d{8})\.ndjson$")


class Ga4Options(SourceOptions):
    path: str
    history_days: int = Field(60, ge=1, le=3660, description="daily files read per run, ending on the run date")


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

    def files(self, run_date: date) -> list[tuple[date, Path]]:
        folder = settings.resolve(self.options.path)
        if not folder.is_dir():
            raise FileNotFoundError(f"source {self.name!r}: folder {folder} not found; fix sources.yaml")
        first = run_date - timedelta(days=self.options.history_days - 1)
        found = []
        for path in folder.iterdir():
            m = _FILE.match(path.name)
            if m:
                day = datetime.strptime(m.group(1), "%Y%m%d").date()
                if first <= day <= run_date:
                    found.append((day, path))
        return sorted(found)

    def extract(self, table: str, ctx: ExtractContext) -> Extract:
        rows: list[dict[str, Any]] = []
        rejects: list[dict[str, Any]] = []
        for _, path in self.files(ctx.window.run_date):
            label = f"{path.parent.name}/{path.name}"
            with path.open(encoding="utf-8") as fh:
                for line_no, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    try:
                        row = flatten(json.loads(line))
                    except (json.JSONDecodeError, TypeError, ValueError, AttributeError) as exc:
                        rejects.append(
                            {
                                SOURCE_COL: label,
                                ROW_COL: line_no,
                                "_raw": line.rstrip("\n"),
                                "_reason": f"unparseable GA4 event: {type(exc).__name__}: {exc}",
                            }
                        )
                        continue
                    row[SOURCE_COL] = label
                    row[ROW_COL] = line_no
                    rows.append(row)
        frame = pd.DataFrame(rows)
        return Extract(frame, rejects)
