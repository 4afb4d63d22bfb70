"""Fabricate a Vietnamese retail business and write it as POS, CRM and GA4 files.

Everything is drawn from one seeded ``random.Random`` so a given
``(end_date, scale, seed)`` always yields byte-identical files: tests, demos and
data-quality baselines can then rely on exact row counts and on the manifest of
deliberately broken rows (``SampleData.injected``), which is what lets us prove
that validation quarantines exactly the rows it should and nothing else.

The bad rows are always *extra* rows, never mutations of good ones, so the
"good" part of every table stays internally consistent (order totals equal the
sum of their lines, every order's customer exists in the CRM, ...).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import pathlib
import random
import sqlite3
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

__all__ = ["InjectedRow", "SampleData", "generate", "injected_counts", "write"]

# --------------------------------------------------------------------------------------
# Public types
# --------------------------------------------------------------------------------------

ORDERS_SOURCE = "pos.sqlite:orders"
ORDER_LINES_SOURCE = "pos.sqlite:order_lines"
STORES_SOURCE = "pos.sqlite:stores"
PRODUCTS_SOURCE = "pos.sqlite:products"
CONTACTS_SOURCE = "crm/contacts.csv"
SURVEYS_SOURCE = "crm/surveys.csv"
SURVEY_COLUMNS = ["response_id", "customer_id", "answered_at", "nps_score", "csat_score"]

_BASE_CONTACT_COLUMNS = [
    "contact_id",
    "customer_id",
    "full_name",
    "email",
    "phone",
    "gender",
    "birthday",
    "province",
    "email_opt_in",
    "sms_opt_in",
    "ads_opt_in",
    "member_since",
    "nps_score",
    "csat_score",
    "updated_at",
]
# Profile attributes added later (issue 4); drawn from their own random stream (see _contact_attributes).
CONTACT_ATTRIBUTE_COLUMNS = [
    "occupation",
    "marital_status",
    "income_band",
    "customer_type",
    "company",
    "industry",
    "company_size",
    "latitude",
    "longitude",
    "interests",
    "commute_mode",
    "works_remotely",
]
CONTACT_COLUMNS = _BASE_CONTACT_COLUMNS + CONTACT_ATTRIBUTE_COLUMNS
ORDER_COLUMNS = [
    "id",
    "order_id",
    "customer_id",
    "store_id",
    "channel",
    "ordered_at",
    "subtotal_vnd",
    "discount_vnd",
    "total_vnd",
    "updated_at",
    "voucher_code",
]
ORDER_LINE_COLUMNS = [
    "id",
    "order_id",
    "line_no",
    "product_id",
    "quantity",
    "unit_price_vnd",
    "discount_vnd",
    "line_total_vnd",
    "updated_at",
]
STORE_COLUMNS = ["store_id", "name", "province", "latitude", "longitude", "opened_on"]
PRODUCT_COLUMNS = ["product_id", "name", "category", "price_vnd"]


@dataclass(frozen=True)
class InjectedRow:
    """Address of one deliberately bad row, in the extractor's own coordinates.

    ``source``/``row`` use the exact values the extractor stamps into ``_source``
    and ``_row`` so the manifest can be joined against the quarantine table.
    """

    table: str
    kind: str
    source: str
    row: int


@dataclass
class SampleData:
    """Everything ``write`` puts on disk, plus the answers tests need.

    Frames hold the rows exactly as written (bad rows included, in file order)
    with ``_source``/``_row`` columns. Contacts are kept as the literal CSV text
    (all ``str``, blanks as ``""``) because that is what the CRM export holds.
    ``web_event_locations[i]`` is the ``(_source, _row)`` of ``web_events[i]``.
    """

    stores: pd.DataFrame
    products: pd.DataFrame
    orders: pd.DataFrame
    order_lines: pd.DataFrame
    contacts: pd.DataFrame
    web_events: list[dict[str, Any]]
    injected: list[InjectedRow]
    truth_province: dict[str, str]
    end_date: dt.date
    seed: int = 42
    scale: float = 1.0
    web_event_locations: list[tuple[str, int]] = field(default_factory=list)
    survey_responses: pd.DataFrame = field(default_factory=pd.DataFrame)


# --------------------------------------------------------------------------------------
# Reference data
# --------------------------------------------------------------------------------------

VN_OFFSET = dt.timedelta(hours=7)  # Vietnam has no DST, so a fixed offset is exact.
CATEGORIES = ["backpack", "handbag", "wallet", "shoes", "apparel", "accessories"]

# canonical province -> (share of customers, spellings seen in the CRM)
PROVINCES: dict[str, tuple[float, list[str]]] = {
    "Hồ Chí Minh": (
        0.27,
        [
            "TP.HCM",
            "Hồ Chí Minh",
            "Ho Chi Minh City",
            "TP. Hồ Chí Minh",
            "Sài Gòn",
            "HCMC",
        ],
    ),
    "Hà Nội": (0.18, ["Ha Noi", "Hà Nội", "HN", "TP Hà Nội", "Hanoi"]),
    "Đà Nẵng": (0.07, ["Đà Nẵng", "Da Nang", "TP Đà Nẵng"]),
    "Hải Phòng": (0.06, ["Hải Phòng", "Hai Phong"]),
    "Cần Thơ": (0.05, ["Cần Thơ", "Can Tho"]),
    "Khánh Hòa": (0.05, ["Khánh Hòa", "Khanh Hoa", "Khánh Hoà", "Nha Trang"]),
    "Đồng Nai": (0.06, ["Đồng Nai", "Dong Nai"]),
    "Bình Dương": (0.07, ["Bình Dương", "Binh Duong"]),
    "Huế": (0.04, ["Huế", "Hue", "Thừa Thiên Huế"]),
    "Quảng Ninh": (0.04, ["Quảng Ninh", "Quang Ninh"]),
    "Nghệ An": (0.03, ["Nghệ An", "Nghe An"]),
}
BLANK_PROVINCE_SHARE = 0.04

# Provinces abolished by the 2025 reform, written by customers who have not updated their address:
# the truth is the unit that absorbed them (Bình Dương became part of Hồ Chí Minh City).
MERGED_2025 = {"Bình Dương": "Hồ Chí Minh"}

# Customers from provinces without a store shop at the nearest big-city stores.
HOME_STORE_PROVINCE = {
    "Bình Dương": "Hồ Chí Minh",
    "Quảng Ninh": "Hải Phòng",
    "Nghệ An": "Hà Nội",
}

# (name suffix, canonical province, lat, lon, opened_on)
STORES: list[tuple[str, str, float, float, str]] = [
    ("Nguyễn Huệ, Quận 1", "Hồ Chí Minh", 10.7743, 106.7038, "2016-03-12"),
    ("Võ Văn Tần, Quận 3", "Hồ Chí Minh", 10.7786, 106.6892, "2016-11-05"),
    ("Phú Mỹ Hưng, Quận 7", "Hồ Chí Minh", 10.7291, 106.7187, "2017-06-20"),
    ("Xô Viết Nghệ Tĩnh, Bình Thạnh", "Hồ Chí Minh", 10.8031, 106.7112, "2018-01-15"),
    ("Phan Xích Long, Phú Nhuận", "Hồ Chí Minh", 10.8005, 106.6871, "2018-09-01"),
    ("Cộng Hòa, Tân Bình", "Hồ Chí Minh", 10.8013, 106.6502, "2019-04-27"),
    ("Võ Văn Ngân, Thủ Đức", "Hồ Chí Minh", 10.8503, 106.7717, "2020-10-10"),
    ("Quang Trung, Gò Vấp", "Hồ Chí Minh", 10.8366, 106.6602, "2021-12-18"),
    ("Tràng Tiền, Hoàn Kiếm", "Hà Nội", 21.0245, 105.8556, "2016-08-08"),
    ("Xuân Thủy, Cầu Giấy", "Hà Nội", 21.0365, 105.7835, "2017-03-03"),
    ("Chùa Bộc, Đống Đa", "Hà Nội", 21.0067, 105.8283, "2018-05-19"),
    ("Bà Triệu, Hai Bà Trưng", "Hà Nội", 21.0112, 105.8491, "2019-07-07"),
    ("Nguyễn Văn Cừ, Long Biên", "Hà Nội", 21.0447, 105.8760, "2021-03-21"),
    ("Mỹ Đình, Nam Từ Liêm", "Hà Nội", 21.0287, 105.7781, "2022-06-11"),
    ("Lê Duẩn, Hải Châu", "Đà Nẵng", 16.0718, 108.2170, "2018-10-20"),
    ("Lạch Tray, Ngô Quyền", "Hải Phòng", 20.8449, 106.6955, "2019-11-02"),
    ("Đường 30/4, Ninh Kiều", "Cần Thơ", 10.0280, 105.7720, "2020-01-09"),
    ("Trần Phú, Nha Trang", "Khánh Hòa", 12.2430, 109.1960, "2020-08-15"),
    ("Lê Lợi, Huế", "Huế", 16.4660, 107.5880, "2021-05-30"),
    ("Phạm Văn Thuận, Biên Hòa", "Đồng Nai", 10.9557, 106.8340, "2022-09-09"),
]

# category -> (price range VND, base names, product lines)
PRODUCT_SPECS: dict[str, tuple[tuple[int, int], list[str], list[str]]] = {
    "backpack": (
        (350_000, 1_800_000),
        [
            "Balo Laptop",
            "Balo Du Lịch",
            "Balo Mini",
            "Balo Học Sinh",
            "Balo Chống Nước",
        ],
        ["Urban", "Classic", "Explorer", "Nomad"],
    ),
    "handbag": (
        (450_000, 2_500_000),
        ["Túi Xách Tay", "Túi Đeo Chéo", "Túi Tote", "Túi Kẹp Nách", "Túi Công Sở"],
        ["Luna", "Saigon", "Hoa Sen", "Signature"],
    ),
    "wallet": (
        (150_000, 900_000),
        ["Ví Da Nam", "Ví Nữ Dài", "Ví Mini", "Ví Đựng Thẻ", "Ví Cầm Tay"],
        ["Basic", "Slim", "Premium", "Vintage"],
    ),
    "shoes": (
        (400_000, 2_200_000),
        ["Giày Sneaker", "Giày Lười", "Sandal", "Giày Chạy Bộ", "Giày Cao Gót"],
        ["Street", "Comfort", "Sport", "Elegant"],
    ),
    "apparel": (
        (150_000, 850_000),
        ["Áo Thun", "Áo Sơ Mi", "Áo Khoác Gió", "Quần Jean", "Váy Liền"],
        ["Basic", "Oversize", "Slim Fit", "Linen"],
    ),
    "accessories": (
        (150_000, 500_000),
        ["Mũ Lưỡi Trai", "Thắt Lưng", "Khăn Choàng", "Móc Khóa Da", "Túi Đựng Mỹ Phẩm"],
        ["Mono", "Classic", "Pastel", "Limited"],
    ),
}

FAMILY_NAMES = [
    ("Nguyễn", 0.38),
    ("Trần", 0.11),
    ("Lê", 0.095),
    ("Phạm", 0.07),
    ("Hoàng", 0.05),
    ("Huỳnh", 0.05),
    ("Phan", 0.045),
    ("Vũ", 0.04),
    ("Võ", 0.04),
    ("Đặng", 0.02),
    ("Bùi", 0.02),
    ("Đỗ", 0.015),
    ("Hồ", 0.015),
    ("Ngô", 0.015),
    ("Dương", 0.01),
    ("Lý", 0.005),
]
MIDDLE_MALE = ["Văn", "Minh", "Đức", "Hữu", "Thanh", "Quốc", "Hoàng", "Gia"]
MIDDLE_FEMALE = ["Thị", "Ngọc", "Thanh", "Minh", "Thu", "Bảo", "Khánh", "Phương"]
GIVEN_MALE = [
    "An",
    "Bình",
    "Dũng",
    "Hùng",
    "Long",
    "Nam",
    "Phúc",
    "Quân",
    "Tú",
    "Khoa",
    "Huy",
    "Tuấn",
    "Sơn",
    "Thắng",
    "Đạt",
    "Hiếu",
    "Khang",
    "Trung",
]
GIVEN_FEMALE = [
    "An",
    "Châu",
    "Hà",
    "Hạnh",
    "Lan",
    "Linh",
    "Mai",
    "Thảo",
    "Trang",
    "Vy",
    "Tú",
    "Ngân",
    "Nhung",
    "Hương",
    "Yến",
    "Quỳnh",
    "Hoa",
    "Phương",
]
EMAIL_DOMAINS = ["example.com", "example.vn", "example.net"]
PHONE_PREFIXES = [
    "90",
    "91",
    "93",
    "94",
    "96",
    "97",
    "98",
    "32",
    "33",
    "34",
    "35",
    "36",
    "37",
    "38",
    "39",
    "70",
    "76",
    "77",
    "78",
    "79",
    "81",
    "82",
    "83",
    "84",
    "85",
    "86",
    "88",
    "89",
]
MALFORMED_EMAILS = [
    "nguyen.van.a@@example.com",
    "tran thi b@example.vn",
    "le.hoang.example.com",
]

# segment -> (share of customers, min orders, max orders)
SEGMENTS: list[tuple[str, float, int, int]] = [
    ("never", 0.12, 0, 0),
    ("lapsed", 0.15, 1, 5),
    ("occasional", 0.35, 1, 2),
    ("regular", 0.28, 3, 15),
    ("frequent", 0.10, 18, 45),
]

SHOP_URL = "https://shop.example.vn"
TRAFFIC_SOURCES: list[tuple[tuple[str, str, str], float]] = [
    (("google", "organic", "(organic)"), 0.30),
    (("google", "cpc", "brand_search"), 0.12),
    (("facebook", "social", "(referral)"), 0.12),
    (("facebook", "cpc", "fb_retargeting"), 0.08),
    (("(direct)", "(none)", "(direct)"), 0.22),
    (("tiktok", "social", "tiktok_shop_video"), 0.09),
    (("newsletter", "email", "weekly_newsletter"), 0.07),
]
DEVICES: list[tuple[tuple[str, str, list[str]], float]] = [
    (("mobile", "Android", ["Chrome", "Samsung Internet"]), 0.38),
    (("mobile", "iOS", ["Safari", "Chrome"]), 0.27),
    (("desktop", "Windows", ["Chrome", "Edge", "Firefox"]), 0.20),
    (("desktop", "Macintosh", ["Safari", "Chrome"]), 0.08),
    (("tablet", "iOS", ["Safari"]), 0.04),
    (("tablet", "Android", ["Chrome"]), 0.03),
]

STORE_IDS = [f"S{i:03d}" for i in range(1, len(STORES) + 1)]
ORDERS_PER_DAY_WINDOW = 730  # ~2 years of order history
WEB_DAYS = 60
LAPSED_QUIET_DAYS = 120  # lapsed customers have nothing in the last 120 days (> 90)


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------


def _ascii_fold(text: str) -> str:
    """Strip Vietnamese diacritics the way people do when typing email addresses."""
    text = text.replace("đ", "d").replace("Đ", "D")
    decomposed = unicodedata.normalize("NFD", text)
    return "".join(ch for ch in decomposed if unicodedata.category(ch) != "Mn")


def _iso_z(ts: dt.datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def _utc_midnight(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day)


def _epoch_micros(ts: dt.datetime) -> int:
    delta = ts - dt.datetime(1970, 1, 1)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _weighted(rng: random.Random, items: list[Any], weights: list[float]) -> Any:
    return rng.choices(items, weights=weights, k=1)[0]


def _local_shop_time(rng: random.Random, day: dt.date) -> dt.datetime:
    """A UTC timestamp inside Vietnamese shopping hours (08:00-22:00 local)."""
    hour = _weighted(
        rng,
        list(range(8, 22)),
        [1, 2, 3, 3, 4, 3, 3, 3, 4, 5, 6, 7, 6, 3],
    )
    local = _utc_midnight(day) + dt.timedelta(hours=hour, minutes=rng.randrange(60), seconds=rng.randrange(60))
    return local - VN_OFFSET


def _insert_scattered(rng: random.Random, good: list[Any], bad: list[Any]) -> list[Any]:
    """Insert bad rows at random positions so they are not all at the end."""
    return _insert_at(good, [(rng.randint(1, max(1, len(good) - 1)), b) for b in bad])


def _insert_at(good: list[Any], placed: list[tuple[int, Any]]) -> list[Any]:
    """Insert each bad row just before ``good[position]`` (``len(good)`` appends)."""
    slots: dict[int, list[Any]] = {}
    for pos, item in placed:
        slots.setdefault(pos, []).append(item)
    out: list[Any] = []
    for i, row in enumerate(good):
        out.extend(slots.get(i, []))
        out.append(row)
    out.extend(slots.get(len(good), []))
    return out


# --------------------------------------------------------------------------------------
# Generators
# --------------------------------------------------------------------------------------


@dataclass
class _Customer:
    customer_id: str
    segment: str
    province: str  # canonical, "" when unknown
    gender: str
    full_name: str
    member_since: dt.date
    budget: bool
    favourite: str  # favourite product category
    home_stores: list[str]
    pseudo_ids: list[str] = field(default_factory=list)


def _make_stores() -> pd.DataFrame:
    rows = [
        (f"S{i:03d}", f"VietBag {suffix}", province, lat, lon, opened)
        for i, (suffix, province, lat, lon, opened) in enumerate(STORES, start=1)
    ]
    df = pd.DataFrame(rows, columns=STORE_COLUMNS)
    df["_source"] = STORES_SOURCE
    df["_row"] = range(1, len(df) + 1)
    return df


def _make_products(rng: random.Random) -> pd.DataFrame:
    rows: list[tuple[str, str, str, int]] = []
    for category in CATEGORIES:
        (lo, hi), bases, lines = PRODUCT_SPECS[category]
        for base in bases:
            for line in lines:
                price = round(rng.uniform(lo, hi) / 1000) * 1000
                # retail prices cluster on x9,000 endings
                price = max(lo, price - price % 10_000 + 9_000) if price % 10_000 else price
                pid = f"P-{len(rows) + 1:03d}"
                rows.append((pid, f"{base} {line}", category, int(price)))
    df = pd.DataFrame(rows, columns=PRODUCT_COLUMNS)
    df["_source"] = PRODUCTS_SOURCE
    df["_row"] = range(1, len(df) + 1)
    return df


def _make_customers(rng: random.Random, n: int, end_date: dt.date, stores: pd.DataFrame) -> list[_Customer]:
    provinces = list(PROVINCES)
    weights = [PROVINCES[p][0] for p in provinces]
    stores_by_province: dict[str, list[str]] = {}
    for sid, prov in zip(stores["store_id"], stores["province"], strict=True):
        stores_by_province.setdefault(str(prov), []).append(str(sid))
    all_stores = [str(s) for s in stores["store_id"]]
    seg_names = [s[0] for s in SEGMENTS]
    seg_weights = [s[1] for s in SEGMENTS]
    fam_names = [f for f, _ in FAMILY_NAMES]
    fam_weights = [w for _, w in FAMILY_NAMES]

    customers: list[_Customer] = []
    for i in range(1, n + 1):
        segment = _weighted(rng, seg_names, seg_weights)
        province = "" if rng.random() < BLANK_PROVINCE_SHARE else _weighted(rng, provinces, weights)
        gender = _weighted(rng, ["female", "male", "other", ""], [0.52, 0.40, 0.02, 0.06])
        female = gender == "female" or (gender in ("other", "") and rng.random() < 0.5)
        middle = rng.choice(MIDDLE_FEMALE if female else MIDDLE_MALE)
        given = rng.choice(GIVEN_FEMALE if female else GIVEN_MALE)
        full_name = f"{_weighted(rng, fam_names, fam_weights)} {middle} {given}"
        earliest_days = {"never": 1, "occasional": 5, "lapsed": 300}.get(segment, 200)
        member_since = end_date - dt.timedelta(days=rng.randint(earliest_days, 6 * 365))
        home_province = HOME_STORE_PROVINCE.get(province, province)
        home = stores_by_province.get(home_province) or all_stores
        k = min(len(home), rng.choice([1, 1, 2]))
        customers.append(
            _Customer(
                customer_id=f"CUS-{i:06d}",
                segment=segment,
                province=province,
                gender=gender,
                full_name=full_name,
                member_since=member_since,
                budget=rng.random() < 0.2,
                favourite=rng.choice(CATEGORIES),
                home_stores=rng.sample(home, k),
            )
        )
    return customers


def _phone(rng: random.Random) -> str:
    prefix = rng.choice(PHONE_PREFIXES)
    rest = f"{rng.randrange(10_000_000):07d}"
    digits = prefix + rest  # 9 national digits without the trunk 0
    form = _weighted(rng, [0, 1, 2, 3, 4], [0.45, 0.2, 0.1, 0.2, 0.05])
    if form == 0:
        return "0" + digits
    if form == 1:
        return "+84" + digits
    if form == 2:
        return "84" + digits
    if form == 3:
        local = "0" + digits
        return f"{local[:3]} {local[3:6]} {local[6:]}"
    return ""


def _email(rng: random.Random, full_name: str, used: set[str]) -> str:
    family, *middle, given = _ascii_fold(full_name).lower().split()
    mid = middle[0] if middle else ""
    domain = _weighted(rng, EMAIL_DOMAINS, [0.5, 0.3, 0.2])
    while True:
        num = rng.randint(1, 9999)
        style = rng.randrange(4)
        if style == 0:
            local = f"{family}.{mid}.{given}{num}"
        elif style == 1:
            local = f"{given}{family}{num}"
        elif style == 2:
            local = f"{given}.{family}{num % 100:02d}"
        else:
            local = f"{family}{given}{num}"
        address = f"{local}@{domain}"
        if address not in used:
            used.add(address)
            # a few people type their address with capitals; still a valid address
            return address.capitalize() if rng.random() < 0.03 else address


def _birthday(rng: random.Random, end_date: dt.date) -> dt.date:
    age_days = rng.randint(18 * 366, 70 * 365)
    return end_date - dt.timedelta(days=age_days)


def _leap_day_birthday(rng: random.Random, end_date: dt.date) -> dt.date:
    """A 29 February birthday for someone aged 18-70, to exercise date handling."""
    years = [
        y
        for y in range(end_date.year - 70, end_date.year - 17)
        if y % 4 == 0 and (y % 100 != 0 or y % 400 == 0) and 18 <= (end_date - dt.date(y, 2, 29)).days // 366 <= 69
    ]
    return dt.date(rng.choice(years), 2, 29)


def _contact_rows(
    rng: random.Random, customers: list[_Customer], end_date: dt.date
) -> tuple[list[list[str]], list[list[str]], dict[str, str]]:
    """Return (good rows, malformed-email rows, truth_province)."""
    used_emails: set[str] = set()
    truth: dict[str, str] = {}
    leap_index = rng.randrange(len(customers))
    good: list[list[str]] = []
    for idx, c in enumerate(customers):
        spelled = rng.choice(PROVINCES[c.province][1]) if c.province else ""
        if c.province:
            truth[c.customer_id] = MERGED_2025.get(c.province, c.province)
        birthday = _leap_day_birthday(rng, end_date) if idx == leap_index else _birthday(rng, end_date)
        good.append(
            _contact_row(
                rng,
                c,
                spelled,
                _email(rng, c.full_name, used_emails),
                birthday,
                end_date,
            )
        )
    bad: list[list[str]] = []
    names = ["Nguyễn Văn A", "Trần Thị B", "Lê Hoàng C"]
    for j, email in enumerate(MALFORMED_EMAILS):
        # fresh loyalty ids that no order references, so quarantining them loses no sales
        c = _Customer(
            customer_id=f"CUS-{len(customers) + j + 1:06d}",
            segment="never",
            province=_weighted(rng, list(PROVINCES), [PROVINCES[p][0] for p in PROVINCES]),
            gender="female" if j == 1 else "male",
            full_name=names[j % len(names)],
            member_since=end_date - dt.timedelta(days=rng.randint(1, 400)),
            budget=False,
            favourite="wallet",
            home_stores=[],
        )
        spelled = rng.choice(PROVINCES[c.province][1])
        bad.append(_contact_row(rng, c, spelled, email, _birthday(rng, end_date), end_date))
    return good, bad, truth


def _contact_row(
    rng: random.Random,
    c: _Customer,
    province_text: str,
    email: str,
    birthday: dt.date,
    end_date: dt.date,
) -> list[str]:
    nps = ""
    if rng.random() < 0.4:
        nps = str(_weighted(rng, list(range(11)), [1, 1, 1, 1, 2, 3, 4, 8, 10, 8, 7]))
    csat = ""
    if rng.random() < 0.35:
        csat = str(_weighted(rng, [1, 2, 3, 4, 5], [1, 2, 5, 10, 8]))
    span = max(0, (end_date - c.member_since).days)
    updated = _utc_midnight(c.member_since + dt.timedelta(days=rng.randint(0, span)))
    updated += dt.timedelta(seconds=rng.randrange(86_400))
    updated = min(updated, _utc_midnight(end_date) + dt.timedelta(hours=16, minutes=59))
    return [
        "",  # contact_id is assigned once the final file order is known
        c.customer_id,
        c.full_name,
        email,
        _phone(rng),
        c.gender,
        birthday.isoformat(),
        province_text,
        "true" if rng.random() < 0.65 else "false",
        "true" if rng.random() < 0.45 else "false",
        "true" if rng.random() < 0.55 else "false",
        c.member_since.isoformat(),
        nps,
        csat,
        _iso_z(updated),
    ]


@dataclass
class _Order:
    customer_id: str
    store_id: str
    channel: str
    ordered_at: dt.datetime
    lines: list[tuple[str, int, int, int]]  # product_id, qty, unit price, line discount
    updated_at: dt.datetime
    order_id: str | None = None

    @property
    def subtotal(self) -> int:
        return sum(q * p for _, q, p, _ in self.lines)

    @property
    def discount(self) -> int:
        return sum(d for *_, d in self.lines)


def _make_orders(
    rng: random.Random,
    customers: list[_Customer],
    products: pd.DataFrame,
    end_date: dt.date,
    scale: float,
) -> list[_Order]:
    by_cat: dict[str, list[tuple[str, int]]] = {c: [] for c in CATEGORIES}
    for pid, cat, price in zip(products["product_id"], products["category"], products["price_vnd"], strict=True):
        by_cat[str(cat)].append((str(pid), int(price)))
    cheap_cats = ["wallet", "accessories", "apparel"]
    cutoff = _utc_midnight(end_date) + dt.timedelta(hours=16, minutes=59, seconds=59)
    history_start = end_date - dt.timedelta(days=ORDERS_PER_DAY_WINDOW - 1)

    def basket(c: _Customer, first_category: str | None = None) -> list[tuple[str, int, int]]:
        if c.budget:
            n_lines = _weighted(rng, [1, 2], [0.55, 0.45])
        else:
            n_lines = _weighted(rng, [1, 2, 3, 4], [0.05, 0.45, 0.38, 0.12])
        chosen: list[tuple[str, int, int]] = []
        seen: set[str] = set()
        while len(chosen) < n_lines:
            if first_category and not chosen:
                cat = first_category
            elif c.budget:
                cat = rng.choice(cheap_cats)
            else:
                cat = c.favourite if rng.random() < 0.35 else rng.choice(CATEGORIES)
            pid, price = rng.choice(by_cat[cat])
            if c.budget and price > 350_000 and not first_category:
                continue
            if pid in seen:
                continue
            seen.add(pid)
            qty = _weighted(rng, [1, 2, 3], [0.85, 0.12, 0.03])
            chosen.append((pid, qty, price))
        return chosen

    def make(c: _Customer, day: dt.date, first_category: str | None = None) -> _Order:
        ordered_at = _local_shop_time(rng, day)
        online = rng.random() < 0.3
        store = rng.choice(c.home_stores) if rng.random() < 0.85 else rng.choice(STORE_IDS)
        items = basket(c, first_category)
        pct = rng.choice([0.05, 0.10, 0.15, 0.20]) if rng.random() < 0.3 else 0.0
        lines = [(pid, q, p, round(q * p * pct / 1000) * 1000) for pid, q, p in items]
        if rng.random() < 0.1:
            updated = ordered_at + dt.timedelta(hours=rng.randint(1, 24 * 20))
        else:
            updated = ordered_at + dt.timedelta(seconds=rng.randint(0, 300))
        return _Order(
            customer_id=c.customer_id,
            store_id=store,
            channel="online" if online else "store",
            ordered_at=ordered_at,
            lines=lines,
            updated_at=min(updated, cutoff),
        )

    orders: list[_Order] = []
    seg = {name: (lo, hi) for name, _, lo, hi in SEGMENTS}
    for c in customers:
        lo, hi = seg[c.segment]
        n = rng.randint(lo, hi)
        if n == 0:
            continue
        start = max(c.member_since, history_start)
        stop = end_date - dt.timedelta(days=LAPSED_QUIET_DAYS) if c.segment == "lapsed" else end_date
        start = min(start, stop)
        span = (stop - start).days
        for _ in range(n):
            orders.append(make(c, start + dt.timedelta(days=rng.randint(0, span))))

    # Guarantee a healthy "recent backpack buyers" audience even at small scales.
    active = [c for c in customers if c.segment in ("occasional", "regular", "frequent")]
    for c in rng.sample(active, min(len(active), max(3, round(40 * scale)))):
        day = end_date - dt.timedelta(days=rng.randint(0, 29))
        orders.append(make(c, max(day, c.member_since), first_category="backpack"))

    orders.sort(key=lambda o: (o.ordered_at, o.customer_id))
    for seq, o in enumerate(orders, start=1):
        o.order_id = f"ORD-{seq:07d}"
    return orders


def _bad_orders(rng: random.Random, good: list[_Order], end_date: dt.date) -> list[tuple[int, tuple[str, _Order]]]:
    """Build the injected orders, each with the index in ``good`` it goes before.

    Each bad order imitates a random good one and sits right behind it, so its
    timestamp fits its neighbours; a duplicate lands a little after its original.
    """
    placed: list[tuple[int, tuple[str, _Order]]] = []

    def clone_like(template: _Order) -> _Order:
        t = template.ordered_at + dt.timedelta(minutes=rng.randint(1, 40))
        price = rng.choice([189_000, 349_000, 459_000, 629_000, 899_000])
        return _Order(
            customer_id=template.customer_id,
            store_id=template.store_id,
            channel=template.channel,
            ordered_at=t,
            lines=[("", 1, price, 0)],
            updated_at=t + dt.timedelta(seconds=rng.randint(0, 300)),
            # well-formed ids past the good range, so only the injected defect stands out
            order_id=f"ORD-{len(good) + len(placed) + 1:07d}",
        )

    n = len(good)
    for _ in range(2):
        idx = rng.randrange(n)
        o = clone_like(good[idx])
        o.order_id = None
        placed.append((idx + 1, ("missing_id", o)))
    for _ in range(3):
        idx = rng.randrange(n)
        o = clone_like(good[idx])
        amount = o.subtotal
        o.lines = [("", 1, -amount, 0)]
        placed.append((idx + 1, ("negative_amount", o)))
    for _ in range(2):
        idx = rng.randrange(n)
        o = clone_like(good[idx])
        day = end_date + dt.timedelta(days=1 + rng.randint(3, 10))
        # shift back to local wall time so the UTC date stays past end_date + 1
        o.ordered_at = _local_shop_time(rng, day) + VN_OFFSET
        o.updated_at = o.ordered_at
        placed.append((idx + 1, ("future_timestamp", o)))
    for idx in rng.sample(range(n // 2, n), 2):
        original = good[idx]
        o = clone_like(original)
        o.order_id = original.order_id
        o.ordered_at = original.ordered_at
        o.updated_at = original.updated_at
        o.lines = [("", 1, original.subtotal + rng.choice([50_000, 120_000, 300_000]), 0)]
        placed.append((rng.randint(idx + 1, min(n, idx + 200)), ("duplicate_id", o)))
    return placed


def _order_frames(
    rng: random.Random, good: list[_Order], end_date: dt.date
) -> tuple[pd.DataFrame, pd.DataFrame, list[InjectedRow]]:
    tagged_good: list[tuple[str, _Order]] = [("", o) for o in good]
    merged: list[tuple[str, _Order]] = _insert_at(tagged_good, _bad_orders(rng, good, end_date))

    order_rows: list[list[Any]] = []
    line_rows: list[list[Any]] = []
    injected: list[InjectedRow] = []
    for rowid, (kind, o) in enumerate(merged, start=1):
        subtotal, discount = o.subtotal, o.discount
        order_rows.append(
            [
                rowid,
                o.order_id,
                o.customer_id,
                o.store_id,
                o.channel,
                _iso_z(o.ordered_at),
                subtotal,
                discount,
                subtotal - discount,
                _iso_z(o.updated_at),
            ]
        )
        if kind:
            injected.append(InjectedRow("orders", kind, ORDERS_SOURCE, rowid))
            continue
        for line_no, (pid, qty, price, disc) in enumerate(o.lines, start=1):
            line_rows.append(
                [
                    len(line_rows) + 1,
                    o.order_id,
                    line_no,
                    pid,
                    qty,
                    price,
                    disc,
                    qty * price - disc,
                    _iso_z(o.updated_at),  # lines change with their order (POS rewrites both)
                ]
            )
    orders = pd.DataFrame(order_rows, columns=[c for c in ORDER_COLUMNS if c != "voucher_code"])
    orders["_source"] = ORDERS_SOURCE
    orders["_row"] = orders["id"]
    lines = pd.DataFrame(line_rows, columns=ORDER_LINE_COLUMNS)
    lines["_source"] = ORDER_LINES_SOURCE
    lines["_row"] = lines["id"]
    return orders, lines, injected


def _contacts_frame(
    rng: random.Random, good: list[list[str]], bad: list[list[str]]
) -> tuple[pd.DataFrame, list[InjectedRow]]:
    merged: list[tuple[bool, list[str]]] = _insert_scattered(rng, [(False, r) for r in good], [(True, r) for r in bad])
    rows: list[list[str]] = []
    injected: list[InjectedRow] = []
    # CRM contact ids follow record creation, not the loyalty numbering.
    offset = 100 + rng.randrange(900)
    for rownum, (is_bad, r) in enumerate(merged, start=1):
        r = list(r)
        r[0] = f"CRM-{offset + rownum:06d}"
        rows.append(r)
        if is_bad:
            injected.append(InjectedRow("contacts", "malformed_email", CONTACTS_SOURCE, rownum))
    df = pd.DataFrame(rows, columns=_BASE_CONTACT_COLUMNS, dtype=object)
    df["_source"] = CONTACTS_SOURCE
    df["_row"] = range(1, len(df) + 1)
    return df, injected


def _web_events(
    rng: random.Random,
    customers: list[_Customer],
    products: pd.DataFrame,
    end_date: dt.date,
    scale: float,
) -> tuple[list[dict[str, Any]], list[tuple[str, int]], list[InjectedRow]]:
    catalogue = list(
        zip(
            products["product_id"],
            products["name"],
            products["category"],
            products["price_vnd"],
            strict=True,
        )
    )
    loggable = [c for c in customers if c.segment != "never" or rng.random() < 0.3]
    login_weights = [{"frequent": 6.0, "regular": 3.0, "occasional": 1.5}.get(c.segment, 0.5) for c in loggable]
    for c in loggable:
        c.pseudo_ids = [
            f"{rng.randrange(10**9, 10**10)}.{rng.randrange(1_600_000_000, 1_760_000_000)}"
            for _ in range(rng.choice([1, 1, 2]))
        ]
    anon_pool = [
        f"{rng.randrange(10**9, 10**10)}.{rng.randrange(1_600_000_000, 1_760_000_000)}"
        for _ in range(max(50, round(5000 * scale)))
    ]
    src_items = [s for s, _ in TRAFFIC_SOURCES]
    src_weights = [w for _, w in TRAFFIC_SOURCES]
    dev_items = [d for d, _ in DEVICES]
    dev_weights = [w for _, w in DEVICES]
    # Local (Vietnam) hours 00-22: daytime and evening dominate. GA4 dates events in the property's
    # time zone, so each daily file holds one Vietnamese business day and nothing after it.
    local_hours = list(range(23))
    hour_weights = [0.5, 0.3, 0.2, 0.2, 0.3, 0.5, 1, 3, 4, 5, 5, 5, 5, 6, 6, 6, 5, 5, 6, 7, 8, 8, 7]
    sessions_per_day = max(5, round(105 * scale))

    per_file: dict[str, list[dict[str, Any]]] = {}
    first_day = end_date - dt.timedelta(days=WEB_DAYS - 1)
    for d in range(WEB_DAYS):
        day = first_day + dt.timedelta(days=d)
        file_events: list[dict[str, Any]] = []
        n_sessions = max(1, round(sessions_per_day * rng.uniform(0.75, 1.3)))
        for _ in range(n_sessions):
            file_events.extend(
                _session(
                    rng,
                    day,
                    catalogue,
                    loggable,
                    login_weights,
                    anon_pool,
                    (src_items, src_weights),
                    (dev_items, dev_weights),
                    (local_hours, hour_weights),
                )
            )
        file_events.sort(key=lambda e: e["event_timestamp"])
        per_file[_web_source(day)] = file_events

    files = list(per_file)
    end_file = _web_source(end_date)
    bad_by_file: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for _ in range(2):
        template = rng.choice(per_file[end_file])
        ev = _bad_copy(template, rng)
        ts = _utc_midnight(end_date + dt.timedelta(days=rng.randint(2, 6)))
        ev["event_timestamp"] = _epoch_micros(ts + dt.timedelta(seconds=rng.randrange(86_400)))
        bad_by_file.setdefault(end_file, []).append(("future_timestamp", ev))
    for _ in range(2):
        fname = rng.choice(files[:-1])
        ev = _bad_copy(rng.choice(per_file[fname]), rng)
        ev["event_name"] = None
        bad_by_file.setdefault(fname, []).append(("missing_event_name", ev))

    events: list[dict[str, Any]] = []
    locations: list[tuple[str, int]] = []
    injected: list[InjectedRow] = []
    for fname in files:
        good = [("", e) for e in per_file[fname]]
        merged = _insert_scattered(rng, good, bad_by_file.get(fname, []))
        for line, (kind, ev) in enumerate(merged, start=1):
            events.append(ev)
            locations.append((fname, line))
            if kind:
                injected.append(InjectedRow("web_events", kind, fname, line))
    return events, locations, injected


def _web_source(day: dt.date) -> str:
    return f"web/events_{day:%Y%m%d}.ndjson"


def _bad_copy(template: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    ev: dict[str, Any] = json.loads(json.dumps(template))
    ev["event_timestamp"] = int(ev["event_timestamp"]) + rng.randint(1, 999_999)
    return ev


def _session(
    rng: random.Random,
    day: dt.date,
    catalogue: list[tuple[Any, Any, Any, Any]],
    loggable: list[_Customer],
    login_weights: list[float],
    anon_pool: list[str],
    sources: tuple[list[tuple[str, str, str]], list[float]],
    devices: tuple[list[tuple[str, str, list[str]]], list[float]],
    hours: tuple[list[int], list[float]],
) -> list[dict[str, Any]]:
    """One visit: start, landing page, some browsing, maybe a cart and a purchase."""
    user_id: str | None = None
    if loggable and rng.random() < 0.4:
        c = rng.choices(loggable, weights=login_weights, k=1)[0]
        user_id = c.customer_id
        pseudo = rng.choice(c.pseudo_ids)
    else:
        pseudo = rng.choice(anon_pool)
    category, os_name, browsers = rng.choices(devices[0], weights=devices[1], k=1)[0]
    device = {
        "category": category,
        "operating_system": os_name,
        "web_info": {"browser": rng.choice(browsers)},
    }
    source, medium, campaign = rng.choices(sources[0], weights=sources[1], k=1)[0]
    hour = rng.choices(hours[0], weights=hours[1], k=1)[0]
    start = (
        _utc_midnight(day)
        - VN_OFFSET
        + dt.timedelta(
            hours=hour,
            minutes=rng.randrange(60),
            seconds=rng.randrange(60),
            microseconds=rng.randrange(1_000_000),
        )
    )
    session_id = int((start - dt.datetime(1970, 1, 1)).total_seconds())
    clock = start
    events: list[dict[str, Any]] = []
    event_date = f"{day:%Y%m%d}"

    def emit(name: str, path: str, items: list[dict[str, Any]]) -> None:
        nonlocal clock
        events.append(
            {
                "event_date": event_date,
                "event_timestamp": _epoch_micros(clock),
                "event_name": name,
                "user_pseudo_id": pseudo,
                "user_id": user_id,
                "device": device,
                "traffic_source": {
                    "source": source,
                    "medium": medium,
                    "name": campaign,
                },
                "event_params": [
                    {
                        "key": "page_location",
                        "value": {"string_value": SHOP_URL + path},
                    },
                    {"key": "ga_session_id", "value": {"int_value": session_id}},
                ],
                "items": items,
            }
        )
        clock += dt.timedelta(seconds=rng.randint(4, 90), microseconds=rng.randrange(1_000_000))

    def item(p: tuple[Any, Any, Any, Any], qty: int = 1) -> dict[str, Any]:
        return {
            "item_id": str(p[0]),
            "item_name": str(p[1]),
            "item_category": str(p[2]),
            "price": float(p[3]),
            "quantity": qty,
        }

    landing = rng.choice(["/", "/", f"/c/{rng.choice(CATEGORIES)}", "/sale"])
    emit("session_start", landing, [])
    emit("page_view", landing, [])
    cart: list[tuple[Any, Any, Any, Any]] = []
    for _ in range(_weighted(rng, [0, 1, 2, 3, 4, 6], [0.25, 0.25, 0.2, 0.15, 0.1, 0.05])):
        if rng.random() < 0.35:
            emit("page_view", f"/c/{rng.choice(CATEGORIES)}", [])
        p = rng.choice(catalogue)
        path = f"/p/{p[0]}"
        emit("page_view", path, [])
        emit("view_item", path, [item(p)])
        if rng.random() < 0.22:
            cart.append(p)
            emit("add_to_cart", path, [item(p)])
    if cart and rng.random() < 0.35:
        emit("page_view", "/checkout", [])
        emit("purchase", "/checkout/thank-you", [item(p) for p in cart])
    return events


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def generate(end_date: dt.date, scale: float = 1.0, seed: int = 42) -> SampleData:
    """Build the whole fake business in memory; pure in ``(end_date, scale, seed)``."""
    if scale <= 0:
        raise ValueError("scale must be positive")
    rng = random.Random(seed)
    stores = _make_stores()
    products = _make_products(rng)
    n_customers = max(60, round(2000 * scale))
    customers = _make_customers(rng, n_customers, end_date, stores)
    good_contacts, bad_contacts, truth = _contact_rows(rng, customers, end_date)
    contacts, contact_bad = _contacts_frame(rng, good_contacts, bad_contacts)
    good_orders = _make_orders(rng, customers, products, end_date, scale)
    orders, order_lines, order_bad = _order_frames(rng, good_orders, end_date)
    web_events, locations, web_bad = _web_events(rng, customers, products, end_date, scale)
    surveys, survey_bad = _survey_frame(random.Random(seed + 1), [c.customer_id for c in customers], end_date)
    # Attributes added after the first release get their own stream, so every earlier value is unchanged.
    extra_rng = random.Random(seed + 2)
    contacts = _contact_attributes(extra_rng, contacts, end_date)
    orders = _voucher_codes(extra_rng, orders)
    return SampleData(
        stores=stores,
        products=products,
        orders=orders,
        order_lines=order_lines,
        contacts=contacts,
        web_events=web_events,
        injected=order_bad + contact_bad + web_bad + survey_bad,
        truth_province=truth,
        end_date=end_date,
        seed=seed,
        scale=scale,
        web_event_locations=locations,
        survey_responses=surveys,
    )


OCCUPATIONS = [
    "office worker",
    "student",
    "teacher",
    "engineer",
    "healthcare worker",
    "self-employed",
    "sales",
    "civil servant",
    "freelancer",
    "homemaker",
    "retired",
]
INCOME_BANDS = ["<10M", "10-20M", "20-40M", ">40M"]  # VND per month
INDUSTRIES = ["retail", "hospitality", "education", "technology", "logistics", "manufacturing", "events"]
COMPANY_SIZES = ["1-9", "10-49", "50-249", "250+"]  # employees
COMPANY_WORDS = ["Minh Phát", "Hoàng Long", "An Khang", "Việt Tiến", "Sao Mai", "Phú Thịnh", "Đại Dương", "Tân Á"]
INTERESTS = ["running", "travel", "fashion", "music", "football", "cooking", "gaming", "photography", "yoga", "reading"]
COMMUTE_MODES = [
    ("motorbike", 0.62),
    ("car", 0.1),
    ("bus", 0.08),
    ("walk", 0.06),
    ("bicycle", 0.05),
    ("ride-hailing", 0.09),
]
VOUCHER_SHARE = 0.15  # of discounted orders
# Where customers of provinces without a store live (city centre), so their nearest store is far away.
PROVINCE_CENTRES = {
    "Bình Dương": (10.9804, 106.6519),
    "Quảng Ninh": (20.9517, 107.0800),
    "Nghệ An": (18.6796, 105.6813),
}
KM_PER_DEGREE = 111.32


def _home_coordinates(rng: random.Random, province: str) -> tuple[float, float] | None:
    """A point 1-25 km from one of the province's stores (or its centre when it has no store)."""
    anchors = [(lat, lon) for _, prov, lat, lon, _ in STORES if prov == province]
    if province in PROVINCE_CENTRES:
        anchors = [PROVINCE_CENTRES[province]]
    if not anchors:
        return None
    lat, lon = rng.choice(anchors)
    km, bearing = rng.uniform(1, 25), rng.uniform(0, 2 * math.pi)
    lat2 = lat + km * math.cos(bearing) / KM_PER_DEGREE
    lon2 = lon + km * math.sin(bearing) / (KM_PER_DEGREE * math.cos(math.radians(lat)))
    return round(lat2, 5), round(lon2, 5)


def _contact_attributes(rng: random.Random, contacts: pd.DataFrame, end_date: dt.date) -> pd.DataFrame:
    """Occupation, income, business details, home coordinates and free interests, as CRM text.

    Like every CRM field they are often blank; business customers (a company buying bags for its staff
    or events) carry company, industry and size, personal ones leave them empty.
    """
    canonical = {spelled: prov for prov, (_, spellings) in PROVINCES.items() for spelled in spellings}
    rows: list[list[str]] = []
    for birthday, province in zip(contacts["birthday"], contacts["province"], strict=True):
        age = (end_date - dt.date.fromisoformat(str(birthday))).days // 365
        business = rng.random() < 0.08
        ctype = "business" if business else ("personal" if rng.random() < 0.94 else "")
        if age < 25:
            job_weights = [2, 6, 1, 1, 0.5, 1, 1, 0.5, 1, 0.3, 0]
        elif age >= 58:
            job_weights = [1, 0, 1, 0.5, 0.5, 2, 0.5, 1, 0.5, 2, 6]
        else:
            job_weights = [6, 0.2, 1.5, 2, 1.5, 2.5, 2, 1.5, 1.5, 1, 0]
        occupation = _weighted(rng, OCCUPATIONS, job_weights) if rng.random() < 0.88 else ""
        married_share = 0.1 if age < 25 else 0.65
        marital = _weighted(
            rng, ["single", "married", "divorced", "widowed"], [1 - married_share, married_share, 0.05, 0.02]
        )
        marital = marital if rng.random() < 0.85 else ""
        income = _weighted(rng, INCOME_BANDS, [0.35, 0.35, 0.2, 0.1]) if rng.random() < 0.8 else ""
        company = industry = size = ""
        if business:
            company = f"Công ty TNHH {rng.choice(COMPANY_WORDS)} {rng.randint(1, 99)}"
            industry = rng.choice(INDUSTRIES)
            size = _weighted(rng, COMPANY_SIZES, [0.4, 0.35, 0.18, 0.07])
        where = _home_coordinates(rng, canonical.get(str(province), "")) if rng.random() < 0.85 else None
        interests = ";".join(sorted(rng.sample(INTERESTS, rng.randint(1, 3)))) if rng.random() < 0.75 else ""
        commute = (
            _weighted(rng, [m for m, _ in COMMUTE_MODES], [w for _, w in COMMUTE_MODES]) if rng.random() < 0.8 else ""
        )
        remote = ("true" if rng.random() < 0.15 else "false") if rng.random() < 0.7 else ""
        rows.append(
            [
                occupation,
                marital,
                income,
                ctype,
                company,
                industry,
                size,
                f"{where[0]:.5f}" if where else "",
                f"{where[1]:.5f}" if where else "",
                interests,
                commute,
                remote,
            ]
        )
    extra = pd.DataFrame(rows, columns=CONTACT_ATTRIBUTE_COLUMNS, index=contacts.index, dtype=object)
    base = contacts[_BASE_CONTACT_COLUMNS]
    lineage = contacts.drop(columns=_BASE_CONTACT_COLUMNS)
    return pd.concat([base, extra, lineage], axis=1)


def _voucher_codes(rng: random.Random, orders: pd.DataFrame) -> pd.DataFrame:
    """Some discounted orders were discounted by a voucher; the code says which campaign."""
    codes: list[str | None] = []
    for discount, ordered_at in zip(orders["discount_vnd"], orders["ordered_at"], strict=True):
        if discount <= 0 or rng.random() >= VOUCHER_SHARE:
            codes.append(None)
            continue
        year, month = int(ordered_at[:4]), int(ordered_at[5:7])
        seasonal = {1: f"TET{year}", 2: f"TET{year}", 11: "BLACKFRIDAY", 12: "XMAS"}.get(month)
        codes.append(seasonal if seasonal and rng.random() < 0.6 else rng.choice(["MEMBER10", "BIRTHDAY", "FREESHIP"]))
    out = orders.copy()
    out.insert(list(out.columns).index("updated_at") + 1, "voucher_code", codes)
    return out


def _survey_frame(
    rng: random.Random, customer_ids: list[str], end_date: dt.date
) -> tuple[pd.DataFrame, list[InjectedRow]]:
    """NPS / CSAT answers exported by the survey tool as their own file (not inside the CRM).

    Uses its own random stream so adding surveys did not change any other generated table.
    """
    rows: list[list[str]] = []
    for cid in customer_ids:
        if rng.random() > 0.35:
            continue
        for _ in range(rng.choice([1, 1, 2, 3])):
            day = end_date - dt.timedelta(days=rng.randint(0, 364))
            at = dt.datetime(day.year, day.month, day.day, rng.randint(1, 14), rng.randint(0, 59)) - VN_OFFSET
            nps = (
                str(rng.choices(range(11), weights=[1, 1, 1, 1, 2, 3, 4, 6, 9, 8, 6])[0]) if rng.random() < 0.8 else ""
            )
            csat = str(rng.choices(range(1, 6), weights=[1, 2, 4, 8, 6])[0]) if not nps or rng.random() < 0.5 else ""
            rows.append([cid, _iso_z(at), nps, csat])
    rows.sort(key=lambda r: r[1])
    frame = pd.DataFrame(rows, columns=["customer_id", "answered_at", "nps_score", "csat_score"])
    frame.insert(0, "response_id", [f"SRV-{i:06d}" for i in range(1, len(frame) + 1)])
    injected: list[InjectedRow] = []
    positions = rng.sample(range(len(frame)), 2)
    for pos, (score, bad, kind) in zip(  # answers outside the scale
        positions, (("nps_score", "11", "nps_out_of_range"), ("csat_score", "0", "csat_out_of_range")), strict=True
    ):
        frame.loc[pos, score] = bad
        injected.append(InjectedRow("survey_responses", kind, SURVEYS_SOURCE, pos + 1))
    frame["_source"] = SURVEYS_SOURCE
    frame["_row"] = range(1, len(frame) + 1)
    return frame, injected


def injected_counts(data: SampleData) -> dict[str, int]:
    """Bad rows per kind (summed over tables), so the CLI can report what to expect."""
    return dict(sorted(Counter(r.kind for r in data.injected).items()))


def _records(df: pd.DataFrame, columns: list[str]) -> list[tuple[Any, ...]]:
    """Plain Python values for sqlite3 (which rejects numpy scalars and NaN)."""
    out: list[tuple[Any, ...]] = []
    for row in df[columns].itertuples(index=False, name=None):
        out.append(
            tuple(
                None if isinstance(v, float) and math.isnan(v) else (v.item() if hasattr(v, "item") else v) for v in row
            )
        )
    return out


def _write_sqlite(data: SampleData, path: pathlib.Path) -> None:
    path.unlink(missing_ok=True)
    con = sqlite3.connect(path)
    try:
        con.executescript(
            """
            CREATE TABLE stores(store_id TEXT PRIMARY KEY, name TEXT, province TEXT,
                latitude REAL, longitude REAL, opened_on TEXT);
            CREATE TABLE products(product_id TEXT PRIMARY KEY, name TEXT, category TEXT,
                price_vnd INTEGER);
            CREATE TABLE orders(id INTEGER PRIMARY KEY, order_id TEXT, customer_id TEXT,
                store_id TEXT, channel TEXT, ordered_at TEXT, subtotal_vnd INTEGER,
                discount_vnd INTEGER, total_vnd INTEGER, updated_at TEXT, voucher_code TEXT);
            CREATE TABLE order_lines(id INTEGER PRIMARY KEY, order_id TEXT, line_no INTEGER,
                product_id TEXT, quantity INTEGER, unit_price_vnd INTEGER,
                discount_vnd INTEGER, line_total_vnd INTEGER, updated_at TEXT);
            """
        )
        for table, frame, cols in (
            ("stores", data.stores, STORE_COLUMNS),
            ("products", data.products, PRODUCT_COLUMNS),
            ("orders", data.orders, ORDER_COLUMNS),
            ("order_lines", data.order_lines, ORDER_LINE_COLUMNS),
        ):
            marks = ",".join("?" * len(cols))
            con.executemany(
                f"INSERT INTO {table}({','.join(cols)}) VALUES ({marks})",
                _records(frame, cols),
            )
        con.commit()
    finally:
        con.close()


def write(data: SampleData, out_dir: pathlib.Path) -> dict[str, int]:
    """Write all source files, replacing earlier output so reruns are idempotent."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_sqlite(data, out_dir / "pos.sqlite")

    crm = out_dir / "crm"
    crm.mkdir(exist_ok=True)
    with (crm / "contacts.csv").open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(CONTACT_COLUMNS)
        writer.writerows(data.contacts[CONTACT_COLUMNS].itertuples(index=False, name=None))

    with (crm / "surveys.csv").open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(SURVEY_COLUMNS)
        writer.writerows(data.survey_responses[SURVEY_COLUMNS].itertuples(index=False, name=None))

    web = out_dir / "web"
    web.mkdir(exist_ok=True)
    for old in web.glob("events_*.ndjson"):  # drop days left over from another end_date
        old.unlink()
    lines_by_file: dict[str, list[str]] = {}
    for ev, (source, _row) in zip(data.web_events, data.web_event_locations, strict=True):
        lines_by_file.setdefault(source, []).append(json.dumps(ev, ensure_ascii=False))
    for source, lines in lines_by_file.items():
        (out_dir / source).write_text("\n".join(lines) + "\n", encoding="utf-8")

    counts = {
        "stores": len(data.stores),
        "products": len(data.products),
        "orders": len(data.orders),
        "order_lines": len(data.order_lines),
        "contacts": len(data.contacts),
        "web_events": len(data.web_events),
        "survey_responses": len(data.survey_responses),
    }
    manifest = {
        "end_date": data.end_date.isoformat(),
        "seed": data.seed,
        "scale": data.scale,
        "injected": [{"table": r.table, "kind": r.kind, "source": r.source, "row": r.row} for r in data.injected],
        "injected_counts": injected_counts(data),
        "rows_written": counts,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return counts
