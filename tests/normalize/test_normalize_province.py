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
