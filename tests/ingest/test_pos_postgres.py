"""Incremental POS extraction against a real PostgreSQL 15: snapshot, increment, late rows, backfill.

Each test creates its own database and drops it afterwards. A server that cannot be reached fails
the tests with the reason: an incremental load that was never exercised must not look green.
"""

from __future__ import annotations

import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
import sqlalchemy as sa

from tasks import pipeline
from tasks.config.models import AppConfig, SourceConfig
from tasks.ingest.base import ExtractContext, build_source
from tasks.lake import Lake, open_lake
from tasks.settings import RunWindow
from tasks.state.store import StateStore

TZ = ZoneInfo("Asia/Ho_Chi_Minh")
DAY1, DAY2 = "2026-11-24", "2026-11-25"
LOOKBACK = timedelta(hours=6)

SOURCES_YAML = """\
sources:
  pos:
    kind: sql_database
    options:
      url_env: POS_TEST_DB_URL
      tables: {orders: orders, order_lines: order_lines}
      incremental:
        orders: {column: updated_at, lookback_hours: 6}
        order_lines: {column: updated_at, lookback_hours: 6}
"""

SCHEMA = [
    """CREATE TABLE orders (
        id serial PRIMARY KEY, order_id text, customer_id text, store_id text, channel text,
        ordered_at timestamptz, subtotal_vnd bigint, discount_vnd bigint, total_vnd bigint, updated_at timestamptz)""",
    """CREATE TABLE order_lines (
        id serial PRIMARY KEY, order_id text, line_no integer, product_id text, quantity integer,
        unit_price_vnd bigint, discount_vnd bigint, line_total_vnd bigint, updated_at timestamptz)""",
]


def _local(day: str, hh: int, mm: int = 0) -> datetime:
    return datetime.fromisoformat(day).replace(hour=hh, minute=mm, tzinfo=TZ)


# Day 1: N orders updated during the Vietnamese day 2026-11-24; the last one sets the watermark.
DAY1_TIMES = [(8, 0), (10, 0), (12, 0), (14, 0), (16, 0), (18, 0), (19, 0), (20, 30)]
DAY1_ORDERS = {f"O{i}": _local(DAY1, hh, mm) for i, (hh, mm) in enumerate(DAY1_TIMES, start=1)}
DAY1_WATERMARK = _local(DAY1, 20, 30)
NEW_DAY2 = {"N1": _local(DAY2, 9), "N2": _local(DAY2, 10), "N3": _local(DAY2, 11)}
UPDATED_DAY2 = {"O1": _local(DAY2, 12), "O7": _local(DAY2, 13)}  # O1 outside the lookback, O7 inside it
LATE = {"L1": DAY1_WATERMARK - timedelta(hours=2)}  # committed late: before the day-1 watermark


@pytest.fixture
def pos_db(fresh_database: Callable[[str], AbstractContextManager[str]]) -> Iterator[sa.Engine]:
    """A fresh database with the POS tables; terminated and dropped even when the test fails."""
    with fresh_database("audiences") as url:
        engine = sa.create_engine(url)
        try:
            with engine.begin() as conn:
                for ddl in SCHEMA:
                    conn.execute(sa.text(ddl))
            yield engine
        finally:
            engine.dispose()


@pytest.fixture
def pos_home(home: Path, pos_db: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> Path:
    (home / "config" / "sources.yaml").write_text(SOURCES_YAML, encoding="utf-8")
    monkeypatch.setenv("POS_TEST_DB_URL", pos_db.url.render_as_string(hide_password=False))
    monkeypatch.delenv("AUDIENCES_STATE_DB_URL", raising=False)  # state in this test's home
    return home


def _insert_orders(engine: sa.Engine, orders: dict[str, datetime]) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO orders (order_id, customer_id, store_id, channel, ordered_at, subtotal_vnd, discount_vnd,"
                " total_vnd, updated_at) VALUES (:o, 'C1', 'S1', 'store', :t, 100000, 0, 100000, :t)"
            ),
            [{"o": o, "t": t} for o, t in orders.items()],
        )
        conn.execute(
            sa.text(
                "INSERT INTO order_lines (order_id, line_no, product_id, quantity, unit_price_vnd, discount_vnd,"
                " line_total_vnd, updated_at) VALUES (:o, 1, 'P1', 1, 100000, 0, 100000, :t)"
            ),
            [{"o": o, "t": t} for o, t in orders.items()],
        )


def _update_orders(engine: sa.Engine, orders: dict[str, datetime]) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE orders SET total_vnd = 90000, discount_vnd = 10000, updated_at = :t WHERE order_id = :o"),
            [{"o": o, "t": t} for o, t in orders.items()],
        )


def _lake() -> Lake:
    return open_lake(AppConfig().pipeline.lake_root)


def _raw(table: str, day: str) -> pd.DataFrame:
    return _lake().read("raw", "pos", table, date.fromisoformat(day))


def _keys(frame: pd.DataFrame) -> set[tuple[str, datetime]]:
    return {(o, pd.Timestamp(t).to_pydatetime()) for o, t in zip(frame["order_id"], frame["updated_at"], strict=True)}


def _day2(engine: sa.Engine) -> None:
    _insert_orders(engine, NEW_DAY2)
    _update_orders(engine, UPDATED_DAY2)
    _insert_orders(engine, LATE)


def _watermark() -> str | None:
    return StateStore().get_watermark("pos", "orders")


def test_snapshot_then_increment_with_late_row_then_idempotent_rerun(pos_home: Path, pos_db: sa.Engine) -> None:
    _insert_orders(pos_db, DAY1_ORDERS)
    first = pipeline.extract("pos", "orders", DAY1)
    assert (first["mode"], first["rows"]) == ("snapshot", len(DAY1_ORDERS))
    manifest = _lake().manifest("raw", "pos", "orders", date(2026, 11, 24))
    assert manifest is not None and manifest["mode"] == "snapshot"
    assert len(_raw("orders", DAY1)) == len(DAY1_ORDERS)
    assert _watermark() == DAY1_WATERMARK.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    _day2(pos_db)
    # The lookback re-reads unchanged day-1 rows; only the pipeline's dedupe keeps them out of the lake.
    cfg = AppConfig()
    src = build_source("pos", cfg.sources.sources["pos"], cfg.directory / "sources.yaml")
    reread = src.extract("orders", ExtractContext(RunWindow(date(2026, 11, 25), TZ), StateStore())).frame
    assert {"O5", "O6", "O8"} <= set(reread["order_id"])  # updated within 6 h before the 20:30 watermark
    assert "O4" not in set(reread["order_id"])  # 14:00: before the lookback bound (14:30)

    expected = {(o, t.astimezone(UTC)) for o, t in {**NEW_DAY2, **UPDATED_DAY2, **LATE}.items()}
    second = pipeline.extract("pos", "orders", DAY2)
    assert (second["mode"], second["rows"]) == ("increment", 6)
    day2 = _raw("orders", DAY2)
    assert _keys(day2) == expected
    assert day2.loc[day2["order_id"].isin(list(UPDATED_DAY2)), "total_vnd"].tolist() == [90000, 90000]
    assert _watermark() == "2026-11-25T06:00:00.000000Z"

    again = pipeline.extract("pos", "orders", DAY2)
    assert (again["mode"], again["rows"]) == ("increment", 6)
    assert _keys(_raw("orders", DAY2)) == expected
    assert _watermark() == "2026-11-25T06:00:00.000000Z"


def test_order_lines_increment_uses_the_composite_key(pos_home: Path, pos_db: sa.Engine) -> None:
    _insert_orders(pos_db, DAY1_ORDERS)
    assert pipeline.extract("pos", "order_lines", DAY1)["rows"] == len(DAY1_ORDERS)
    _day2(pos_db)
    with pos_db.begin() as conn:
        conn.execute(
            sa.text("UPDATE order_lines SET quantity = 2, updated_at = :t WHERE order_id = 'O8'"),
            {"t": _local(DAY2, 14)},
        )
    result = pipeline.extract("pos", "order_lines", DAY2)
    assert result["mode"] == "increment"
    lines = _raw("order_lines", DAY2)
    assert sorted(lines["order_id"]) == ["L1", "N1", "N2", "N3", "O8"]
    assert lines.loc[lines["order_id"] == "O8", "quantity"].tolist() == [2]


def test_rerunning_the_earliest_date_reloads_its_snapshot_and_keeps_the_watermark(
    pos_home: Path, pos_db: sa.Engine
) -> None:
    """The earliest partition is the base of the table's state: re-running it must read the table
    whole as of that date (not just an increment), or rows older than the lookback would vanish."""
    before_day1 = {
        "P1": _local("2026-11-22", 12),  # outside the backfill's lookback
        "P2": _local("2026-11-23", 20),  # 4 h before day 1 starts: inside the 6-hour lookback
    }
    _insert_orders(pos_db, {**before_day1, **DAY1_ORDERS})
    assert pipeline.extract("pos", "orders", DAY1)["rows"] == len(DAY1_ORDERS) + 2
    _day2(pos_db)
    pipeline.extract("pos", "orders", DAY2)
    watermark = _watermark()
    assert watermark == "2026-11-25T06:00:00.000000Z"

    window = RunWindow(date(2026, 11, 24), TZ)
    current = {**before_day1, **DAY1_ORDERS, **NEW_DAY2, **UPDATED_DAY2, **LATE}
    expected = {(o, t.astimezone(UTC)) for o, t in current.items() if t < window.as_of}
    assert {"P1", "P2", "L1"} <= {o for o, _ in expected}
    assert not set(NEW_DAY2) & {o for o, _ in expected}, "rows changed after the date are not part of it"

    backfill = pipeline.extract("pos", "orders", DAY1)
    assert backfill["mode"] == "snapshot"
    assert _keys(_raw("orders", DAY1)) == expected
    assert _watermark() == watermark  # a backfill never rewinds incremental loads


def test_connection_error_does_not_reveal_the_password(
    pg_admin: sa.Engine, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "Sup3r-S3cret-pw"
    missing = f"audiences_missing_{uuid.uuid4().hex}"
    url = pg_admin.url.set(password=secret, database=missing)
    monkeypatch.setenv("POS_TEST_DB_URL", url.render_as_string(hide_password=False))
    src = build_source(
        "pos",
        SourceConfig(kind="sql_database", options={"url_env": "POS_TEST_DB_URL", "tables": {"orders": "orders"}}),
        home / "config" / "sources.yaml",
    )
    ctx = ExtractContext(RunWindow(date(2026, 11, 24), TZ), StateStore(f"sqlite:///{home / 'state.db'}"))
    with pytest.raises(RuntimeError) as exc:
        src.extract("orders", ctx)
    message = str(exc.value)
    assert "does not exist" in message
    assert missing in message and "***" in message
    assert secret not in message
    assert secret not in "".join(traceback.format_exception(exc.value))  # nor in a logged traceback
