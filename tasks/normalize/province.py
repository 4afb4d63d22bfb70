"""One canonical name per Vietnamese province, whatever way the source spelled it.

Since 1 July 2025 Vietnam has 34 provincial units instead of 63. Canonical names here are the 34
current units; old province names that were merged map to the unit that absorbed them, so data
written before and after the reform lands on the same value.

The administrative facts (which 34 units exist, which 63 existed before, which old unit went into
which new one, and the official spellings and short aliases of each) come from the maintained
``vietnamadminunits`` package, which ships its data offline. Only informal aliases the package does
not know (HCMC, Sài Gòn, Thừa Thiên Huế, Nha Trang...) are written here.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import suppress
from functools import cache, lru_cache
from pathlib import Path

from tasks import settings
from tasks.normalize.text import fold
from tasks.storage import LocalStore

# The 34 provincial-level units in force since 2025-07-01, in the short form the rest of the code,
# the sample data's ground truth and the e2e test compare against ("Hồ Chí Minh", not "Thành phố
# Hồ Chí Minh"). `_index` checks that the package's 34 units map one-to-one onto this tuple.
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

# Informal names the package's keyword lists lack, seen in CRM data. Keys are `fold`ed spellings.
# Thừa Thiên Huế is here because the package lists old Huế under its January-2025 name (Thành phố Huế).
_ALIASES: dict[str, str] = {
    "hcmc": "Hồ Chí Minh",
    "tphcm": "Hồ Chí Minh",
    "sai gon": "Hồ Chí Minh",
    "ho chi minh city": "Hồ Chí Minh",
    "hanoi city": "Hà Nội",
    "thua thien hue": "Huế",
    "nha trang": "Khánh Hòa",
    "bien hoa": "Đồng Nai",
}

# Administrative-type prefixes written in front of a name, possibly the wrong one ("TP Bình Dương").
_PREFIXES = ("thanh pho ", "tinh ", "tp ", "t p ")

# Units in the package's data; checked so a data update that changes the shape fails loudly.
_NEW_UNITS = 34
_OLD_UNITS = 63


def _key(folded: str) -> str:
    """Spaceless folded form: the package's keywords are written this way ("hochiminh", "hcm")."""
    return folded.replace(" ", "")


def _cache_file() -> Path:
    """Where the built index is kept: named by the package version and a digest of everything here the
    index depends on, so an upgrade or an edited alias builds a new one instead of reading a stale one."""
    from importlib.metadata import version

    recipe = json.dumps([version("vietnamadminunits"), PROVINCES, _ALIASES, _PREFIXES, _NEW_UNITS, _OLD_UNITS])
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:16]
    return settings.home() / "cache" / f"provinces-{digest}.json"


@cache
def _index() -> dict[str, str]:
    """Spaceless folded spelling -> canonical province, built from the package's data once per package
    version and kept on disk: importing the package's parser data takes over a second, paid by every
    process that compiles a province rule or normalises a profile (DAG parsing imports none of it)."""
    path = _cache_file()
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(cached, dict) and cached and set(cached.values()) == set(PROVINCES):
            return {str(k): str(v) for k, v in cached.items()}
    except (OSError, ValueError):
        pass  # missing or unreadable: build it
    index = _build_index()
    # LocalStore writes whole or not at all, even with several processes at once; a read-only home only
    # costs the rebuild next time
    with suppress(OSError):
        LocalStore(path.parent).put(path.name, json.dumps(index, ensure_ascii=False, sort_keys=True).encode())
    return index


def _build_index() -> dict[str, str]:
    """Spaceless folded spelling -> canonical province, from the package's data."""
    from vietnamadminunits import convert_address
    from vietnamadminunits.database import get_data

    fields = ["province", "provinceShort", "provinceKey", "provinceKeywords"]
    new_units = get_data(fields, table="admin_units")
    old_units = get_data(fields, table="admin_units_legacy")
    if len(new_units) != _NEW_UNITS or len(old_units) != _OLD_UNITS:
        raise RuntimeError(f"vietnamadminunits lists {len(new_units)} new / {len(old_units)} old provinces")

    ours = {_key(fold(p)): p for p in PROVINCES}
    by_new_key: dict[str, str] = {}
    for unit in new_units:
        canonical = ours.get(_key(fold(unit["provinceShort"])))
        if canonical is None:
            raise RuntimeError(f"vietnamadminunits unit {unit['province']!r} is not in PROVINCES")
        by_new_key[unit["provinceKey"]] = canonical
    if set(by_new_key.values()) != set(PROVINCES):
        raise RuntimeError("vietnamadminunits' 34 units do not map one-to-one onto PROVINCES")

    index: dict[str, str] = {}

    def add(key: str, canonical: str) -> None:
        """Register a spelling; two units claiming one spelling would make the answer arbitrary."""
        if index.setdefault(key, canonical) != canonical:
            raise RuntimeError(f"spelling {key!r} is claimed by {index[key]!r} and {canonical!r}")

    for unit in new_units:
        canonical = by_new_key[unit["provinceKey"]]
        for spelling in [unit["province"], unit["provinceShort"], *json.loads(unit["provinceKeywords"])]:
            add(_key(fold(spelling)), canonical)
    for unit in old_units:
        # A province-only address needs no ward lookup, so the converter stays offline here.
        new_key = convert_address(unit["province"]).province_key
        if new_key not in by_new_key:
            raise RuntimeError(f"vietnamadminunits converts {unit['province']!r} to unknown unit {new_key!r}")
        canonical = by_new_key[new_key]
        for spelling in [unit["province"], unit["provinceShort"], *json.loads(unit["provinceKeywords"])]:
            add(_key(fold(spelling)), canonical)
    for alias, canonical in _ALIASES.items():
        add(_key(alias), canonical)
    return index


@lru_cache(maxsize=4096)
def canonical_province(raw: str | None) -> str | None:
    """Canonical province for a free-text value, or None when it is blank or unrecognised.

    Matches the whole value (after an optional type prefix) rather than searching inside it, so a
    district or street that happens to contain a province keyword is not mistaken for a province.
    """
    if raw is None:
        return None
    folded = fold(raw)
    if not folded:
        return None
    index = _index()
    candidates = [folded]
    candidates += [folded[len(prefix) :] for prefix in _PREFIXES if folded.startswith(prefix)]
    for cand in candidates:
        found = index.get(_key(cand))
        if found is not None:
            return found
    return None
