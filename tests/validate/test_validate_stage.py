"""validate_table on hand-made raw partitions with the repository's expectation suites.

GX costs about a second per suite run, so the row-level cases share one mixed partition.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from tasks.lake import Lake
from tasks.pipeline import QualityGateError, gate
from tasks.settings import RunWindow
from tasks.validate.expectations import SuiteError, load_suite
from tasks.validate.stage import validate_table

WINDOW = RunWindow(date(2026, 11, 24), ZoneInfo("Asia/Ho_Chi_Minh"))  # as_of = 2026-11-24T17:00:00Z
DAY = WINDOW.run_date


@pytest.fixture(autouse=True)
def _repo_expectations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUDIENCES_EXPECTATIONS", raising=False)


def _orders(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "order_id": [f"O{i:04d}" for i in range(n)],
            "customer_id": [f"K{i % 7}" for i in range(n)],
            "store_id": ["S1"] * n,
            "channel": ["store"] * n,
            "ordered_at": ["2026-11-20T03:00:00Z"] * n,
            "subtotal_vnd": ["100000"] * n,
            "discount_vnd": ["0"] * n,
            "total_vnd": ["100000"] * n,
            "updated_at": ["2026-11-20T03:00:00Z"] * n,
            "_source": ["pos.sqlite:orders"] * n,
            "_row": list(range(1, n + 1)),
        }
    )


def test_row_level_quarantine_within_tolerance(tmp_path: Path) -> None:
    raw = _orders(200)
    raw.loc[150, "order_id"] = raw.loc[10, "order_id"]  # duplicate: the later copy is the bad one
    raw.loc[20, "total_vnd"] = "-5000"
    raw.loc[30, "ordered_at"] = "2026-11-24T17:00:00Z"  # exactly as_of: the next business day
    raw.loc[40, "ordered_at"] = "2026-11-24T16:59:59.999999Z"  # 1 µs before as_of: still the run date
    raw.loc[50, "total_vnd"] = "12a"
    lake = Lake.local(tmp_path)
    lake.write("raw", "pos", "orders", DAY, raw)

    report = validate_table(lake, "pos", "orders", WINDOW)

    assert report["rows"] == 200
    assert report["clean"] + report["quarantined"] == 200
    assert report["quarantined"] == 4
    assert report["critical_failures"] == []
    assert report["quarantine_reasons"] == {
        "orders.order_id_unique": 1,
        "orders.total_not_negative": 1,
        "orders.ordered_at_not_in_future": 1,
        "cast.total_vnd: not a valid integer": 1,
    }
    q = lake.read("quarantine", "pos", "orders", DAY).set_index("_row")["_reason"].to_dict()
    assert q == {
        151: "orders.order_id_unique",
        21: "orders.total_not_negative",
        31: "orders.ordered_at_not_in_future",
        51: "cast.total_vnd: not a valid integer",
    }
    clean = lake.read("clean", "pos", "orders", DAY)
    assert len(clean) == report["clean"]
    assert (clean["order_id"] == "O0010").sum() == 1
    assert clean.loc[clean["order_id"] == "O0010", "_row"].tolist() == [11]
    assert 41 in set(clean["_row"])
    outcome = gate([report])
    assert outcome["tables"] == 1 and outcome["warnings"] == 0
    html = Path(outcome["report"]).read_text(encoding="utf-8")
    assert "pos.orders" in html and "orders.total_not_negative" in html and "O0010" not in html
    assert json.loads(lake.get_text("validation", "pos", "orders", DAY, "result.json"))["clean"] == 196


def test_too_many_bad_rows_fails_the_gate(tmp_path: Path) -> None:
    raw = _orders(20)
    raw.loc[[3, 7], "total_vnd"] = "-1"  # 10% > the 2% tolerance
    lake = Lake.local(tmp_path)
    lake.write("raw", "pos", "orders", DAY, raw)

    report = validate_table(lake, "pos", "orders", WINDOW)

    assert [f["name"] for f in report["critical_failures"]] == ["orders.total_not_negative"]
    assert report["critical_failures"][0]["failed_rows"] == 2
    assert report["clean"] == 18 and report["quarantined"] == 2
    with pytest.raises(QualityGateError) as exc:
        gate([report])
    assert "pos.orders: orders.total_not_negative" in str(exc.value)


def test_missing_required_column_is_critical(tmp_path: Path) -> None:
    lake = Lake.local(tmp_path)
    lake.write("raw", "pos", "orders", DAY, _orders(5).drop(columns=["ordered_at"]))

    report = validate_table(lake, "pos", "orders", WINDOW)

    assert [f["name"] for f in report["critical_failures"]] == ["schema.required_columns"]
    assert "ordered_at" in report["critical_failures"][0]["error"]
    assert not lake.exists("clean", "pos", "orders", DAY)
    with pytest.raises(QualityGateError, match=r"schema\.required_columns.*ordered_at"):
        gate([report])


def test_malformed_suite_raises_naming_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    suites = tmp_path / "expectations"
    suites.mkdir()
    (suites / "orders.json").write_text('{"expectations": [', encoding="utf-8")
    monkeypatch.setenv("AUDIENCES_EXPECTATIONS", str(suites))
    lake = Lake.local(tmp_path / "lake")
    lake.write("raw", "pos", "orders", DAY, _orders(3))
    with pytest.raises(SuiteError) as exc:
        validate_table(lake, "pos", "orders", WINDOW)
    assert str(suites / "orders.json") in str(exc.value)


def test_expectation_without_severity_names_its_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    suite = {
        "expectations": [
            {
                "type": "expect_table_row_count_to_be_between",
                "kwargs": {"min_value": 1},
                "meta": {"name": "orders.not_empty", "severity": "critical"},
            },
            {
                "type": "expect_column_values_to_not_be_null",
                "kwargs": {"column": "order_id"},
                "meta": {"name": "orders.order_id_present"},
            },
        ]
    }
    (tmp_path / "orders.json").write_text(json.dumps(suite), encoding="utf-8")
    monkeypatch.setenv("AUDIENCES_EXPECTATIONS", str(tmp_path))
    with pytest.raises(SuiteError, match=r"expectations\[1\]\.meta\.severity"):
        load_suite("orders")


def test_repository_suites_load() -> None:
    for table in ("orders", "order_lines", "contacts", "products", "stores", "web_events"):
        suite = load_suite(table)
        assert suite["expectations"], table
