"""POS extraction over SQLAlchemy, and the option checks every source shares through build_source."""

from __future__ import annotations

import sqlite3
from datetime import date
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tasks.config.loader import ConfigError
from tasks.config.models import SourceConfig
from tasks.ingest.base import ExtractContext, build_source
from tasks.settings import RunWindow
from tasks.state.store import StateStore

WINDOW = RunWindow(date(2026, 11, 24), ZoneInfo("Asia/Ho_Chi_Minh"))
CTX = ExtractContext(WINDOW, StateStore("sqlite://"))
CONFIG_FILE = Path("config/sources.yaml")


def _make_db(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, order_id TEXT, total_vnd INTEGER)")
    # Inserted out of id order: extraction must order by the id column.
    con.executemany("INSERT INTO orders VALUES (?, ?, ?)", [(30, "O3", 300), (10, "O1", 100), (20, "O2", 200)])
    con.commit()
    con.close()


@pytest.fixture
def db(home: Path) -> Path:
    path = home / "data" / "shop.sqlite"
    path.parent.mkdir()
    _make_db(path)
    return path


def test_extract_tags_lineage_and_orders_by_id(db: Path) -> None:
    src = build_source(
        "pos",
        SourceConfig(kind="sql_database", options={"url": f"sqlite:///{db}", "tables": {"orders": "orders"}}),
        CONFIG_FILE,
    )
    assert src.tables() == ["orders"]
    frame = src.extract("orders", CTX).frame
    assert frame["order_id"].tolist() == ["O1", "O2", "O3"]
    assert frame["_row"].tolist() == [10, 20, 30]
    assert set(frame["_source"]) == {"shop.sqlite:orders"}
    assert "id" not in frame.columns


def test_relative_sqlite_path_resolves_against_home(db: Path) -> None:
    src = build_source(
        "pos",
        SourceConfig(
            kind="sql_database", options={"url": "sqlite:///data/shop.sqlite", "tables": {"orders": "orders"}}
        ),
        CONFIG_FILE,
    )
    assert len(src.extract("orders", CTX).frame) == 3


def test_url_env_reads_url_from_environment(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_POS_URL", f"sqlite:///{db}")
    src = build_source(
        "pos",
        SourceConfig(kind="sql_database", options={"url_env": "TEST_POS_URL", "tables": {"orders": "orders"}}),
        CONFIG_FILE,
    )
    assert src.extract("orders", CTX).frame["order_id"].tolist() == ["O1", "O2", "O3"]


def test_missing_url_env_variable_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_POS_URL_UNSET", raising=False)
    src = build_source("pos", SourceConfig(kind="sql_database", options={"url_env": "TEST_POS_URL_UNSET"}), CONFIG_FILE)
    with pytest.raises(RuntimeError, match=r"TEST_POS_URL_UNSET.*not set"):
        src.extract("orders", CTX)


def test_both_url_and_url_env_is_config_error() -> None:
    with pytest.raises(ConfigError) as exc:
        build_source(
            "pos", SourceConfig(kind="sql_database", options={"url": "sqlite:///x.sqlite", "url_env": "X"}), CONFIG_FILE
        )
    assert "sources.pos.options" in str(exc.value)
    assert "exactly one of 'url' or 'url_env'" in str(exc.value)
    assert exc.value.path == CONFIG_FILE


def test_neither_url_nor_url_env_is_config_error() -> None:
    with pytest.raises(ConfigError, match=r"sources\.pos\.options"):
        build_source("pos", SourceConfig(kind="sql_database", options={}), CONFIG_FILE)


def test_unknown_option_key_is_named() -> None:
    with pytest.raises(ConfigError) as exc:
        build_source(
            "pos", SourceConfig(kind="sql_database", options={"url": "sqlite:///x.sqlite", "tabels": {}}), CONFIG_FILE
        )
    assert "sources.pos.options.tabels" in str(exc.value)


def test_non_identifier_table_name_rejected() -> None:
    """Table names reach SQL; anything but a plain identifier is refused at config time."""
    with pytest.raises(ConfigError, match="not a plain identifier"):
        build_source(
            "pos",
            SourceConfig(
                kind="sql_database", options={"url": "sqlite:///x.sqlite", "tables": {"orders": "orders; DROP"}}
            ),
            CONFIG_FILE,
        )


def test_unknown_kind_suggests_close_match() -> None:
    with pytest.raises(ConfigError) as exc:
        build_source("pos", SourceConfig(kind="sql_databse", options={}), CONFIG_FILE)
    msg = str(exc.value)
    assert "sources.pos.kind" in msg
    assert "did you mean 'sql_database'?" in msg


def test_missing_sqlite_file_is_named(home: Path) -> None:
    src = build_source("pos", SourceConfig(kind="sql_database", options={"url": "sqlite:///nope.sqlite"}), CONFIG_FILE)
    with pytest.raises(FileNotFoundError, match=r"nope\.sqlite"):
        src.extract("orders", CTX)
