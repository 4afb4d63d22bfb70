"""Synthetic lake for the segment-engine benchmark (issue 4), generated fast and cached on disk.

The demo generator (``tasks.sample``) builds a believable business row by row in Python, which is
right for the demo and far too slow for 100 M purchase lines. This module draws the same *shapes*
(the columns ``compute_features`` and the rule compiler read) with vectorised numpy/pyarrow, in
bounded chunks written as separate Parquet files, so even size L never holds a whole table in
memory. Values only need realistic cardinalities and skew (few heavy buyers, many one-off ones,
anonymous web traffic, a small share of rows after the run's as-of instant) so the engines do the
work they would do on real data.

One lake serves both the feature stage (which reads the sources) and the segment stage (which reads
what unify writes). Orders and lines take the unified shape, which costs the sources' readers
nothing: in time order across their files (the segment stage names ``customer_id`` ``customer_key``
through a view). Web events are written twice: ``web_events`` as the source delivers them (time
order), and ``unified_web_events`` as unify writes them, in (event_name, event_at) order with
``customer_key`` and ``page_path``. One copy cannot serve both: in name order the feature stage's
per-session aggregation holds each session in several partial groups (400 MiB more at M).

Run ``python -m bench.segdata --size S`` to generate (or reuse) one size; the benchmark calls
:func:`ensure` itself. Output: ``var/bench/data/<size>/<table>/part-NNNNN.parquet``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "var" / "bench" / "data"
RUN_DATE = date(2026, 11, 24)
TZ = ZoneInfo("Asia/Ho_Chi_Minh")
SEED = 4
FORMAT_VERSION = 5  # bump when the shapes change, so stale caches are regenerated
SHOP_URL = "https://shop.example.vn"
TABLES = ("customers", "orders", "purchases", "web_events", "stores", "survey_responses")
UNIFIED_EVENTS = "unified_web_events"  # the web events as unify writes them, for the segment stage

# Rows per chunk: a chunk is generated, written as one file and dropped, which bounds memory.
ORDER_CHUNK = 2_000_000
EVENT_CHUNK = 5_000_000
ROW_GROUP = 1_000_000


@dataclass(frozen=True)
class Size:
    name: str
    customers: int
    lines: int  # POS purchase lines (the purchases view); orders are about lines / 2.3
    events: int  # web events


SIZES = {
    "S": Size("S", 100_000, 2_000_000, 5_000_000),
    "M": Size("M", 1_000_000, 20_000_000, 50_000_000),
    "L": Size("L", 5_000_000, 100_000_000, 250_000_000),
}
LINES_PER_ORDER = 2.3

CATEGORIES = ["backpack", "handbag", "wallet", "shoes", "apparel", "accessories"]
N_PRODUCTS = 600
PROVINCES = ["Hồ Chí Minh", "Hà Nội", "Đà Nẵng", "Hải Phòng", "Cần Thơ", "Khánh Hòa", "Đồng Nai", "Huế"]
PROVINCE_WEIGHTS = [0.36, 0.24, 0.1, 0.08, 0.07, 0.06, 0.05, 0.04]
PROVINCE_CENTRES = [
    (10.7769, 106.7009),
    (21.0285, 105.8542),
    (16.0544, 108.2022),
    (20.8449, 106.6881),
    (10.0452, 105.7469),
    (12.2388, 109.1967),
    (10.9574, 106.8426),
    (16.4637, 107.5909),
]
STORES_PER_PROVINCE = [10, 8, 3, 2, 2, 2, 2, 1]
EVENT_NAMES = ["page_view", "view_item", "add_to_cart", "select_promotion", "cta_click", "purchase"]
EVENT_WEIGHTS = [0.46, 0.34, 0.1, 0.04, 0.03, 0.03]
PRODUCT_EVENTS = {"view_item", "add_to_cart", "purchase"}
DEVICES = ["mobile", "desktop", "tablet"]
BROWSERS = ["Chrome", "Safari", "Edge", "Firefox", "Samsung Internet"]
SOURCES = ["google", "facebook", "(direct)", "zalo", "tiktok", "email"]
ORDER_DAYS = 3 * 365  # orders span three years before the run date
EVENT_DAYS = 120  # web events span four months (GA-style retention)
FUTURE_SHARE = 0.005  # rows after the as-of instant, which every engine must ignore


def as_of() -> datetime:
    """Start of the day after the run date in the business time zone, as a UTC instant."""
    return datetime.combine(RUN_DATE + timedelta(days=1), datetime.min.time(), tzinfo=TZ).astimezone(UTC)


def _micros(at: datetime) -> int:
    return int(at.timestamp()) * 1_000_000


def _prefixed(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    """Ids such as ``CUS-00000042`` built in Arrow (no Python loop over rows)."""
    digits = pc.utf8_lpad(pa.array(numbers).cast(pa.string()), width=width, padding="0")
    return pc.binary_join_element_wise(prefix, digits, "")


def _pick(values: list[str], idx: np.ndarray, null: np.ndarray | None = None) -> pa.Array:
    """Plain (not dictionary) strings, so pandas reads them as strings, not categoricals."""
    indices = pa.array(idx.astype(np.int32), mask=null)
    return pc.take(pa.array(values, pa.string()), indices)


def _timestamps(micros: np.ndarray) -> pa.Array:
    return pa.array(micros.astype(np.int64), pa.timestamp("us", tz="UTC"))


def _spread_times(rng: np.random.Generator, n: int, days: int, part: tuple[int, int] = (0, 1)) -> np.ndarray:
    """Instants in the ``days`` before as-of, denser towards the run date, a few after it; ascending.

    ``part = (i, k)`` draws the i-th of k consecutive slices of that spread (the oldest first), so a
    table written in k chunks is in time order across its files, as the lake's unified tables are
    (tasks/unify/profiles.py), and a windowed rule can skip the row groups outside its window. Rows
    after as-of go to the last slice.
    """
    i, k = part
    end = _micros(as_of())
    span = days * 86_400_000_000
    # back = span * u ** 1.3 falls as u rises, so the oldest slice is the top of u's range
    u = (k - 1 - i + rng.random(n)) / k
    out = np.sort(end - 1 - (span * u**1.3).astype(np.int64))
    if i == k - 1:
        future = int((rng.random(n) < FUTURE_SHARE).sum())
        out[n - future :] = np.sort(end + rng.integers(0, 86_400_000_000, future))
    return out


def _skewed(rng: np.random.Generator, n: int, high: int, power: float) -> np.ndarray:
    """Indices in [0, high) with a heavy head: a few customers or products get most rows."""
    return np.minimum((high * rng.random(n) ** power).astype(np.int64), high - 1)


def _products(rng: np.random.Generator) -> tuple[list[str], np.ndarray, np.ndarray]:
    ids = [f"P-{i:04d}" for i in range(N_PRODUCTS)]
    category = rng.integers(0, len(CATEGORIES), N_PRODUCTS)
    price = rng.integers(10, 250, N_PRODUCTS) * 10_000
    return ids, category, price


def _stores() -> pa.Table:
    rng = np.random.default_rng(SEED + 1)
    rows: list[tuple[str, float, float, date]] = []
    for (lat, lon), count in zip(PROVINCE_CENTRES, STORES_PER_PROVINCE, strict=True):
        for _ in range(count):
            opened = date(2016, 1, 1) + timedelta(days=int(rng.integers(0, 3900)))
            rows.append((f"S{len(rows) + 1:03d}", lat + rng.normal(0, 0.04), lon + rng.normal(0, 0.04), opened))
    ids, lats, lons, opened_on = zip(*rows, strict=True)
    return pa.table(
        {
            "store_id": pa.array(ids),
            "name": pa.array([f"VietBag {s}" for s in ids]),
            "latitude": pa.array(lats, pa.float64()),
            "longitude": pa.array(lons, pa.float64()),
            "opened_on": pa.array(opened_on, pa.date32()),
        }
    )


def _customers(rng: np.random.Generator, n: int) -> pa.Table:
    """The unified profile (``unified/customers``) with the configured CRM attributes."""
    num = np.arange(n)
    keys = _prefixed("CUS-", num, 8)
    province = rng.choice(len(PROVINCES), n, p=PROVINCE_WEIGHTS)
    centres = np.array(PROVINCE_CENTRES)
    located = rng.random(n) < 0.8
    lat = centres[province, 0] + rng.normal(0, 0.08, n)
    lon = centres[province, 1] + rng.normal(0, 0.08, n)
    epoch = date(1970, 1, 1)
    birthday = (date(1960, 1, 1) - epoch).days + rng.integers(0, 45 * 365, n)
    member_since = (date(2016, 1, 1) - epoch).days + rng.integers(0, (RUN_DATE - date(2016, 1, 1)).days, n)
    nps = rng.integers(0, 11, n)
    csat = rng.integers(1, 6, n)
    business = rng.random(n) < 0.05
    interests = ["running", "travel", "running;travel", "office", "school", "hiking;running"]
    return pa.table(
        {
            "customer_key": keys,
            "customer_id": keys,
            "full_name": _prefixed("Customer ", num, 1),
            "email": pc.binary_join_element_wise(_prefixed("user", num, 1), "@example.vn", ""),
            "phone": _prefixed("+849", num, 8),
            "gender": _pick(["female", "male", "other"], rng.choice(3, n, p=[0.55, 0.42, 0.03]), rng.random(n) < 0.1),
            "birthday": pa.array(birthday.astype(np.int32), pa.date32(), mask=rng.random(n) < 0.15),
            "province": _pick(PROVINCES, province, rng.random(n) < 0.04),
            "email_opt_in": pa.array(rng.random(n) < 0.6),
            "sms_opt_in": pa.array(rng.random(n) < 0.4),
            "ads_opt_in": pa.array(rng.random(n) < 0.5),
            "member_since": pa.array(member_since.astype(np.int32), pa.date32()),
            "nps_latest": pa.array(nps, pa.int64(), mask=rng.random(n) < 0.7),
            "csat_latest": pa.array(csat, pa.int64(), mask=rng.random(n) < 0.7),
            "occupation": _pick(["office", "student", "self-employed", "retired"], rng.integers(0, 4, n)),
            "marital_status": _pick(["single", "married"], rng.integers(0, 2, n), rng.random(n) < 0.3),
            "income_band": _pick(["low", "middle", "high"], rng.integers(0, 3, n), rng.random(n) < 0.3),
            "customer_type": _pick(["personal", "business"], business.astype(np.int64)),
            "company": _pick(["Công ty ABC", "VinaTech", "Saigon Trading"], rng.integers(0, 3, n), ~business),
            "industry": _pick(["retail", "software", "logistics"], rng.integers(0, 3, n), ~business),
            "company_size": _pick(["1-10", "11-50", "51-200"], rng.integers(0, 3, n), ~business),
            "latitude": pa.array(lat, pa.float64(), mask=~located),
            "longitude": pa.array(lon, pa.float64(), mask=~located),
            "interests": _pick(interests, rng.integers(0, len(interests), n), rng.random(n) < 0.5),
            "commute_mode": _pick(["motorbike", "car", "bus", "walk", "bicycle"], rng.integers(0, 5, n)),
            "works_remotely": pa.array(rng.random(n) < 0.2, mask=rng.random(n) < 0.5),
        }
    )


def _order_chunks(rng: np.random.Generator, size: Size, keys: pa.Array) -> Iterator[tuple[pa.Table, pa.Table]]:
    """(orders, purchase lines) per chunk; lines of an order share its customer and time."""
    product_ids, product_cat, product_price = _products(np.random.default_rng(SEED + 2))
    n_orders = round(size.lines / LINES_PER_ORDER)
    buyers = int(size.customers * 0.7)  # the rest never bought (prospects)
    store_ids = [f"S{i + 1:03d}" for i in range(sum(STORES_PER_PROVINCE))]
    cat_names = pa.array(CATEGORIES)
    chunks = -(-n_orders // ORDER_CHUNK)
    for start in range(0, n_orders, ORDER_CHUNK):
        n = min(ORDER_CHUNK, n_orders - start)
        customer = _skewed(rng, n, buyers, 1.8)
        guest = rng.random(n) < 0.03
        at = _spread_times(rng, n, ORDER_DAYS, (start // ORDER_CHUNK, chunks))
        online = rng.random(n) < 0.3
        per_order = 1 + rng.poisson(LINES_PER_ORDER - 1, n)
        order_of_line = np.repeat(np.arange(n), per_order)
        product = _skewed(rng, len(order_of_line), N_PRODUCTS, 1.5)
        qty = 1 + rng.poisson(0.2, len(order_of_line))
        line_total = product_price[product] * qty
        starts = np.concatenate([[0], np.cumsum(per_order)[:-1]])
        subtotal = np.add.reduceat(line_total, starts)
        discounted = rng.random(n) < 0.3
        discount = np.where(discounted, (subtotal * 0.1 // 1000 * 1000).astype(np.int64), 0)
        customer_ids = pc.take(keys, pa.array(customer, mask=guest))
        order_ids = _prefixed("ORD-", np.arange(start, start + n), 10)
        no_voucher = ~(discounted & (rng.random(n) < 0.5))  # " " is a blank code: no voucher
        vouchers = _pick(["WELCOME10", "TET2026", "FLASH", " "], rng.integers(0, 4, n), no_voucher)
        orders = pa.table(
            {
                "order_id": order_ids,
                "customer_id": customer_ids,
                "store_id": _pick(store_ids, rng.integers(0, len(store_ids), n), online),
                "channel": _pick(["store", "online"], online.astype(np.int64)),
                "ordered_at": _timestamps(at),
                "subtotal_vnd": pa.array(subtotal, pa.int64()),
                "discount_vnd": pa.array(discount, pa.int64()),
                "total_vnd": pa.array(subtotal - discount, pa.int64()),
                "voucher_code": vouchers,
            }
        )
        line_idx = pa.array(order_of_line)
        lines = pa.table(
            {
                "customer_key": pc.take(customer_ids, line_idx),
                "order_id": pc.take(order_ids, line_idx),
                "ordered_at": _timestamps(at[order_of_line]),
                "product_id": _pick(product_ids, product),
                "category": pc.take(cat_names, pa.array(product_cat[product])),
                "line_total_vnd": pa.array(line_total, pa.int64()),
            }
        )
        yield orders, lines


def _event_chunks(rng: np.random.Generator, size: Size, keys: pa.Array) -> Iterator[pa.Table]:
    """Web events in sessions (landing page first), 45 % of sessions by a logged-in customer."""
    product_ids, product_cat, _ = _products(np.random.default_rng(SEED + 2))
    pages = ["/", "/sale", "/checkout", *(f"/c/{c}" for c in CATEGORIES), *(f"/p/{p}" for p in product_ids)]
    urls = [SHOP_URL + p + ("?utm_source=ads" if i % 7 == 3 else "") for i, p in enumerate(pages)]
    first_product_page = 3 + len(CATEGORIES)
    buyers = int(size.customers * 0.9)
    session_base = 0
    chunks = -(-size.events // EVENT_CHUNK)
    for start in range(0, size.events, EVENT_CHUNK):
        n = min(EVENT_CHUNK, size.events - start)
        lengths = 1 + rng.poisson(5, n // 4 + 10)
        lengths = lengths[: int(np.searchsorted(np.cumsum(lengths), n)) + 1]
        n_sess = len(lengths)
        session = np.repeat(np.arange(n_sess), lengths)[:n]
        first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        pos = np.arange(n) - first[session]
        logged_in = rng.random(n_sess) < 0.45
        user = _skewed(rng, n_sess, buyers, 1.6)
        sess_start = _spread_times(rng, n_sess, EVENT_DAYS, (start // EVENT_CHUNK, chunks))
        at = sess_start[session] + pos * rng.integers(4_000_000, 90_000_000, n)
        name_idx = rng.choice(len(EVENT_NAMES), n, p=EVENT_WEIGHTS)
        names = np.array(EVENT_NAMES, dtype=object)[name_idx]
        is_start = pos == 0
        product = _skewed(rng, n, N_PRODUCTS, 1.5)
        on_product = np.isin(name_idx, [EVENT_NAMES.index(e) for e in PRODUCT_EVENTS]) & ~is_start
        landing_p = [0.4, 0.15, 0.0] + [0.45 / len(CATEGORIES)] * len(CATEGORIES)  # home, sale, categories
        landing = rng.choice(first_product_page, n_sess, p=landing_p)
        browsing = np.where(rng.random(n) < 0.5, first_product_page + product, rng.integers(0, first_product_page, n))
        page = np.where(on_product, first_product_page + product, browsing)
        page = np.where(pos <= 1, landing[session], page)  # session_start and the first page_view: landing page
        names = np.where(is_start, "session_start", np.where(pos == 1, "page_view", names))
        on_product &= pos > 1
        user_idx = pa.array(user[session], mask=~logged_in[session])
        pseudo = np.where(logged_in[session], user[session] * 2 + (session % 2), 10**9 + session_base + session)
        yield pa.table(
            {
                "user_id": pc.take(keys, user_idx),
                "user_pseudo_id": _prefixed("PSE-", pseudo, 10),
                "session_id": pa.array(1_700_000_000 + session_base + session, pa.int64()),
                "event_at": _timestamps(at),
                "event_name": pa.array(names, pa.string()),
                "page_location": _pick(urls, page),
                "page_path": _pick(pages, page),  # as unify extracts it (tasks/normalize/url.py)
                "item_ids": _pick(product_ids, product, ~on_product),
                "item_categories": _pick(CATEGORIES, product_cat[product], ~on_product),
                "device_category": _pick(DEVICES, rng.choice(3, n_sess, p=[0.7, 0.25, 0.05])[session]),
                "browser": _pick(BROWSERS, rng.integers(0, len(BROWSERS), n_sess)[session]),
                "traffic_source": _pick(SOURCES, rng.integers(0, len(SOURCES), n_sess)[session]),
            }
        ).sort_by([("event_at", "ascending")])  # sessions overlap: sorted into time order, as exports deliver events
        session_base += n_sess


def _surveys(rng: np.random.Generator, keys: pa.Array) -> pa.Table:
    n = len(keys) // 5
    who = rng.integers(0, len(keys), n)
    return pa.table(
        {
            "customer_id": pc.take(keys, pa.array(who)),
            "answered_at": _timestamps(_spread_times(rng, n, 2 * 365)),
            "nps_score": pa.array(rng.integers(0, 11, n), pa.int64(), mask=rng.random(n) < 0.3),
            "csat_score": pa.array(rng.integers(1, 6, n), pa.int64(), mask=rng.random(n) < 0.3),
        }
    )


def _write(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=ROW_GROUP)


def generate(size: Size, out: Path) -> dict[str, int]:
    """Write every table of ``size`` under ``out``; returns row counts."""
    rng = np.random.default_rng(SEED)
    counts = dict.fromkeys(TABLES, 0)
    customers = _customers(rng, size.customers)
    keys = customers["customer_key"].combine_chunks()
    _write(out / "customers" / "part-00000.parquet", customers)
    counts["customers"] = customers.num_rows
    del customers
    stores = _stores()
    _write(out / "stores" / "part-00000.parquet", stores)
    counts["stores"] = stores.num_rows
    surveys = _surveys(rng, keys)
    _write(out / "survey_responses" / "part-00000.parquet", surveys)
    counts["survey_responses"] = surveys.num_rows
    for i, (orders, lines) in enumerate(_order_chunks(rng, size, keys)):
        _write(out / "orders" / f"part-{i:05d}.parquet", orders)
        _write(out / "purchases" / f"part-{i:05d}.parquet", lines)
        counts["orders"] += orders.num_rows
        counts["purchases"] += lines.num_rows
    names = sorted({*EVENT_NAMES, "session_start"})
    counts[UNIFIED_EVENTS] = 0
    for i, events in enumerate(_event_chunks(rng, size, keys)):
        # The source's events in time order, as an analytics export delivers them; the feature stage
        # reads these (tasks/features/build.py reads the source, not unify's copy).
        _write(out / "web_events" / f"part-{i:05d}.parquet", events.drop_columns(["page_path"]))
        # unified/web_events: keyed by customer_key and in (event_name, event_at) order. One file per
        # event name and time slice gives that order without sorting 50M rows here.
        unified = events.rename_columns(["customer_key" if c == "user_id" else c for c in events.column_names])
        for n, name in enumerate(names):
            part = unified.filter(pc.equal(unified["event_name"], name))
            _write(out / UNIFIED_EVENTS / f"part-{n:02d}-{i:05d}.parquet", part)
            counts[UNIFIED_EVENTS] += part.num_rows
        counts["web_events"] += events.num_rows
    return counts


def ensure(name: str) -> tuple[Path, dict[str, object]]:
    """The data directory of size ``name``, generated unless a complete cache of this version exists.

    The marker file is written last, so an interrupted generation is redone rather than reused.
    """
    size = SIZES[name]
    out = DATA_DIR / name
    marker = out / "_generated.json"
    if marker.is_file():
        info: dict[str, object] = json.loads(marker.read_text())
        if info.get("version") == FORMAT_VERSION and info.get("size") == asdict(size):
            info["cached"] = True
            return out, info
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    counts = generate(size, out)
    info = {
        "version": FORMAT_VERSION,
        "size": asdict(size),
        "seed": SEED,
        "rows": counts,
        "seconds": round(time.perf_counter() - started, 2),
        "bytes": sum(f.stat().st_size for f in out.rglob("*.parquet")),
    }
    marker.write_text(json.dumps(info, indent=2))
    info["cached"] = False
    return out, info


def files(data: Path, table: str) -> str:
    """Glob of one table's Parquet files, as DuckDB and Ibis read it."""
    return str(data / table / "*.parquet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="S")
    args = parser.parse_args()
    out, info = ensure(args.size)
    print(json.dumps({"dir": str(out), **info}, indent=2))


if __name__ == "__main__":
    main()
