"""CSV and XLSX rendering, the local outbox in both formats, column checks, and the run-to-run diff."""

from __future__ import annotations

import io
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import openpyxl
import pandas as pd
import pytest

import tasks.destinations.email
import tasks.destinations.s3_files
import tasks.destinations.sftp  # noqa: F401  (registers the kinds)
from tasks.config.loader import ConfigError
from tasks.config.models import DestinationConfig
from tasks.destinations.base import build_destination
from tasks.destinations.files import LocalFiles
from tasks.destinations.rendering import changes_since_last_run, hold_out_groups, render, sheet_name
from tasks.lake import Lake
from tasks.settings import RunWindow

WINDOW = RunWindow(date(2026, 11, 24), ZoneInfo("Asia/Ho_Chi_Minh"))
CONFIG_FILE = Path("config/destinations.yaml")
COLUMNS = ["customer_key", "full_name", "email", "phone", "province", "orders", "last_purchase_at", "email_opt_in"]


def _audience() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_key": ["K1", "K2", "K3"],
            "full_name": ["Nguyễn Thị Hoa", "Đặng Văn Đức", '=HYPERLINK("http://evil","x")'],
            "email": ["hoa@shop.vn", None, "x@y.vn"],
            "phone": ["+84912345678", "+84987654321", None],
            "province": ["Hồ Chí Minh", "Đà Nẵng", "Thừa Thiên Huế"],
            "orders": pd.array([3, 1, None], dtype="Int64"),
            "last_purchase_at": pd.to_datetime(
                pd.Series(["2026-11-20 03:15:00", "2026-10-01 00:00:00", None]), utc=True
            ),
            "email_opt_in": pd.array([True, False, None], dtype="boolean"),
            "not_exported": ["a", "b", "c"],
        }
    )


def _dest(kind: str = "csv_outbox", **options: Any) -> Any:
    return build_destination("outbox", DestinationConfig(kind=kind, options=options), CONFIG_FILE)


def test_csv_has_bom_and_round_trips_vietnamese() -> None:
    data = render(_audience(), COLUMNS, "csv")
    assert data.startswith(b"\xef\xbb\xbf")
    back = pd.read_csv(io.BytesIO(data), encoding="utf-8-sig", dtype=str, keep_default_na=False)
    assert list(back.columns) == COLUMNS
    assert back["full_name"].tolist()[:2] == ["Nguyễn Thị Hoa", "Đặng Văn Đức"]
    assert back["province"].tolist() == ["Hồ Chí Minh", "Đà Nẵng", "Thừa Thiên Huế"]
    assert back["phone"].tolist() == ["+84912345678", "+84987654321", ""]
    assert "not_exported" not in data.decode("utf-8-sig")


def test_xlsx_outbox_opens_with_openpyxl_and_holds_the_rows(home: Path) -> None:
    delivery = _dest(format="xlsx", columns=COLUMNS).deliver(
        "vip", "Khách VIP: Hồ Chí Minh [2026]", _audience(), WINDOW
    )
    path = home / "outbox" / "2026-11-24" / "vip.xlsx"
    assert delivery.location == str(path) and delivery.members == 3
    assert [p.name for p in path.parent.iterdir()] == ["vip.xlsx"]  # no temp file left

    wb = openpyxl.load_workbook(path)
    assert wb.sheetnames == ["Khách VIP Hồ Chí Minh 2026"]
    ws = wb.active
    rows = list(ws.iter_rows(values_only=True))
    assert list(rows[0]) == COLUMNS
    assert rows[1] == (
        "K1",
        "Nguyễn Thị Hoa",
        "hoa@shop.vn",
        "+84912345678",
        "Hồ Chí Minh",
        3,
        datetime(2026, 11, 20, 3, 15),  # UTC, shown with a "UTC" suffix
        True,
    )
    assert rows[2][:5] == ("K2", "Đặng Văn Đức", None, "+84987654321", "Đà Nẵng")
    assert len(rows) == 4
    assert ws["G2"].number_format.endswith('"UTC"')
    # A value that looks like a formula stays text: opening the file must never run it.
    assert ws["B4"].data_type == "s" and ws["B4"].value.startswith("=HYPERLINK")
    assert ws.freeze_panes == "A2"


def test_files_kind_is_the_outbox_under_a_format_neutral_name(home: Path) -> None:
    dest = _dest("files", format="xlsx", path="drop", columns=["customer_key", "province"])
    assert isinstance(dest, LocalFiles) and dest.kind == "files"
    assert _dest(columns=["customer_key"]).kind == "csv_outbox"
    dest.deliver("vip", "VIP", _audience(), WINDOW)
    dest.deliver("vip", "VIP", _audience().iloc[:1], WINDOW)  # a re-run replaces the file whole
    wb = openpyxl.load_workbook(home / "drop" / "2026-11-24" / "vip.xlsx")
    assert list(wb.active.iter_rows(values_only=True)) == [("customer_key", "province"), ("K1", "Hồ Chí Minh")]


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        ("Khách hàng thân thiết ở Thành phố Hồ Chí Minh", "Khách hàng thân thiết ở Thành p"),
        ("Kha\u0301ch VIP", "Khách VIP"),  # decomposed diacritics are composed first
        ("a/b\\c?d*e:f[g]h", "a b c d e f g h"),
        ("'quoted'", "quoted"),
        ("???", "Audience"),
        ("History", "History (segment)"),
    ],
)
def test_sheet_names_are_legal_in_excel(title: str, expected: str) -> None:
    assert sheet_name(title) == expected
    assert len(sheet_name(title)) <= 31


@pytest.mark.parametrize(
    ("kind", "required"),
    [
        ("csv_outbox", {}),
        ("s3_files", {"bucket": "audiences"}),
        ("sftp", {"connection": "sftp_partner", "host_key_fingerprint": "SHA256:" + "A" * 43}),
        ("email", {"connection": "smtp", "sender": "robot@shop.vn", "to": ["mkt@shop.vn"]}),
    ],
)
def test_unknown_column_names_it_with_a_suggestion(kind: str, required: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as exc:
        _dest(kind, columns=["customer_key", "provnce"], **required)
    msg = str(exc.value)
    assert "destinations.outbox.options.columns" in msg
    assert "unknown column 'provnce'" in msg and "did you mean 'province'?" in msg


def test_column_missing_from_the_audience_is_named() -> None:
    with pytest.raises(ValueError, match="no column\\(s\\) monetary_total"):
        render(_audience(), ["customer_key", "monetary_total"], "csv")


def _memberships(rows: list[tuple[str, str, str | None]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["segment", "customer_key", "group"]).assign(reasons="").astype("string")


def test_changes_since_last_run_diffs_the_delivered_audience_against_the_previous_run(tmp_path: Path) -> None:
    lake = Lake.local(tmp_path / "lake")
    day1, day2 = date(2026, 11, 23), date(2026, 11, 24)
    assert changes_since_last_run(lake, "vip", day1, ["K1", "K2"]).previous_run is None
    lake.write(
        "segments",
        "audiences",
        "memberships",
        day1,
        _memberships([("vip", "K1", "test"), ("vip", "K2", "test"), ("vip", "K3", "holdout"), ("other", "K9", None)]),
    )
    # Day 2 delivers K2 and K4 (K5 is in the hold-out, so it is not in the audience handed over).
    changes = changes_since_last_run(lake, "vip", day2, ["K2", "K4"], hold_out=("holdout", "control"))
    assert (changes.added, changes.removed, changes.previous_run) == (1, 1, day1)  # +K4, -K1; K3 never sent
    # Without the hold-out filter, K3 would count as removed.
    assert changes_since_last_run(lake, "vip", day2, ["K2", "K4"]).removed == 2
    assert changes_since_last_run(lake, "other", day2, []).removed == 1


def test_hold_out_groups_come_from_the_segment_config(home: Path) -> None:
    assert hold_out_groups("win_back_campaign") == ("holdout", "control")
    assert hold_out_groups("repeat_buyers") == ()
    assert hold_out_groups("cluster_3") == ()
