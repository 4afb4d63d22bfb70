"""CRM CSV export: 1-based data rows, blanks as None, and a clear message for a wrong encoding."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tasks.config.models import SourceConfig
from tasks.ingest.base import ExtractContext, build_source
from tasks.settings import RunWindow
from tasks.state.store import StateStore

WINDOW = RunWindow(date(2026, 11, 24), ZoneInfo("Asia/Ho_Chi_Minh"))
CTX = ExtractContext(WINDOW, StateStore("sqlite://"))
CONFIG_FILE = Path("config/sources.yaml")
CSV = "contact_id,customer_id,full_name,email\nC1,K1,Nguyễn Văn Ánh,a@b.vn\nC2,,Trần Thị Bình,\n"


def _source(**options: Any) -> Any:
    return build_source(
        "crm", SourceConfig(kind="csv_export", options={"path": "crm/contacts.csv", **options}), CONFIG_FILE
    )


@pytest.fixture
def crm_dir(home: Path) -> Path:
    folder = home / "crm"
    folder.mkdir()
    return folder


def test_rows_are_numbered_and_blanks_are_none(crm_dir: Path) -> None:
    (crm_dir / "contacts.csv").write_text(CSV, encoding="utf-8-sig")
    frame = _source().extract("contacts", CTX).frame
    assert frame["_row"].tolist() == [1, 2]
    assert frame["_source"].tolist() == ["crm/contacts.csv"] * 2
    assert frame["full_name"].tolist() == ["Nguyễn Văn Ánh", "Trần Thị Bình"]
    assert frame.loc[1, "customer_id"] is None
    assert frame.loc[1, "email"] is None
    assert list(frame.columns[:4]) == ["contact_id", "customer_id", "full_name", "email"]  # BOM not in header


def test_column_mapping_renames(crm_dir: Path) -> None:
    (crm_dir / "contacts.csv").write_text("ID,Mail\nC1,a@b.vn\n", encoding="utf-8")
    frame = _source(columns={"ID": "contact_id", "Mail": "email"}).extract("contacts", CTX).frame
    assert frame["contact_id"].tolist() == ["C1"]
    assert frame["email"].tolist() == ["a@b.vn"]


def test_utf16_file_read_as_utf8_names_file_and_key(crm_dir: Path) -> None:
    path = crm_dir / "contacts.csv"
    path.write_text(CSV, encoding="utf-16")
    with pytest.raises(ValueError) as exc:
        _source(encoding="utf-8").extract("contacts", CTX)  # an explicit, wrong encoding
    assert str(path) in str(exc.value)
    assert "sources.crm.options.encoding" in str(exc.value)


def test_utf16_file_loads_with_encoding_option(crm_dir: Path) -> None:
    (crm_dir / "contacts.csv").write_text(CSV, encoding="utf-16")
    frame = _source(encoding="utf-16").extract("contacts", CTX).frame
    assert frame["full_name"].tolist() == ["Nguyễn Văn Ánh", "Trần Thị Bình"]
    assert frame["_row"].tolist() == [1, 2]


def test_missing_file_is_named(crm_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"contacts\.csv"):
        _source().extract("contacts", CTX)
