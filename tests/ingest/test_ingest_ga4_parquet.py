"""GA4 Parquet exports flatten exactly like NDJSON; damaged files are quarantined; S3 prefixes work."""

from __future__ import annotations

import io
import json
from datetime import date
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.config.loader import ConfigError
from tasks.config.models import SourceConfig
from tasks.ingest.base import ExtractContext, build_source
from tasks.settings import RunWindow
from tasks.state.store import StateStore

CONFIG_FILE = Path("config/sources.yaml")
TS = 1_795_539_599_123_456  # 2026-11-24T16:59:59.123456Z

_VALUE = pa.struct(
    [
        ("string_value", pa.string()),
        ("int_value", pa.int64()),
        ("float_value", pa.float64()),
        ("double_value", pa.float64()),
    ]
)
# The shape of a GA4 BigQuery export table (the columns flatten() reads, plus a few it ignores).
GA4_SCHEMA = pa.schema(
    [
        ("event_date", pa.string()),
        ("event_timestamp", pa.int64()),
        ("event_name", pa.string()),
        ("event_params", pa.list_(pa.struct([("key", pa.string()), ("value", _VALUE)]))),
        ("user_id", pa.string()),
        ("user_pseudo_id", pa.string()),
        (
            "device",
            pa.struct(
                [
                    ("category", pa.string()),
                    ("operating_system", pa.string()),
                    ("web_info", pa.struct([("browser", pa.string()), ("hostname", pa.string())])),
                ]
            ),
        ),
        ("traffic_source", pa.struct([("name", pa.string()), ("medium", pa.string()), ("source", pa.string())])),
        (
            "items",
            pa.list_(pa.struct([("item_id", pa.string()), ("item_category", pa.string()), ("price", pa.float64())])),
        ),
    ]
)


def _ctx(tmp_path: Path) -> ExtractContext:
    return ExtractContext(
        RunWindow(date(2026, 11, 24), ZoneInfo("Asia/Ho_Chi_Minh")), StateStore(f"sqlite:///{tmp_path}/state.db")
    )


def _events() -> list[dict[str, Any]]:
    full = {
        "event_date": "20261124",
        "event_timestamp": TS,
        "event_name": "purchase",
        "event_params": [
            {"key": "ga_session_id", "value": {"int_value": 1234}},
            {"key": "page_location", "value": {"string_value": "https://shop.vn/p/ao-dai"}},
            {"key": "engagement_time_msec", "value": {"double_value": 12.5}},
        ],
        "user_id": "u1",
        "user_pseudo_id": "p-u1",
        "device": {"category": "mobile", "operating_system": "iOS", "web_info": {"browser": "Safari"}},
        "traffic_source": {"name": "(organic)", "medium": "organic", "source": "google"},
        "items": [
            {"item_id": "SKU1", "item_category": "Áo dài", "price": 450000.0},
            {"item_id": "SKU2", "item_category": None, "price": 90000.0},
        ],
    }
    bare = {"event_timestamp": TS + 1, "event_name": "page_view", "user_pseudo_id": "p-u2"}
    empty_lists = {**bare, "event_params": [], "items": [], "device": {"category": "desktop"}}
    return [full, bare, empty_lists]


def _parquet(events: list[dict[str, Any]]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(events, schema=GA4_SCHEMA), buf)
    return buf.getvalue()


def _ndjson(events: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events).encode()


def _source(location: str, key: str = "location", history_days: int = 3) -> Any:
    options = {key: location, "history_days": history_days}
    return build_source("web", SourceConfig(kind="ga4_export", options=options), CONFIG_FILE)


def test_parquet_flattens_like_ndjson(home: Path, tmp_path: Path) -> None:
    for folder, name, data in (
        ("nd", "events_20261124.ndjson", _ndjson(_events())),
        ("pq", "events_20261124.parquet", _parquet(_events())),
    ):
        (home / folder).mkdir()
        (home / folder / name).write_bytes(data)
    from_json = _source("nd").extract("web_events", _ctx(tmp_path))
    from_parquet = _source("pq").extract("web_events", _ctx(tmp_path))
    assert from_parquet.rejects == [] and from_json.rejects == []
    pq_frame = from_parquet.frame
    assert pq_frame["_source"].tolist() == ["pq/events_20261124.parquet"] * 3
    assert pq_frame["_row"].tolist() == [1, 2, 3]
    first = pq_frame.iloc[0]
    assert first["event_at"] == pd.Timestamp("2026-11-24T16:59:59.123456", tz="UTC")
    assert (first["session_id"], first["browser"], first["traffic_medium"]) == (1234, "Safari", "organic")
    assert (first["item_ids"], first["item_categories"]) == ("SKU1,SKU2", "Áo dài")
    assert pq_frame.iloc[2]["device_category"] == "desktop"
    assert pd.isna(pq_frame.iloc[2]["item_ids"])
    pd.testing.assert_frame_equal(pq_frame.drop(columns="_source"), from_json.frame.drop(columns="_source"))


def test_truncated_parquet_is_rejected_and_other_day_loads(home: Path, tmp_path: Path) -> None:
    folder = home / "web"
    folder.mkdir()
    good = _parquet(_events())
    (folder / "events_20261123.parquet").write_bytes(good)
    (folder / "events_20261124.parquet").write_bytes(good[: len(good) // 2])
    result = _source("web").extract("web_events", _ctx(tmp_path))
    assert set(result.frame["_source"]) == {"web/events_20261123.parquet"}
    assert len(result.frame) == 3
    assert len(result.rejects) == 1
    rej = result.rejects[0]
    assert (rej["_source"], rej["_row"]) == ("web/events_20261124.parquet", 0)
    assert rej["_reason"].startswith("unreadable file: not a readable Parquet file")
    assert rej["_raw"] == repr(good[:200])


def test_same_day_in_both_formats_is_read_once(home: Path, tmp_path: Path) -> None:
    folder = home / "web"
    folder.mkdir()
    (folder / "events_20261124.parquet").write_bytes(_parquet(_events()))
    (folder / "events_20261124.ndjson").write_bytes(_ndjson(_events()))
    result = _source("web").extract("web_events", _ctx(tmp_path))
    assert len(result.frame) == 3
    assert set(result.frame["_source"]) == {"web/events_20261124.parquet"}
    assert result.notes == ["events_20261124.ndjson ignored: the Parquet export of 2026-11-24 is read instead"]


def test_path_is_still_accepted_but_not_together_with_location(home: Path, tmp_path: Path) -> None:
    (home / "web").mkdir()
    (home / "web" / "events_20261124.ndjson").write_bytes(_ndjson(_events()[:1]))
    assert len(_source("web", key="path").extract("web_events", _ctx(tmp_path)).frame) == 1
    with pytest.raises(ConfigError, match="exactly one of 'location' or 'path'"):
        build_source("web", SourceConfig(kind="ga4_export", options={"path": "web", "location": "web"}), CONFIG_FILE)
    with pytest.raises(ConfigError, match="exactly one"):
        build_source("web", SourceConfig(kind="ga4_export", options={}), CONFIG_FILE)


def test_s3_prefix_with_ndjson_files(s3_bucket: str, s3_endpoint: str, home: Path, tmp_path: Path) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    for day, user in (("20261120", "old"), ("20261123", "a"), ("20261124", "b")):
        event = {**_events()[0], "user_id": user}
        s3.put_object(Bucket=s3_bucket, Key=f"exports/ga4/events_{day}.ndjson", Body=_ndjson([event]))
    s3.put_object(Bucket=s3_bucket, Key="exports/ga4/archive/events_20261124.ndjson", Body=_ndjson(_events()))
    s3.put_object(Bucket=s3_bucket, Key="exports/ga4/events_20261124.parquet", Body=b"")  # still uploading
    result = _source(f"s3://{s3_bucket}/exports/ga4").extract("web_events", _ctx(tmp_path))
    # The unreadable Parquet is quarantined and that day's NDJSON export is read instead.
    assert result.frame["user_id"].tolist() == ["a", "b"]
    assert result.frame["_source"].tolist() == ["ga4/events_20261123.ndjson", "ga4/events_20261124.ndjson"]
    assert [r["_source"] for r in result.rejects] == ["ga4/events_20261124.parquet"]
    assert result.notes == []
