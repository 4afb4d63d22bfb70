"""Rules compile to engine expressions with exact, half-open business-day windows."""

from __future__ import annotations

from datetime import date
from zoneinfo import ZoneInfo

import ibis
import pandas as pd
import pytest

from tasks.features.catalog import COLUMNS
from tasks.segments.compile import Compiler
from tasks.segments.rules import Segment
from tasks.settings import RunWindow

WINDOW = RunWindow(date(2026, 11, 24), ZoneInfo("Asia/Ho_Chi_Minh"))


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> tuple[ibis.BaseBackend, ibis.Table, ibis.Table]:
    rows = [
        {
            "customer_key": "A",
            "orders": 5,
            "monetary_total": 2_500_000,
            "province": "Hồ Chí Minh",
            "recency_days": 3,
            "email": "a@example.com",
            "birthday": date(1990, 2, 28),
            "email_opt_in": True,
        },
        {
            "customer_key": "B",
            "orders": 1,
            "monetary_total": 999_999,
            "province": "Hà Nội",
            "recency_days": 120,
            "email": "",
            "birthday": date(1985, 11, 2),
            "email_opt_in": False,
        },
        {
            "customer_key": "C",
            "orders": 0,
            "monetary_total": 0,
            "province": None,
            "recency_days": None,
            "email": None,
            "birthday": None,
            "email_opt_in": False,
        },
        {
            "customer_key": "D",
            "orders": 3,
            "monetary_total": 1_000_000,
            "province": "Đà Nẵng",
            "recency_days": 30,
            "email": "d@example.vn",
            "birthday": date(2000, 2, 29),
            "email_opt_in": True,
        },
    ]
    features = pd.DataFrame(rows).reindex(columns=COLUMNS)
    for col in ("orders", "monetary_total", "recency_days"):
        features[col] = features[col].astype("Int64")
    utc = "UTC"
    purchases = pd.DataFrame(
        {
            "customer_key": ["A", "A", "B", "D", "D"],
            "order_id": ["o1", "o2", "o3", "o4", "o5"],
            # A: 23:59:59 local on the run date (in), B: exactly 30 local days back at 00:00 (out of 30d),
            # D: first instant of the 30-day window (in) and one order at as_of (out).
            "ordered_at": pd.to_datetime(
                [
                    "2026-11-24T16:59:59Z",
                    "2026-11-24T10:00:00Z",
                    "2026-10-24T17:00:00Z",
                    "2026-10-25T17:00:00Z",
                    "2026-11-24T17:00:00Z",
                ],
                utc=True,
            ).as_unit("us"),
            "product_id": ["P1", "P2", "P1", "P1", "P1"],
            "category": ["backpack", "wallet", "backpack", "Backpack", "backpack"],
            "line_total_vnd": [500_000, 200_000, 450_000, 450_000, 450_000],
        }
    )
    assert str(purchases["ordered_at"].dt.tz) == utc
    # The pipeline reads the lake's Parquet; so does this test (ibis 12's create_table from in-memory
    # frames emits SQL DuckDB 2.0 rejects).
    folder = tmp_path_factory.mktemp("rules")
    features.to_parquet(folder / "features.parquet")
    purchases.to_parquet(folder / "purchases.parquet")
    con = ibis.duckdb.connect()
    con.raw_sql("SET TimeZone = 'UTC'")
    return con, con.read_parquet(folder / "features.parquet"), con.read_parquet(folder / "purchases.parquet")


def members(tables: tuple[ibis.BaseBackend, ibis.Table, ibis.Table], rule: dict) -> set[str]:
    _, f, p = tables
    seg = Segment.model_validate({"name": "s", "title": "S", "rule": rule})
    expr = Compiler(f, p, WINDOW).compile(seg.rule).fill_null(False)
    return set(f.filter(expr).customer_key.to_pandas())


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({"field": "orders", "op": "gte", "value": 3}, {"A", "D"}),
        ({"field": "orders", "op": "gte", "value": 5}, {"A"}),
        ({"field": "monetary_total", "op": "gte", "value": 1_000_000}, {"A", "D"}),
        ({"field": "monetary_total", "op": "lt", "value": 1_000_000}, {"B", "C"}),
        ({"field": "recency_days", "op": "between", "value": [3, 30]}, {"A", "D"}),
        ({"field": "orders", "op": "ne", "value": 0}, {"A", "B", "D"}),
        ({"field": "province", "op": "in", "value": ["TP.HCM", "Ha Noi"]}, {"A", "B"}),
        ({"field": "province", "op": "not_in", "value": ["Sài Gòn"]}, {"B", "D"}),
        ({"field": "email", "op": "is_set"}, {"A", "D"}),
        ({"field": "email", "op": "is_not_set"}, {"B", "C"}),
        ({"field": "email", "op": "contains", "value": "EXAMPLE.VN"}, {"D"}),
        ({"field": "email_opt_in", "op": "eq", "value": True}, {"A", "D"}),
        ({"field": "birthday", "op": "lt", "value": date(1990, 1, 1)}, {"B"}),
        ({"not": {"field": "orders", "op": "gte", "value": 3}}, {"B", "C"}),
        ({"not": {"field": "province", "op": "in", "value": ["Hồ Chí Minh"]}}, {"B", "C", "D"}),
        (
            {"any": [{"field": "orders", "op": "eq", "value": 0}, {"field": "recency_days", "op": "gt", "value": 90}]},
            {"B", "C"},
        ),
        (
            {
                "all": [
                    {"field": "orders", "op": "gte", "value": 1},
                    {"field": "email_opt_in", "op": "eq", "value": False},
                ]
            },
            {"B"},
        ),
        ({"purchased": {"category": "backpack", "within": {"last_days": 30}}}, {"A", "D"}),
        ({"purchased": {"category": "backpack", "within": {"last_days": 31}}}, {"A", "B", "D"}),
        ({"purchased": {"category": "backpack", "within": {"last_days": 1}}}, {"A"}),
        ({"purchased": {"category": ["wallet"]}}, {"A"}),
        ({"purchased": {"product": ["P1"], "min_orders": 2}}, set()),
        ({"purchased": {"category": "backpack"}}, {"A", "B", "D"}),
    ],
)
def test_rule_membership(
    tables: tuple[ibis.BaseBackend, ibis.Table, ibis.Table], rule: dict, expected: set[str]
) -> None:
    assert members(tables, rule) == expected


def test_user_text_never_reaches_sql_as_code(tables: tuple[ibis.BaseBackend, ibis.Table, ibis.Table]) -> None:
    """A hostile value is a literal: it matches nothing and drops nothing."""
    hostile = "x'); DROP TABLE features; --"
    assert members(tables, {"field": "province", "op": "in", "value": [hostile]}) == set()
    assert members(tables, {"field": "orders", "op": "gte", "value": 0}) == {"A", "B", "C", "D"}
