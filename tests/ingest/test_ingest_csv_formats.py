"""CRM CSV export in the shapes real exports arrive in: UTF-16, cp1258, `;` and tab separators, empty files."""

from __future__ import annotations

import unicodedata
from datetime import date
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tasks.config.loader import ConfigError
from tasks.config.models import SourceConfig
from tasks.ingest.base import ExtractContext, build_source
from tasks.ingest.crm import detect_encoding, sniff_delimiter
from tasks.settings import RunWindow
from tasks.state.store import StateStore

CONFIG_FILE = Path("config/sources.yaml")
NAMES = ["Nguyễn Văn Ánh", "Trần Thị Bình", "Phạm Hữu Đức"]
TONES = {"\u0300", "\u0301", "\u0303", "\u0309", "\u0323"}  # the marks cp1258 keeps as combining characters


def _csv(sep: str = ",") -> str:
    lines = [sep.join(["contact_id", "customer_id", "full_name", "email"])]
    lines += [sep.join([f"C{i}", f"K{i}", name, f"c{i}@example.com"]) for i, name in enumerate(NAMES, start=1)]
    return "\r\n".join(lines) + "\r\n"


def _cp1258(text: str) -> bytes:
    """Encode like Windows does: letters with a tone mark become base letter + combining tone."""
    out = bytearray()
    for ch in text:
        try:
            out += ch.encode("cp1258")
            continue
        except UnicodeEncodeError:
            pass
        base, *marks = unicodedata.normalize("NFD", ch)
        composed = unicodedata.normalize("NFC", base + "".join(m for m in marks if m not in TONES))
        out += (composed + "".join(m for m in marks if m in TONES)).encode("cp1258")
    return bytes(out)


@pytest.fixture
def ctx(tmp_path: Path) -> ExtractContext:
    return ExtractContext(
        RunWindow(date(2026, 11, 24), ZoneInfo("Asia/Ho_Chi_Minh")), StateStore(f"sqlite:///{tmp_path}/state.db")
    )


@pytest.fixture
def export(home: Path) -> Path:
    folder = home / "crm"
    folder.mkdir()
    return folder / "contacts.csv"


def _source(**options: Any) -> Any:
    return build_source(
        "crm", SourceConfig(kind="csv_export", options={"path": "crm/contacts.csv", **options}), CONFIG_FILE
    )


def test_utf16_with_bom_loads_with_auto_encoding(export: Path, ctx: ExtractContext) -> None:
    export.write_text(_csv(), encoding="utf-16")  # Python writes the BOM, as Excel's "Unicode text" does
    result = _source().extract("contacts", ctx)
    assert result.frame["full_name"].tolist() == NAMES
    assert list(result.frame.columns[:2]) == ["contact_id", "customer_id"]  # BOM not glued to the header
    assert result.frame["_row"].tolist() == [1, 2, 3]
    assert result.mode == "snapshot"
    assert result.notes == []


def test_utf16_big_endian_bom_is_detected() -> None:
    data = "\ufeffa,b\n".encode("utf-16-be")
    codec, note = detect_encoding(data)
    assert data.decode(codec) == "a,b\n"
    assert note is None


def test_cp1258_falls_back_composes_names_and_notes_it(export: Path, ctx: ExtractContext) -> None:
    data = _cp1258(_csv())
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")  # the fixture really is not UTF-8
    export.write_bytes(data)
    result = _source().extract("contacts", ctx)
    assert result.frame["full_name"].tolist() == NAMES  # NFC: equal to the same name read from UTF-8
    assert len(result.notes) == 1
    assert "cp1258" in result.notes[0] and "crm/contacts.csv" in result.notes[0]
    assert not any(name.split()[0] in result.notes[0] for name in NAMES)  # no personal data in the note


def test_explicit_encoding_still_wins_and_errors_name_file_and_key(export: Path, ctx: ExtractContext) -> None:
    export.write_text(_csv(), encoding="utf-16")
    with pytest.raises(ValueError) as exc:
        _source(encoding="utf-8").extract("contacts", ctx)
    assert str(export) in str(exc.value)
    assert "sources.crm.options.encoding" in str(exc.value)


def test_semicolon_delimited_is_sniffed(export: Path, ctx: ExtractContext) -> None:
    export.write_text(_csv(";"), encoding="utf-8")
    frame = _source().extract("contacts", ctx).frame
    assert frame["email"].tolist() == ["c1@example.com", "c2@example.com", "c3@example.com"]
    assert frame["full_name"].tolist() == NAMES


def test_tab_delimited_utf16_is_sniffed(export: Path, ctx: ExtractContext) -> None:
    export.write_text(_csv("\t"), encoding="utf-16")  # Excel "Unicode text": UTF-16 and tabs together
    frame = _source().extract("contacts", ctx).frame
    assert frame["contact_id"].tolist() == ["C1", "C2", "C3"]
    assert frame["full_name"].tolist() == NAMES


def test_sniffing_ignores_separators_inside_quotes() -> None:
    assert sniff_delimiter('"a,b";"c,d";e') == ";"
    assert sniff_delimiter("a|b|c") == "|"
    assert sniff_delimiter("single") == ","


def test_explicit_delimiter_still_wins(export: Path, ctx: ExtractContext) -> None:
    export.write_text("id;name,extra\nC1;An,x\n", encoding="utf-8")  # sniffing would pick ';'
    frame = _source(delimiter=",", columns={"id;name": "contact_id"}).extract("contacts", ctx).frame
    assert list(frame.columns[:2]) == ["contact_id", "extra"]


def test_empty_file_error_names_file_and_what_to_do(export: Path, ctx: ExtractContext) -> None:
    export.write_bytes(b"")
    with pytest.raises(ValueError) as exc:
        _source().extract("contacts", ctx)
    assert str(export) in str(exc.value)
    assert "export it again" in str(exc.value)


def test_header_only_file_gives_empty_frame(export: Path, ctx: ExtractContext) -> None:
    export.write_text("contact_id;customer_id;email\r\n", encoding="utf-8-sig")
    result = _source().extract("contacts", ctx)
    assert len(result.frame) == 0
    assert {"contact_id", "customer_id", "email", "_source", "_row"} <= set(result.frame.columns)


def test_bad_options_are_rejected_with_the_key() -> None:
    with pytest.raises(ConfigError, match=r"sources\.crm\.options\.encoding"):
        _source(encoding="utf-9")
    with pytest.raises(ConfigError, match=r"sources\.crm\.options\.delimiter"):
        _source(delimiter=";;")
