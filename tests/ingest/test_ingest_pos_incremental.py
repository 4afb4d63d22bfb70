"""Incremental POS extraction on SQLite: bounds, modes, watermark timing, renames and option errors."""

from __future__ import annotations

import sqlite3
from datetime import date
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tasks.config.loader import ConfigError
from tasks.config.models import SourceConfig
from tasks.ingest.base import Extract, ExtractContext, Source, build_source
from tasks.settings import RunWindow
from tasks.state.store import StateStore

TZ = ZoneInfo("Asia/Ho_Chi_Minh")
DAY1 = RunWindow(date(2026, 11, 24), TZ)  # as_of = 2026-11-24T17:00:00Z
DAY2 = RunWindow(date(2026, 11, 25), TZ)  # day_start = 2026-11-24T17:00:00Z, as_of = 2026-11-25T17:00:00Z
CONFIG_FILE = Path("config/sources.yaml")

# (id, order_id, updated_at) inserted out of id order: extraction still orders by id.
ROWS = [
    (5, "O5", "2026-11-25T02:00:00Z"),  # after day 1's as_of
    (1, "O1", "2026-11-20T03:00:00Z"),  # long before: outside any lookback
    (2, "O2", "2026-11-24T10:00:00Z"),
    (3, "O3", "2026-11-24T16:59:59.5Z"),  # latest before day 1's as_of, with a fraction
    (4, "O4", "2026-11-24T17:00:00Z"),  # exactly day 1's as_of: belongs to day 2
    (6, "O6", None),  # no timestamp: kept by snapshots, never silently lost
    (7, "O7", "2026-11-25T17:00:00Z"),  # exactly day 2's as_of: belongs to day 3
    (8, "O8", "2026-11-24T10:59:59Z"),  # same second as day 2's 6-hour lookback bound (10:59:59.5Z)
    (9, "O9", "2026-11-24T11:00:00Z"),
]


@pytest.fixture
def db(home: Path) -> Path:
    path = home / "data" / "shop.sqlite"
    path.parent.mkdir()
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, order_id TEXT, total_vnd INTEGER, updated_at TEXT)")
    con.executemany("INSERT INTO orders VALUES (?, ?, 100, ?)", ROWS)
    con.commit()
    con.close()
    return path


@pytest.fixture
def state(home: Path) -> StateStore:
    return StateStore(f"sqlite:///{home / 'state.db'}")


def _source(db: Path, **options: Any) -> Source:
    opts: dict[str, Any] = {"url": f"sqlite:///{db}", "tables": {"orders": "orders"}}
    opts.update(options)
    return build_source("pos", SourceConfig(kind="sql_database", options=opts), CONFIG_FILE)


def _commit(result: Extract) -> None:
    for callback in result.on_commit:
        callback()


def test_first_load_is_snapshot_before_as_of_and_watermark_waits_for_commit(db: Path, state: StateStore) -> None:
    src = _source(db, incremental={"orders": {}})
    result = src.extract("orders", ExtractContext(DAY1, state))
    assert result.mode == "snapshot"
    assert result.frame["order_id"].tolist() == ["O1", "O2", "O3", "O6", "O8", "O9"]
    assert result.frame["_row"].tolist() == [1, 2, 3, 6, 8, 9]
    assert result.dedupe_on == ("order_id", "updated_at")
    assert state.get_watermark("pos", "orders") is None  # nothing advances before the partition is written
    _commit(result)
    assert state.get_watermark("pos", "orders") == "2026-11-24T16:59:59.500000Z"


def test_next_day_is_increment_bounded_by_watermark_minus_lookback(db: Path, state: StateStore) -> None:
    src = _source(db, incremental={"orders": {"lookback_hours": 6}})
    _commit(src.extract("orders", ExtractContext(DAY1, state)))
    result = src.extract("orders", ExtractContext(DAY2, state))
    # Lower bound: min(16:59:59.5Z, day start 17:00Z) - 6 h = 10:59:59.5Z; text bounds are truncated to the
    # second (only ever widening the read), so O8 is in and O2 (10:00Z) is out.
    assert result.mode == "increment"
    assert result.frame["order_id"].tolist() == ["O3", "O4", "O5", "O8", "O9"]
    assert "O7" not in set(result.frame["order_id"])  # at day 2's as_of: a later run's row
    assert result.dedupe_on == ("order_id", "updated_at")
    assert any("increment" in note for note in result.notes)
    _commit(result)
    assert state.get_watermark("pos", "orders") == "2026-11-25T02:00:00.000000Z"


def test_backfill_reads_its_own_day_and_keeps_the_watermark(db: Path, state: StateStore) -> None:
    src = _source(db, incremental={"orders": {"lookback_hours": 6}})
    _commit(src.extract("orders", ExtractContext(DAY1, state)))
    _commit(src.extract("orders", ExtractContext(DAY2, state)))
    result = src.extract("orders", ExtractContext(DAY1, state))
    # [day_start(day 1) - 6 h, as_of(day 1)) = [2026-11-23T11:00Z, 2026-11-24T17:00Z)
    assert result.mode == "increment"
    assert result.frame["order_id"].tolist() == ["O2", "O3", "O8", "O9"]
    _commit(result)
    assert state.get_watermark("pos", "orders") == "2026-11-25T02:00:00.000000Z"


def test_full_refresh_reads_a_snapshot_despite_the_watermark(db: Path, state: StateStore) -> None:
    _commit(_source(db, incremental={"orders": {}}).extract("orders", ExtractContext(DAY1, state)))
    result = _source(db, incremental={"orders": {}}, full_refresh=True).extract("orders", ExtractContext(DAY2, state))
    assert result.mode == "snapshot"
    assert result.frame["order_id"].tolist() == ["O1", "O2", "O3", "O4", "O5", "O6", "O8", "O9"]
    assert any("full_refresh" in note for note in result.notes)


def test_tables_not_listed_stay_full_unbounded_snapshots(db: Path, state: StateStore) -> None:
    result = _source(db).extract("orders", ExtractContext(DAY1, state))
    assert result.mode == "snapshot"
    assert result.on_commit == []
    assert len(result.frame) == len(ROWS)  # including rows after as_of: the behaviour before this option


def test_column_renames_map_source_names_and_default_key(home: Path, state: StateStore) -> None:
    path = home / "legacy.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE don_hang (id INTEGER PRIMARY KEY, ma_don TEXT, tong INTEGER, cap_nhat TEXT)")
    con.executemany(
        "INSERT INTO don_hang VALUES (?, ?, ?, ?)",
        [(1, "A1", 10, "2026-11-24T01:00:00Z"), (2, "A2", 20, "2026-11-25T01:00:00Z")],
    )
    con.commit()
    con.close()
    src = build_source(
        "legacy",
        SourceConfig(
            kind="sql_database",
            options={
                "url": f"sqlite:///{path}",
                "tables": {"orders": "don_hang"},
                "columns": {"orders": {"ma_don": "order_id", "tong": "total_vnd", "cap_nhat": "updated_at"}},
                "incremental": {"orders": {"column": "cap_nhat"}},
            },
        ),
        CONFIG_FILE,
    )
    result = src.extract("orders", ExtractContext(DAY1, state))
    assert list(result.frame.columns) == ["order_id", "total_vnd", "updated_at", "_source", "_row"]
    assert result.frame["order_id"].tolist() == ["A1"]
    assert result.dedupe_on == ("order_id", "updated_at")  # canonical key order_id found as ma_don
    assert set(result.frame["_source"]) == {"legacy.sqlite:don_hang"}


def test_explicit_primary_key_is_renamed_for_dedupe(db: Path, state: StateStore) -> None:
    src = _source(
        db,
        columns={"orders": {"total_vnd": "amount"}},
        incremental={"orders": {"primary_key": ["order_id", "total_vnd"]}},
    )
    assert src.extract("orders", ExtractContext(DAY1, state)).dedupe_on == ("order_id", "amount", "updated_at")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"incremental": {"ordrs": {}}}, "sources.pos.options.incremental: Value error, 'ordrs' is not one of"),
        ({"incremental": {"orders": {"colum": "x"}}}, "sources.pos.options.incremental.orders.colum"),
        ({"incremental": {"orders": {"column": "updated_at; --"}}}, "not a plain identifier"),
        ({"incremental": {"orders": {"lookback_hours": -1}}}, "sources.pos.options.incremental.orders.lookback_hours"),
        ({"incremental": {"orders": {"primary_key": []}}}, "sources.pos.options.incremental.orders.primary_key"),
        ({"columns": {"orders": {"total vnd": "total_vnd"}}}, "sources.pos.options.columns"),
        ({"columns": {"ordrs": {"a": "b"}}}, "'ordrs' is not one of"),
        ({"columns": {"orders": {"id": "order_key"}}}, "row id column"),
        ({"columns": {"orders": {"a": "x", "b": "x"}}}, "several source columns renamed to x"),
        ({"full_refresh": "sometimes"}, "sources.pos.options.full_refresh"),
    ],
)
def test_bad_options_are_config_errors_naming_the_key(options: dict[str, Any], expected: str) -> None:
    opts: dict[str, Any] = {"url": "sqlite:///x.sqlite", "tables": {"orders": "orders"}, **options}
    with pytest.raises(ConfigError) as exc:
        build_source("pos", SourceConfig(kind="sql_database", options=opts), CONFIG_FILE)
    assert expected in str(exc.value)


def test_table_without_canonical_key_needs_primary_key() -> None:
    opts = {"url": "sqlite:///x.sqlite", "tables": {"web_events": "events"}, "incremental": {"web_events": {}}}
    with pytest.raises(ConfigError, match=r"sources\.pos\.options\.incremental: .*set primary_key"):
        build_source("pos", SourceConfig(kind="sql_database", options=opts), CONFIG_FILE)


def test_incremental_column_missing_from_table_is_named_at_extract(db: Path, state: StateStore) -> None:
    src = _source(db, incremental={"orders": {"column": "changed_at"}})
    with pytest.raises(ValueError, match=r"sources\.pos\.options\.incremental\.orders: column\(s\) changed_at") as exc:
        src.extract("orders", ExtractContext(DAY1, state))
    assert "updated_at" in str(exc.value)  # lists the columns that do exist


def test_renamed_column_missing_from_table_is_named_at_extract(db: Path, state: StateStore) -> None:
    src = _source(db, columns={"orders": {"totl": "total_vnd"}})
    with pytest.raises(ValueError, match=r"sources\.pos\.options\.columns\.orders: totl not in shop\.sqlite:orders"):
        src.extract("orders", ExtractContext(DAY1, state))


def test_rename_onto_existing_column_is_refused(db: Path, state: StateStore) -> None:
    src = _source(db, columns={"orders": {"total_vnd": "order_id"}})
    with pytest.raises(ValueError, match=r"sources\.pos\.options\.columns\.orders renames onto existing.*order_id"):
        src.extract("orders", ExtractContext(DAY1, state))
