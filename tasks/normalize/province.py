"""One canonical name per Vietnamese province, whatever way the source spelled it.

Since 1 July 2025 Vietnam has 34 provincial units instead of 63. Canonical names here are the 34
current units; old province names that were merged map to the unit that absorbed them, so data
written before and after the reform lands on the same value. Issue 4 replaces the alias table with
a maintained administrative-units package; the function signature stays.
"""

from __future__ import annotations

from functools import lru_cache

from tasks.normalize.text import fold

# The 34 provincial-level units in force since 2025-07-01.
PROVINCES: tuple[str, ...] = (
    "Hà Nội",
    "Hồ Chí Minh",
    "Hải Phòng",
    "Đà Nẵng",
    "Cần Thơ",
    "Huế",
    "Lai Châu",
    "Điện Biên",
    "Sơn La",
    "Lạng Sơn",
    "Quảng Ninh",
    "Thanh Hóa",
    "Nghệ An",
    "Hà Tĩnh",
    "Cao Bằng",
    "Tuyên Quang",
    "Lào Cai",
    "Thái Nguyên",
    "Phú Thọ",
    "Bắc Ninh",
    "Hưng Yên",
    "Ninh Bình",
    "Quảng Trị",
    "Quảng Ngãi",
    "Gia Lai",
    "Khánh Hòa",
    "Lâm Đồng",
    "Đắk Lắk",
    "Đồng Nai",
    "Tây Ninh",
    "Vĩnh Long",
    "Đồng Tháp",
    "Cà Mau",
    "An Giang",
)

# Common aliases and pre-2025 provinces, keyed by their folded spelling.
_ALIASES: dict[str, str] = {
    "hcm": "Hồ Chí Minh",
    "hcmc": "Hồ Chí Minh",
    "tphcm": "Hồ Chí Minh",
    "tp hcm": "Hồ Chí Minh",
    "sai gon": "Hồ Chí Minh",
    "saigon": "Hồ Chí Minh",
    "ho chi minh city": "Hồ Chí Minh",
    "hochiminh": "Hồ Chí Minh",
    "binh duong": "Hồ Chí Minh",
    "ba ria vung tau": "Hồ Chí Minh",
    "hn": "Hà Nội",
    "hanoi": "Hà Nội",
    "thua thien hue": "Huế",
    "hue": "Huế",
    "da nang": "Đà Nẵng",
    "danang": "Đà Nẵng",
    "quang nam": "Đà Nẵng",
    "hai phong": "Hải Phòng",
    "haiphong": "Hải Phòng",
    "hai duong": "Hải Phòng",
    "can tho": "Cần Thơ",
    "soc trang": "Cần Thơ",
    "hau giang": "Cần Thơ",
    "nha trang": "Khánh Hòa",
    "ninh thuan": "Khánh Hòa",
    "bien hoa": "Đồng Nai",
    "binh phuoc": "Đồng Nai",
    "bac giang": "Bắc Ninh",
    "vinh phuc": "Phú Thọ",
    "hoa binh": "Phú Thọ",
    "thai binh": "Hưng Yên",
    "ha nam": "Ninh Bình",
    "nam dinh": "Ninh Bình",
    "quang binh": "Quảng Trị",
    "kon tum": "Quảng Ngãi",
    "binh dinh": "Gia Lai",
    "dak nong": "Lâm Đồng",
    "binh thuan": "Lâm Đồng",
    "phu yen": "Đắk Lắk",
    "long an": "Tây Ninh",
    "ben tre": "Vĩnh Long",
    "tra vinh": "Vĩnh Long",
    "tien giang": "Đồng Tháp",
    "bac lieu": "Cà Mau",
    "kien giang": "An Giang",
    "ha giang": "Tuyên Quang",
    "yen bai": "Lào Cai",
    "bac kan": "Thái Nguyên",
}

_PREFIXES = ("thanh pho ", "tinh ", "tp ", "t p ")


@lru_cache(maxsize=4096)
def canonical_province(raw: str | None) -> str | None:
    """Canonical province for a free-text value, or None when it is blank or unrecognised."""
    if raw is None:
        return None
    key = fold(raw)
    if not key:
        return None
    candidates = [key, key.replace(" ", "")]
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            candidates.append(key[len(prefix) :])
    for cand in candidates:
        if cand in _BY_FOLDED:
            return _BY_FOLDED[cand]
        if cand in _ALIASES:
            return _ALIASES[cand]
    return None


_BY_FOLDED: dict[str, str] = {fold(p): p for p in PROVINCES} | {fold(p).replace(" ", ""): p for p in PROVINCES}
