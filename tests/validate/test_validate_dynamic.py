"""Run-dependent checks: references between tables, trailing row counts, freshness, schema drift."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from tasks.lake import Lake
from tasks.settings import RunWindow
from tasks.tables import TableRef
from tasks.validate.conform import conform, timestamps
from tasks.validate.stage import validate_table

TZ = ZoneInfo("Asia/Ho_Chi_Minh")
DAY = date(2026, 11, 24)
REFS = {"orders": TableRef("pos", "orders"), "order_lines": TableRef("pos", "order_lines")}


def orders(n: int, start: int = 0, ordered_at: str = "2026-11-24T03:00:00Z") -> pd.DataFrame:
    ids = [f"O{i:05d}" for i in range(start, start + n)]
    return pd.DataFrame(
        {
            "order_id": ids,
            "customer_id": ["K1"] * n,
            "store_id": ["S1"] * n,
            "channel": ["store"] * n,
            "ordered_at": [ordered_at] * n,
            "subtotal_vnd": ["100000"] * n,
            "discount_vnd": ["0"] * n,
            "total_vnd": ["100000"] * n,
            "updated_at": [ordered_at] * n,
            "_source": ["pos.sqlite:orders"] * n,
            "_row": list(range(1, n + 1)),
        }
    )


def lines(order_ids: list[str]) -> pd.DataFrame:
    n = len(order_ids)
    return pd.DataFrame(
        {
            "order_id": order_ids,
            "line_no": [1] * n,
            "product_id": ["P1"] * n,
            "quantity": [1] * n,
            "unit_price_vnd": [100000] * n,
            "discount_vnd": [0] * n,
            "line_total_vnd": [100000] * n,
            "_source": ["pos.sqlite:order_lines"] * n,
            "_row": list(range(1, n + 1)),
        }
    )


def outcome(report: dict, name: str) -> dict:
    return next(e for e in report["expectations"] if e["name"] == name)


def test_lines_pointing_at_unknown_orders_are_quarantined(tmp_path: Path) -> None:
    lake = Lake.local(tmp_path)
    window = RunWindow(DAY, TZ)
    lake.write("raw", "pos", "orders", DAY, orders(100))
    validate_table(lake, "pos", "orders", window, REFS)
    ids = [f"O{i:05d}" for i in range(100)] + ["O99999"]  # one line of an order nobody sent
    lake.write("raw", "pos", "order_lines", DAY, lines(ids))
    report = validate_table(lake, "pos", "order_lines", window, REFS)
    quarantined = lake.read("quarantine", "pos", "order_lines", DAY)
    assert quarantined["order_id"].tolist() == ["O99999"]
    assert quarantined["_reason"].tolist() == ["order_lines.order_exists"]
    assert report["clean"] == 100 and report["critical_failures"] == []


def test_row_count_far_below_the_trailing_average_is_a_warning(tmp_path: Path) -> None:
    lake = Lake.local(tmp_path)
    for back in range(1, 8):
        day = DAY - timedelta(days=back)
        lake.write("raw", "pos", "orders", day, orders(100, ordered_at=f"{day}T03:00:00Z"), mode="increment")
    lake.write("raw", "pos", "orders", DAY, orders(10), mode="increment")
    report = validate_table(lake, "pos", "orders", RunWindow(DAY, TZ), REFS)
    check = outcome(report, "orders.row_count_near_trailing_average")
    assert check["success"] is False and check["severity"] == "warning"
    assert report["critical_failures"] == []
    assert any(w["name"] == "orders.row_count_near_trailing_average" for w in report["warnings"])


def test_normal_row_count_and_fresh_data_pass(tmp_path: Path) -> None:
    lake = Lake.local(tmp_path)
    for back in range(1, 4):
        day = DAY - timedelta(days=back)
        lake.write("raw", "pos", "orders", day, orders(100, ordered_at=f"{day}T03:00:00Z"), mode="increment")
    lake.write("raw", "pos", "orders", DAY, orders(90), mode="increment")
    report = validate_table(lake, "pos", "orders", RunWindow(DAY, TZ), REFS)
    assert outcome(report, "orders.row_count_near_trailing_average")["success"] is True
    assert outcome(report, "orders.fresh")["success"] is True


def test_stale_orders_fail_freshness(tmp_path: Path) -> None:
    lake = Lake.local(tmp_path)
    lake.write("raw", "pos", "orders", DAY, orders(50, ordered_at="2026-11-10T03:00:00Z"))
    report = validate_table(lake, "pos", "orders", RunWindow(DAY, TZ), REFS)
    assert outcome(report, "orders.fresh")["success"] is False


def test_retyped_source_column_is_reported_by_name(tmp_path: Path) -> None:
    lake = Lake.local(tmp_path)
    before = DAY - timedelta(days=1)
    typed = orders(20, ordered_at=f"{before}T03:00:00Z")
    typed["total_vnd"] = typed["total_vnd"].astype("int64")
    lake.write("raw", "pos", "orders", before, typed)
    lake.write("raw", "pos", "orders", DAY, orders(20))  # total_vnd now arrives as text
    report = validate_table(lake, "pos", "orders", RunWindow(DAY, TZ), REFS)
    drift = [w["error"] for w in report["warnings"] if w["name"] == "schema.drift"]
    assert len(drift) == 1 and "'total_vnd' was int64" in drift[0]


@pytest.mark.parametrize(
    ("raw", "utc"),
    [
        ("2026-11-24T23:30:00Z", "2026-11-24T23:30:00+00:00"),
        ("2026-11-24T23:30:00+07:00", "2026-11-24T16:30:00+00:00"),
        ("2026-11-24 23:30:00", "2026-11-24T16:30:00+00:00"),  # no zone: Vietnamese wall-clock time
        ("2026-11-24T23:30", "2026-11-24T16:30:00+00:00"),
    ],
)
def test_timestamps_without_zone_are_read_in_the_business_zone(raw: str, utc: str) -> None:
    got = timestamps(pd.Series([raw]), "Asia/Ho_Chi_Minh").iloc[0]
    assert got.isoformat() == utc


def test_naive_timestamps_are_counted_in_a_note() -> None:
    from tasks.tables import TABLES

    frame = orders(3)
    frame.loc[0, "ordered_at"] = "2026-11-24 08:00:00"
    result = conform(frame, TABLES["orders"], naive_zone="Asia/Ho_Chi_Minh")
    assert result.notes == ["ordered_at: 1 timestamp(s) without a time zone read as Asia/Ho_Chi_Minh"]
    assert result.frame.loc[0, "ordered_at"].isoformat() == "2026-11-24T01:00:00+00:00"


def test_a_column_the_source_stops_sending_is_reported(tmp_path: Path) -> None:
    lake = Lake.local(tmp_path)
    before = DAY - timedelta(days=1)
    lake.write("raw", "pos", "orders", before, orders(20, ordered_at=f"{before}T03:00:00Z").assign(voucher_code="X"))
    lake.write("raw", "pos", "orders", DAY, orders(20))
    report = validate_table(lake, "pos", "orders", RunWindow(DAY, TZ), REFS)
    drift = [w["error"] for w in report["warnings"] if w["name"] == "schema.drift"]
    assert drift == [f"column 'voucher_code' is no longer sent (it was on {before})"]
