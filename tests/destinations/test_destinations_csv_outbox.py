"""csv_outbox: one UTF-8-with-BOM CSV per segment and date, configured columns, replaced on re-run."""

from __future__ import annotations

import csv
from datetime import date
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from tasks.config.loader import ConfigError
from tasks.config.models import DestinationConfig
from tasks.destinations.base import build_destination
from tasks.settings import RunWindow

WINDOW = RunWindow(date(2026, 11, 24), ZoneInfo("Asia/Ho_Chi_Minh"))
CONFIG_FILE = Path("config/destinations.yaml")


def _dest(**options: Any) -> Any:
    return build_destination("outbox", DestinationConfig(kind="csv_outbox", options=options), CONFIG_FILE)


def _audience() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_key": ["K1", "K2"],
            "full_name": ["Nguyễn Thị Hoa", "Đặng Văn Đức"],
            "email": ["hoa@shop.vn", None],
            "province": ["Hồ Chí Minh", "Đà Nẵng"],
            "orders": [3, 1],
            "extra": ["x", "y"],
        }
    )


def test_writes_bom_csv_with_configured_columns(home: Path) -> None:
    delivery = _dest(path="outbox", columns=["province", "customer_key", "full_name", "email"]).deliver(
        "vip", "VIP", _audience(), WINDOW
    )
    path = home / "outbox" / "2026-11-24" / "vip.csv"
    assert delivery.location == str(path)
    assert delivery.members == 2 and delivery.segment == "vip" and delivery.destination == "outbox"
    data = path.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(data.decode("utf-8-sig").splitlines()))
    assert rows == [
        ["province", "customer_key", "full_name", "email"],
        ["Hồ Chí Minh", "K1", "Nguyễn Thị Hoa", "hoa@shop.vn"],
        ["Đà Nẵng", "K2", "Đặng Văn Đức", ""],
    ]
    assert [p.name for p in path.parent.iterdir()] == ["vip.csv"]  # no temp file left


def test_redelivery_replaces_file(home: Path) -> None:
    dest = _dest(columns=["customer_key"])
    dest.deliver("vip", "VIP", _audience(), WINDOW)
    dest.deliver("vip", "VIP", _audience().iloc[:1], WINDOW)
    path = home / "outbox" / "2026-11-24" / "vip.csv"
    assert path.read_text(encoding="utf-8-sig").splitlines() == ["customer_key", "K1"]
    assert [p.name for p in path.parent.iterdir()] == ["vip.csv"]


def test_unknown_column_suggests_close_match() -> None:
    with pytest.raises(ConfigError) as exc:
        _dest(columns=["customer_key", "full_nam"])
    msg = str(exc.value)
    assert "destinations.outbox.options.columns" in msg
    assert "unknown column 'full_nam'" in msg
    assert "did you mean 'full_name'?" in msg


def test_unknown_kind_is_config_error() -> None:
    with pytest.raises(ConfigError, match="did you mean 'csv_outbox'"):
        build_destination("outbox", DestinationConfig(kind="csv_outbx"), CONFIG_FILE)
