"""GA4 export: nested events flatten to one row each; only the run's daily files are read."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from tasks.config.models import SourceConfig
from tasks.ingest.base import ExtractContext, build_source
from tasks.settings import RunWindow
from tasks.state.store import StateStore

WINDOW = RunWindow(date(2026, 11, 24), ZoneInfo("Asia/Ho_Chi_Minh"))
CTX = ExtractContext(WINDOW, StateStore("sqlite://"))
CONFIG_FILE = Path("config/sources.yaml")


def _event(ts_us: int, user: str = "u1", **extra: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_timestamp": ts_us,
        "event_name": "view_item",
        "user_pseudo_id": f"p-{user}",
        "user_id": user,
        "event_params": [
            {"key": "ga_session_id", "value": {"int_value": 1234}},
            {"key": "page_location", "value": {"string_value": "https://shop.vn/p/ao-dai"}},
            {"key": "engaged", "value": {"string_value": None, "int_value": 1}},
        ],
        "device": {"category": "mobile", "web_info": {"browser": "Chrome"}},
        "traffic_source": {"source": "google", "medium": "cpc"},
        "items": [
            {"item_id": "SKU1", "item_category": "Áo dài"},
            {"item_id": "SKU2", "item_category": "Giày"},
        ],
    }
    event.update(extra)
    return event


def _write(folder: Path, day: str, lines: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"events_{day}.ndjson"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _source(history_days: int = 3) -> Any:
    return build_source(
        "web", SourceConfig(kind="ga4_export", options={"path": "web", "history_days": history_days}), CONFIG_FILE
    )


def test_nested_fields_flatten(home: Path) -> None:
    ts = 1_795_539_599_123_456  # 2026-11-24T16:59:59.123456Z
    _write(home / "web", "20261124", [json.dumps(_event(ts))])
    frame = _source().extract("web_events", CTX).frame
    assert len(frame) == 1
    row = frame.iloc[0]
    assert row["event_at"] == pd.Timestamp("2026-11-24T16:59:59.123456", tz="UTC")
    assert str(row["event_at"].tz) == "UTC"
    assert row["event_name"] == "view_item"
    assert row["user_id"] == "u1"
    assert row["user_pseudo_id"] == "p-u1"
    assert row["session_id"] == 1234
    assert row["page_location"] == "https://shop.vn/p/ao-dai"
    assert row["device_category"] == "mobile"
    assert row["browser"] == "Chrome"
    assert row["traffic_source"] == "google"
    assert row["traffic_medium"] == "cpc"
    assert row["item_ids"] == "SKU1,SKU2"
    assert row["item_categories"] == "Áo dài,Giày"
    assert row["_source"] == "web/events_20261124.ndjson"
    assert row["_row"] == 1


def test_missing_nested_parts_give_none(home: Path) -> None:
    bare = {"event_timestamp": 1_795_500_000_000_000, "event_name": "page_view", "user_pseudo_id": "p"}
    _write(home / "web", "20261124", [json.dumps(bare)])
    row = _source().extract("web_events", CTX).frame.iloc[0]
    for col in (
        "user_id",
        "session_id",
        "page_location",
        "device_category",
        "browser",
        "traffic_source",
        "traffic_medium",
        "item_ids",
        "item_categories",
    ):
        assert row[col] is None, col


def test_only_files_in_history_window_are_read(home: Path) -> None:
    folder = home / "web"
    ts = 1_795_500_000_000_000
    for day in ("20261121", "20261122", "20261123", "20261124", "20261125"):
        _write(folder, day, [json.dumps(_event(ts, user=day))])
    (folder / "events_20261124.ndjson.bak").write_text(json.dumps(_event(ts, user="bak")) + "\n")
    (folder / "other_20261124.ndjson").write_text(json.dumps(_event(ts, user="other")) + "\n")
    frame = _source(history_days=3).extract("web_events", CTX).frame
    assert sorted(frame["user_id"]) == ["20261122", "20261123", "20261124"]


def test_unparseable_line_is_rejected_others_load(home: Path) -> None:
    ts = 1_795_500_000_000_000
    _write(
        home / "web",
        "20261124",
        [json.dumps(_event(ts, user="a")), '{"event_name": "broken', "", json.dumps(_event(ts, user="b"))],
    )
    result = _source().extract("web_events", CTX)
    assert result.frame["user_id"].tolist() == ["a", "b"]
    assert result.frame["_row"].tolist() == [1, 4]
    assert len(result.rejects) == 1
    rej = result.rejects[0]
    assert rej["_source"] == "web/events_20261124.ndjson"
    assert rej["_row"] == 2
    assert rej["_raw"] == '{"event_name": "broken'
    assert "unparseable" in rej["_reason"]


def test_non_object_line_is_rejected(home: Path) -> None:
    """Valid JSON that is not an event object (e.g. a list) must be a reject, not a crash."""
    _write(home / "web", "20261124", ["[1, 2]", json.dumps(_event(1_795_500_000_000_000))])
    result = _source().extract("web_events", CTX)
    assert len(result.frame) == 1
    assert [r["_row"] for r in result.rejects] == [1]


def test_missing_folder_is_named(home: Path) -> None:
    with pytest.raises(FileNotFoundError, match="web"):
        _source().extract("web_events", CTX)
