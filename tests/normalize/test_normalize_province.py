"""Province names: every spelling of a place, old or new, lands on one of the 34 current units."""

from __future__ import annotations

import pytest

from tasks.normalize.province import PROVINCES, canonical_province
from tasks.normalize.text import fold


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Hồ Chí Minh", "Hồ Chí Minh"),
        ("TP. Hồ Chí Minh", "Hồ Chí Minh"),
        ("Thành phố Hồ Chí Minh", "Hồ Chí Minh"),
        ("TP.HCM", "Hồ Chí Minh"),
        ("tp hcm", "Hồ Chí Minh"),
        ("HCMC", "Hồ Chí Minh"),
        ("Sài Gòn", "Hồ Chí Minh"),
        ("saigon", "Hồ Chí Minh"),
        ("Ho Chi Minh City", "Hồ Chí Minh"),
        ("  HO CHI MINH  ", "Hồ Chí Minh"),
        ("Hà Nội", "Hà Nội"),
        ("Ha Noi", "Hà Nội"),
        ("hanoi", "Hà Nội"),
        ("HN", "Hà Nội"),
        ("TP. Hà Nội", "Hà Nội"),
        ("Thành phố Hà Nội", "Hà Nội"),
        ("Huế", "Huế"),
        ("Hue", "Huế"),
        ("Thừa Thiên Huế", "Huế"),
        ("Thua Thien - Hue", "Huế"),
        ("Đà Nẵng", "Đà Nẵng"),
        ("Da Nang", "Đà Nẵng"),
        ("danang", "Đà Nẵng"),
        ("TP Đà Nẵng", "Đà Nẵng"),
    ],
)
def test_spellings_map_to_canonical(raw: str, expected: str) -> None:
    assert canonical_province(raw) == expected


@pytest.mark.parametrize(
    ("old", "absorbing"),
    [
        ("Bình Dương", "Hồ Chí Minh"),
        ("Tỉnh Bình Dương", "Hồ Chí Minh"),
        ("Bà Rịa - Vũng Tàu", "Hồ Chí Minh"),
        ("Quảng Nam", "Đà Nẵng"),
        ("Hải Dương", "Hải Phòng"),
        ("Kiên Giang", "An Giang"),
    ],
)
def test_pre_2025_provinces_map_to_absorbing_unit(old: str, absorbing: str) -> None:
    assert canonical_province(old) == absorbing


@pytest.mark.parametrize("raw", [None, "", "   ", "-", "Atlantis", "Paris", "Quận 1"])
def test_blank_or_unknown_is_none(raw: str | None) -> None:
    assert canonical_province(raw) is None


def test_there_are_34_distinct_units() -> None:
    assert len(set(PROVINCES)) == 34


@pytest.mark.parametrize("name", PROVINCES)
def test_canonical_names_map_to_themselves(name: str) -> None:
    assert canonical_province(name) == name
    assert canonical_province(fold(name)) == name
    assert canonical_province(name.upper()) == name


def test_fold_strips_vietnamese_diacritics_including_d_bar() -> None:
    """Unicode does not decompose đ/Đ, so fold must handle them explicitly."""
    assert fold("TP. Hồ Chí Minh") == "tp ho chi minh"
    assert fold("Đắk Lắk") == "dak lak"
    assert fold("Thừa Thiên–Huế") == "thua thien hue"
    assert fold("Đà Nẵng") == "da nang"


# ---- Against the package's own data (vietnamadminunits), not a hand-written list -----------------


def _package_provinces(table: str) -> list[dict[str, str]]:
    """Province rows of one of the package's tables: 'admin_units' (34) or 'admin_units_legacy' (63)."""
    from vietnamadminunits.database import get_data

    rows: list[dict[str, str]] = get_data(["province", "provinceShort"], table=table)
    return rows


_OLD = _package_provinces("admin_units_legacy")
_NEW = _package_provinces("admin_units")


def test_package_lists_63_old_and_34_new_units_matching_provinces() -> None:
    assert len(_OLD) == 63
    assert {row["provinceShort"] for row in _NEW} == set(PROVINCES)


@pytest.mark.parametrize("row", _OLD, ids=lambda row: row["provinceShort"])
def test_every_old_province_maps_to_a_current_unit(row: dict[str, str]) -> None:
    """Official and short names, with and without diacritics, all land on one of the 34."""
    spellings = [row["province"], row["provinceShort"], fold(row["province"]), fold(row["provinceShort"])]
    results = {canonical_province(s) for s in spellings}
    assert len(results) == 1
    assert results <= set(PROVINCES)


@pytest.mark.parametrize("row", _NEW, ids=lambda row: row["provinceShort"])
def test_official_new_names_map_to_themselves(row: dict[str, str]) -> None:
    """'Thành phố Hồ Chí Minh' / 'Tỉnh Khánh Hòa' as the package writes them -> our short form."""
    assert canonical_province(row["province"]) == row["provinceShort"]
    assert canonical_province(fold(row["province"])) == row["provinceShort"]


@pytest.mark.parametrize(
    ("old", "absorbing"),
    [
        ("Bình Dương", "Hồ Chí Minh"),
        ("Bà Rịa - Vũng Tàu", "Hồ Chí Minh"),
        ("Quảng Nam", "Đà Nẵng"),
        ("Hải Dương", "Hải Phòng"),
        ("Bắc Giang", "Bắc Ninh"),
        ("Vĩnh Phúc", "Phú Thọ"),
        ("Hòa Bình", "Phú Thọ"),
        ("Hà Giang", "Tuyên Quang"),
        ("Bắc Kạn", "Thái Nguyên"),
        ("Yên Bái", "Lào Cai"),
        ("Thái Bình", "Hưng Yên"),
        ("Nam Định", "Ninh Bình"),
        ("Quảng Bình", "Quảng Trị"),
        ("Kon Tum", "Quảng Ngãi"),
        ("Bình Định", "Gia Lai"),
        ("Phú Yên", "Đắk Lắk"),
        ("Ninh Thuận", "Khánh Hòa"),
        ("Đắk Nông", "Lâm Đồng"),
        ("Bình Thuận", "Lâm Đồng"),
        ("Bình Phước", "Đồng Nai"),
        ("Long An", "Tây Ninh"),
        ("Tiền Giang", "Đồng Tháp"),
        ("Bến Tre", "Vĩnh Long"),
        ("Trà Vinh", "Vĩnh Long"),
        ("Kiên Giang", "An Giang"),
        ("Sóc Trăng", "Cần Thơ"),
        ("Hậu Giang", "Cần Thơ"),
        ("Bạc Liêu", "Cà Mau"),
    ],
)
def test_known_mergers_agree_with_package_converter(old: str, absorbing: str) -> None:
    """Each expectation is checked against the package's converter too, so neither side is from memory."""
    from vietnamadminunits import convert_address

    assert convert_address(old).short_province == absorbing
    assert canonical_province(old) == absorbing
    assert canonical_province(fold(old)) == absorbing
    assert canonical_province(f"Tỉnh {old}") == absorbing


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Vũng Tàu", "Hồ Chí Minh"),
        ("Bà Rịa Vũng Tàu", "Hồ Chí Minh"),
        ("TPHCM", "Hồ Chí Minh"),
        ("HCM", "Hồ Chí Minh"),
        ("Khánh Hoà", "Khánh Hòa"),
        ("Dak Lak", "Đắk Lắk"),
        ("Nha Trang", "Khánh Hòa"),
        ("Biên Hòa", "Đồng Nai"),
        ("Thành phố Huế", "Huế"),
        ("Tỉnh Thừa Thiên Huế", "Huế"),
    ],
)
def test_aliases_and_variant_spellings(raw: str, expected: str) -> None:
    assert canonical_province(raw) == expected


@pytest.mark.parametrize("raw", ["Quận 1", "Thủ Đức", "Phường Bến Nghé", "Hồ Chí Minh, Quận 1", "Việt Nam"])
def test_whole_value_must_be_a_province(raw: str) -> None:
    """A district, ward or full address is not a province value: no substring guessing."""
    assert canonical_province(raw) is None
