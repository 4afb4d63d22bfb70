"""Exact feature values on a hand-made lake: business-day windows, recency, age and tie-breaks.

Run date 2026-11-24 in Asia/Ho_Chi_Minh (UTC+7), so as_of = 2026-11-24T17:00:00Z. Frames go through
Parquet, as in build_features, so DuckDB sees the same column types as in production.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import duckdb
import pandas as pd
import pytest

from tasks.features.build import compute_features, configure_connection, write_features
from tasks.features.catalog import COLUMNS
from tasks.settings import RunWindow
from tasks.unify.profiles import build_profiles

WINDOW = RunWindow(date(2026, 11, 24), ZoneInfo("Asia/Ho_Chi_Minh"))


def _contact(cid: str, birthday: date | None = None) -> dict[str, Any]:
    return {
        "contact_id": f"C-{cid}",
        "customer_id": cid,
        "full_name": f"Khách {cid}",
        "email": f"{cid.lower()}@shop.vn",
        "phone": "0912345678",
        "gender": "female",
        "birthday": birthday,
        "province": "Hà Nội",
        "email_opt_in": True,
        "sms_opt_in": False,
        "ads_opt_in": True,
        "member_since": date(2020, 1, 1),
        "nps_score": 9,
        "csat_score": 5,
        "updated_at": pd.Timestamp("2026-01-01", tz="UTC"),
    }


ORDERS: list[tuple[str, str, str, str, int, int]] = [
    # customer, order_id, ordered_at (UTC), store, total, discount
    ("EDGE", "E1", "2026-11-24T16:59:59Z", "S1", 100, 0),  # 23:59:59 local on the run date
    ("EDGE", "E2", "2026-11-24T17:00:00Z", "S1", 999, 0),  # = as_of: next business day, excluded
    ("WIN", "W1", "2026-10-25T17:00:00Z", "S1", 10, 0),  # local 2026-10-26: 29 days before -> in 30d
    ("WIN", "W2", "2026-10-25T16:59:59Z", "S1", 20, 5),  # local 2026-10-25: 30 days before -> out of 30d
    ("REC", "R1", "2026-11-20T18:00:00Z", "S3", 100, 0),  # local 2026-11-21 01:00 -> recency 3
    ("REC", "R2", "2026-06-01T03:00:00Z", "S3", 200, 10),
    ("REC", "R3", "2025-01-01T03:00:00Z", "S3", 600, 0),
    ("TIE", "T1", "2026-11-01T03:00:00Z", "S2", 50, 0),  # one order at S2 and one at S1: S1 wins
    ("TIE", "T2", "2026-11-02T03:00:00Z", "S1", 50, 0),
    ("POSONLY", "P1", "2026-11-10T03:00:00Z", "S9", 70, 0),  # no CRM contact
]

WEB: list[tuple[str | None, str, int, str, str, str]] = [
    # user_id, event_name, session, device, source, event_at (UTC)
    ("EDGE", "page_view", 1, "mobile", "google", "2026-11-24T16:59:59Z"),
    ("EDGE", "page_view", 1, "mobile", "google", "2026-11-24T10:00:00Z"),
    ("EDGE", "view_item", 2, "desktop", "facebook", "2026-11-20T10:00:00Z"),
    ("EDGE", "add_to_cart", 2, "mobile", "zalo", "2026-11-23T10:00:00Z"),
    ("EDGE", "page_view", 3, "tablet", "future", "2026-11-24T17:00:00Z"),  # at as_of: ignored
    ("EDGE", "page_view", 4, "tablet", "old", "2026-10-25T16:59:59Z"),  # 30 local days before: outside 30d
    (None, "page_view", 5, "tablet", "anon", "2026-11-24T10:00:00Z"),  # not logged in
]


def _orders() -> pd.DataFrame:
    frame = pd.DataFrame(
        ORDERS, columns=["customer_id", "order_id", "ordered_at", "store_id", "total_vnd", "discount_vnd"]
    )
    frame["ordered_at"] = pd.to_datetime(frame["ordered_at"], utc=True)
    frame["channel"] = ["store" if o != "T2" else "online" for o in frame["order_id"]]
    frame[["total_vnd", "discount_vnd"]] = frame[["total_vnd", "discount_vnd"]].astype("Int64")
    return frame


def _web() -> pd.DataFrame:
    frame = pd.DataFrame(
        WEB, columns=["user_id", "event_name", "session_id", "device_category", "traffic_source", "event_at"]
    )
    frame["event_at"] = pd.to_datetime(frame["event_at"], utc=True)
    frame["session_id"] = frame["session_id"].astype("Int64")
    return frame


def _contacts() -> pd.DataFrame:
    rows = [
        _contact("EDGE", date(1990, 1, 1)),
        _contact("WIN"),
        _contact("REC"),
        _contact("TIE"),
        _contact("NOORD"),
        _contact("EVE", date(2000, 11, 25)),  # birthday tomorrow: still 25
        _contact("BDAY", date(2000, 11, 24)),  # birthday today: 26
        _contact("LEAP", date(2004, 2, 29)),
    ]
    frame = pd.DataFrame(rows)
    for col in ("email_opt_in", "sms_opt_in", "ads_opt_in"):
        frame[col] = frame[col].astype("boolean")
    for col in ("nps_score", "csat_score"):
        frame[col] = frame[col].astype("Int64")
    return frame


def compute(tmp: Path, contacts: pd.DataFrame, orders: pd.DataFrame, web: pd.DataFrame) -> pd.DataFrame:
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone='UTC'")
        for name, frame in (("customers", build_profiles(contacts, orders)), ("orders", orders), ("web_events", web)):
            path = tmp / f"{name}.parquet"
            frame.to_parquet(path, index=False)
            con.read_parquet(str(path)).create_view(name)
        return compute_features(con, WINDOW)
    finally:
        con.close()


@pytest.fixture(scope="module")
def feats(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    frame = compute(tmp_path_factory.mktemp("features"), _contacts(), _orders(), _web())
    return frame.set_index("customer_key", drop=False)


def test_columns_follow_catalog(feats: pd.DataFrame) -> None:
    assert list(feats.columns) == COLUMNS
    assert sorted(feats.index) == ["BDAY", "EDGE", "EVE", "LEAP", "NOORD", "POSONLY", "REC", "TIE", "WIN"]


def test_last_second_of_run_date_counts_and_as_of_is_excluded(feats: pd.DataFrame) -> None:
    row = feats.loc["EDGE"]
    assert row["orders"] == 1
    assert row["monetary_total"] == 100
    assert row["recency_days"] == 0
    assert row["orders_last_30d"] == 1
    assert row["spend_last_30d"] == 100
    assert row["last_purchase_at"] == pd.Timestamp("2026-11-24T16:59:59Z")


def test_thirty_day_window_is_business_days(feats: pd.DataFrame) -> None:
    row = feats.loc["WIN"]
    assert row["orders"] == 2
    assert row["orders_last_30d"] == 1
    assert row["spend_last_30d"] == 10
    assert row["orders_last_90d"] == 2
    assert row["spend_last_90d"] == 30
    assert row["recency_days"] == 29
    assert row["discount_share"] == pytest.approx(0.5)


def test_recency_uses_local_calendar_days_and_monetary(feats: pd.DataFrame) -> None:
    row = feats.loc["REC"]
    assert row["recency_days"] == 3  # UTC date would give 4
    assert row["orders"] == 3
    assert row["monetary_total"] == 900
    assert row["avg_order_value"] == pytest.approx(300.0)
    assert row["orders_last_30d"] == 1
    assert row["orders_last_365d"] == 2
    assert row["spend_last_365d"] == 300
    assert row["first_purchase_at"] == pd.Timestamp("2025-01-01T03:00:00Z")
    assert row["preferred_store"] == "S3"


def test_age_turns_on_the_birthday(feats: pd.DataFrame) -> None:
    assert feats.loc["EVE", "age"] == 25
    assert feats.loc["BDAY", "age"] == 26
    assert feats.loc["EVE", "birth_month"] == 11
    assert feats.loc["LEAP", "age"] == 22
    assert feats.loc["EDGE", "age"] == 36
    assert pd.isna(feats.loc["WIN", "age"])


def test_customer_without_orders(feats: pd.DataFrame) -> None:
    row = feats.loc["NOORD"]
    assert row["orders"] == 0
    assert row["monetary_total"] == 0
    assert pd.isna(row["recency_days"])
    assert pd.isna(row["avg_order_value"])
    assert row["orders_last_30d"] == 0 and row["spend_last_365d"] == 0
    assert pd.isna(row["preferred_store"])


def test_preferred_store_and_channel_tie_break_alphabetically(feats: pd.DataFrame) -> None:
    assert feats.loc["TIE", "preferred_store"] == "S1"
    assert feats.loc["TIE", "preferred_channel"] == "online"


def test_pos_only_buyer_has_features_without_attributes(feats: pd.DataFrame) -> None:
    row = feats.loc["POSONLY"]
    assert row["orders"] == 1 and row["monetary_total"] == 70
    assert pd.isna(row["email"]) and pd.isna(row["full_name"])
    assert not row["email_opt_in"] and not row["ads_opt_in"]


def test_web_features_count_logged_in_events_in_window(feats: pd.DataFrame) -> None:
    row = feats.loc["EDGE"]
    assert row["web_sessions_30d"] == 2
    assert row["page_views_30d"] == 2
    assert row["product_views_30d"] == 1
    assert row["add_to_cart_30d"] == 1
    assert row["device_category"] == "mobile"
    assert row["traffic_source"] == "google"  # latest event before as_of
    assert feats.loc["WIN", "web_sessions_30d"] == 0
    assert pd.isna(feats.loc["WIN", "device_category"])


def test_written_file_reads_back_as_the_computed_frame(tmp_path: Path, feats: pd.DataFrame) -> None:
    """The pipeline's writer (DuckDB straight to Parquet) gives readers the same frame, dtypes included,
    and records the schema ``Lake.write`` would: some columns here are partly empty, some wholly."""
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone='UTC'")
        for name, frame in (
            ("customers", build_profiles(_contacts(), _orders())),
            ("orders", _orders()),
            ("web_events", _web()),
        ):
            path = tmp_path / f"{name}.parquet"
            frame.to_parquet(path, index=False)
            con.read_parquet(str(path)).create_view(name)
        configure_connection(con)  # as build_features: preserve_insertion_order off, so the order is explicit
        written = write_features(con, WINDOW, tmp_path / "features.parquet")
        leftovers = con.sql("SELECT table_name FROM duckdb_tables() WHERE temporary").fetchall()
    finally:
        con.close()
    expected = feats.reset_index(drop=True)
    back = pd.read_parquet(tmp_path / "features.parquet")
    assert back["customer_key"].is_monotonic_increasing
    pd.testing.assert_frame_equal(back, expected)
    assert written.rows == len(expected)
    assert written.buyers == int((expected["orders"] > 0).sum())
    assert written.schema == {c: "null" if expected[c].isna().all() else str(t) for c, t in expected.dtypes.items()}
    assert "null" in written.schema.values() and "Int64" in written.schema.values()
    assert leftovers == []  # stage tables are dropped
