"""The same segment definitions give the same customers on DuckDB (default) and on Spark.

Every segment in the repository's config/segments.yaml runs on both engines, plus hand-picked rules
that use every operator and every rule kind of the rule language, with values sitting exactly on
business-day and case boundaries where engines tend to disagree (time zones, LIKE wildcards,
Vietnamese upper/lower case, NULL vs empty text).
"""

from __future__ import annotations

import random
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from pydantic import BaseModel

from tasks import settings
from tasks.features import catalog
from tasks.features.catalog import FEATURES
from tasks.segments.engines import connect, evaluate_memberships
from tasks.segments.evaluate import load_segments
from tasks.segments.rules import OPERATORS, Compare, Count, Rule, Segment
from tasks.segments.windows import Window
from tasks.settings import RunWindow

TZ = ZoneInfo("Asia/Ho_Chi_Minh")
RUN_DATE = date(2026, 11, 24)
WINDOW = RunWindow(RUN_DATE, TZ)
N_CUSTOMERS = 50

# Rules exercising every operator and rule kind; names ending in "_none" are expected to match nobody.
EXTRA_RULES: dict[str, dict[str, Any]] = {
    "orders_eq_0": {"field": "orders", "op": "eq", "value": 0},
    "gender_eq": {"field": "gender", "op": "eq", "value": "female"},
    "opt_in_eq_true": {"field": "email_opt_in", "op": "eq", "value": True},
    "opt_in_ne_true": {"field": "sms_opt_in", "op": "ne", "value": True},
    "channel_ne": {"field": "preferred_channel", "op": "ne", "value": "store"},
    "orders_gt": {"field": "orders", "op": "gt", "value": 2},
    "aov_gte_float": {"field": "avg_order_value", "op": "gte", "value": 450_000.5},
    "recency_lt": {"field": "recency_days", "op": "lt", "value": 30},
    "recency_lte": {"field": "recency_days", "op": "lte", "value": 29},
    "birthday_lt_date": {"field": "birthday", "op": "lt", "value": date(1990, 1, 1)},
    "member_since_gte_date": {"field": "member_since", "op": "gte", "value": date(2024, 6, 1)},
    # Local midnight of 2026-11-01 is 2026-10-31T17:00Z; customers sit one second either side of it.
    "last_purchase_gte_local_day": {"field": "last_purchase_at", "op": "gte", "value": date(2026, 11, 1)},
    "last_purchase_lt_local_day": {"field": "last_purchase_at", "op": "lt", "value": date(2026, 11, 1)},
    "first_purchase_between_days": {
        "field": "first_purchase_at",
        "op": "between",
        "value": [date(2025, 6, 1), date(2026, 6, 1)],
    },
    "province_in_aliases": {"field": "province", "op": "in", "value": ["TP.HCM", "Ha Noi", "Sài Gòn"]},
    "province_not_in": {"field": "province", "op": "not_in", "value": ["Hồ Chí Minh"]},
    "birth_month_in": {"field": "birth_month", "op": "in", "value": [1, 2, 12]},
    "nps_not_in": {"field": "nps_latest", "op": "not_in", "value": [9, 10]},
    "recency_between": {"field": "recency_days", "op": "between", "value": [0, 90]},
    "discount_between_float": {"field": "discount_share", "op": "between", "value": [0.25, 0.5]},
    "age_between": {"field": "age", "op": "between", "value": [25, 40]},
    # Vietnamese upper case must fold to the lower case the data holds (Ễ -> ễ) on both engines.
    "name_contains_upper_vi": {"field": "full_name", "op": "contains", "value": "NGUYỄN"},
    "email_contains_case": {"field": "email", "op": "contains", "value": "EXAMPLE.VN"},
    # "_" and "%" are LIKE wildcards: a backend that compiles contains to LIKE without escaping differs.
    "email_contains_underscore": {"field": "email", "op": "contains", "value": "_"},
    "email_contains_percent_none": {"field": "email", "op": "contains", "value": "%"},
    "email_contains_hostile_none": {"field": "email", "op": "contains", "value": "x'); DROP TABLE t; --"},
    "email_is_set": {"field": "email", "op": "is_set"},
    "email_is_not_set": {"field": "email", "op": "is_not_set"},
    "recency_is_set": {"field": "recency_days", "op": "is_set"},
    "birthday_is_not_set": {"field": "birthday", "op": "is_not_set"},
    "not_repeat": {"not": {"field": "orders", "op": "gte", "value": 3}},
    "not_over_nulls": {"not": {"field": "recency_days", "op": "gt", "value": 60}},
    "any_lapsed_or_never": {
        "any": [{"field": "orders", "op": "eq", "value": 0}, {"field": "recency_days", "op": "gt", "value": 180}]
    },
    "all_buyer_opted_in": {
        "all": [
            {"field": "orders", "op": "gte", "value": 1},
            {"field": "email_opt_in", "op": "eq", "value": True},
            {"not": {"purchased": {"category": "wallet"}}},
        ]
    },
    "purchased_backpack_30d": {"purchased": {"category": "backpack", "within": {"last_days": 30}}},
    "purchased_today": {"purchased": {"category": ["BACKPACK", "wallet", "hat"], "within": {"last_days": 1}}},
    "purchased_product_ever": {"purchased": {"product": ["P1", "P3"]}},
    "purchased_min_orders": {"purchased": {"category": ["backpack", "wallet"], "min_orders": 2}},
    "purchased_product_365d_min2": {
        "purchased": {"product": ["P2"], "category": "wallet", "within": {"last_days": 365}, "min_orders": 2}
    },
    "purchased_never_in_90d": {"purchased": {"within": {"last_days": 90}, "orders": {"eq": 0}}},
    "purchased_spend_range": {"purchased": {"category": "backpack", "spend": {"gte": 500_000, "lt": 2_000_000}}},
    "purchased_last_months": {"purchased": {"product": "P4", "within": {"last_months": 6}}},
    "did_page_view_30d": {"did": {"event": "page_view", "within": {"last_days": 30}}},
    "did_page_contains_upper": {"did": {"event": "page_view", "where": {"page_contains": "SALE"}}},
    "did_home_page": {"did": {"event": "page_view", "where": {"page_equals": "/"}}},
    "did_full_url": {"did": {"event": "page_view", "where": {"page_equals": "https://shop.vn/sale?utm=x"}}},
    "did_view_item_p1_3x": {"did": {"event": "view_item", "where": {"item": "P1"}, "times": {"gte": 3}}},
    "did_cart_category": {"did": {"event": "add_to_cart", "where": {"category": ["BACKPACK"]}}},
    "did_never_cart": {"did": {"event": "add_to_cart", "times": {"eq": 0}}},
    "did_custom_event": {"did": {"event": "quiz_done", "custom": True, "within": {"between_days_ago": [0, 60]}}},
    "viewed_not_bought_any": {"viewed_not_bought": {"within": {"last_days": 30}}},
    "viewed_not_bought_item": {"viewed_not_bought": {"item": ["P1", "P2"]}},
    "viewed_not_bought_category": {"viewed_not_bought": {"category": "Backpack", "within": {"last_weeks": 8}}},
    "first_page_contains": {"first_page": {"contains": "BLOG"}},
    "first_page_home": {"first_page": {"equals": "/"}},
    "birthday_this_month": {"birthday": {"in": "this_month"}},
    "birthday_next_45d": {"birthday": {"within_next_days": 45}},
    "near_store": {"near": {"store": "S001", "km": 25}},
    "near_point_or_store": {
        "any": [{"near": {"lat": 21.03, "lon": 105.85, "km": 30}}, {"near": {"store": ["S_DN"], "km": 5}}]
    },
    "in_segment_repeat_in_hcm": {"all": [{"in_segment": "x_orders_gt"}, {"near": {"store": "S001", "km": 25}}]},
}
STORES = {"S001": (10.7769, 106.7009), "S_HN": (21.0285, 105.8542), "S_DN": (16.0544, 108.2022)}


@dataclass(frozen=True)
class Lake:
    features: Path
    purchases: Path
    orders: Path
    events: Path
    stores: Path

    def paths(self) -> tuple[Path, Path]:
        return self.features, self.purchases

    def optional(self) -> dict[str, Path]:
        return {"orders_path": self.orders, "events_path": self.events, "stores_path": self.stores}


def _walk(model: BaseModel) -> Iterator[BaseModel]:
    """Every node and option model inside a rule, so coverage can be checked field by field."""
    yield model
    for name in model.model_fields_set:
        value = getattr(model, name)
        for item in value if isinstance(value, list | tuple) else [value]:
            if isinstance(item, BaseModel):
                yield from _walk(item)


def _model_types(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in typing.get_args(annotation):
        yield from _model_types(arg)


def _segments() -> list[Segment]:
    configured = load_segments(settings.PROJECT_ROOT / "config").segments
    extra = [Segment.model_validate({"name": f"x_{n}", "title": n, "rule": r}) for n, r in EXTRA_RULES.items()]
    return [*configured, *extra]


def _build_lake(folder: Path) -> Lake:
    """~50 customers in the feature table's real column types, and their purchase lines.

    Columns the test does not craft are filled by kind, so features added to the catalog later still
    produce a valid table; crafted columns put values on the boundaries the extra rules probe.
    """
    rng = random.Random(20261124)
    as_of_utc = WINDOW.as_of.astimezone(ZoneInfo("UTC"))
    lines: list[dict[str, Any]] = []
    orders_rows: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    boundary = datetime(2026, 10, 31, 17, 0, tzinfo=ZoneInfo("UTC"))  # local midnight of 2026-11-01
    family = ["Nguyễn", "Trần", "Lê", "Phạm", "Đặng"]
    provinces = ["Hồ Chí Minh", "Hà Nội", "Đà Nẵng", "Cần Thơ", "Huế", None, ""]
    for i in range(N_CUSTOMERS):
        key = f"C{i:03d}"
        n_orders = 1 if 1 <= i <= 4 else 0 if i % 6 == 0 else rng.randint(1, 5)
        times: list[datetime] = []
        if i == 1:
            times = [boundary - timedelta(seconds=1)]  # last order 1 s before local 2026-11-01
        elif i == 2:
            times = [boundary]  # exactly at local midnight
        elif i == 3:
            times = [as_of_utc - timedelta(microseconds=1)]  # last instant of the run date
        elif i == 4:
            times = [as_of_utc]  # the as-of instant itself is outside every window
        times += [as_of_utc - timedelta(seconds=rng.randint(1, 420 * 86_400)) for _ in range(n_orders - len(times))]
        for n, at in enumerate(sorted(times)):
            order_id = f"{key}-o{n}"
            for line in range(rng.randint(1, 2)):
                product = rng.choice(["P1", "P2", "P3", "P4"])
                category = {"P1": "backpack", "P2": "wallet", "P3": "Backpack", "P4": "hat"}[product]
                if line == 0 and i % 7 == 0:
                    category = "BACKPACK"
                lines.append(
                    {
                        "customer_key": key,
                        "order_id": order_id,
                        "ordered_at": at,
                        "product_id": product,
                        "category": category,
                        "line_total_vnd": rng.randrange(50_000, 900_000, 1_000),
                    }
                )
        before = [t for t in times if t < as_of_utc]
        # Every third order has a 10 % discount, so an order's total differs from its lines' sum.
        for n, at in enumerate(sorted(times)):
            gross = sum(ln["line_total_vnd"] for ln in lines if ln["order_id"] == f"{key}-o{n}")
            total = gross - gross // 10 if n % 3 == 2 else gross
            orders_rows.append({"customer_key": key, "order_id": f"{key}-o{n}", "ordered_at": at, "total_vnd": total})
        spend = [o["total_vnd"] for o in orders_rows if o["customer_key"] == key and o["ordered_at"] < as_of_utc]
        orders = len(before)
        row: dict[str, Any] = {}
        for feat in FEATURES:
            row[feat.name] = _generic(rng, feat.kind)
        last = max(before) if before else None
        row.update(
            customer_key=key,
            customer_id=f"L{i:05d}",
            full_name=f"{rng.choice(family)} Văn {chr(65 + i % 26)}",
            email=[f"c{i}@example.vn", f"c_{i}@Example.com", "", None][i % 4],
            gender=["female", "male", "other", ""][i % 4],
            province=provinces[i % len(provinces)],
            birthday=None if i % 9 == 0 else date(1970 + i % 35, 1 + i % 12, 1 + i % 28),
            orders=orders,
            monetary_total=sum(spend),
            avg_order_value=sum(spend) / orders if orders else None,
            first_purchase_at=min(before) if before else None,
            last_purchase_at=last,
            recency_days=(RUN_DATE - last.astimezone(TZ).date()).days if last else None,
            orders_last_90d=sum(1 for t in before if (RUN_DATE - t.astimezone(TZ).date()).days < 90),
            discount_share=[0.0, 0.25, 0.5, 0.75, None][i % 5] if orders else None,
            preferred_channel=[None, "store", "online"][i % 3] if orders else None,
            # The home page with and without a query, a path-only URL, mixed case and empty values:
            # where the engines' regular expressions and case folding could disagree.
            first_page=[
                "https://shop.vn/",
                "https://shop.vn/Blog/tips?x=1",
                "/?utm_source=fb",
                "https://shop.vn/blog#top",
                "https://shop.vn/c/backpack",
                "",
                None,
            ][i % 7],
        )
        born = row["birthday"]
        home = [STORES["S001"], STORES["S_HN"], STORES["S_DN"], (10.0452, 105.7469), None][i % 5]
        row["latitude"] = home[0] + rng.uniform(-0.03, 0.03) if home else None
        row["longitude"] = home[1] + rng.uniform(-0.03, 0.03) if home else None
        row["birth_month"] = born.month if born else None
        row["age"] = (
            RUN_DATE.year - born.year - ((RUN_DATE.month, RUN_DATE.day) < (born.month, born.day)) if born else None
        )
        rows.append(row)
    # A guest order without a customer is in the lake but never in a segment.
    lines.append({**lines[0], "customer_key": None, "order_id": "guest-1"})
    orders_rows.append({**orders_rows[0], "customer_key": None, "order_id": "guest-1"})

    runtime = list(catalog.known().values())  # built-ins plus the CRM attributes of config/features.yaml
    for i, row in enumerate(rows):
        row.setdefault("interests", ["running;travel", "cooking", None][i % 3])
    features = pd.DataFrame(rows, columns=[f.name for f in runtime])
    for feat in runtime:
        features[feat.name] = _typed(features[feat.name], feat.kind)
    purchases = pd.DataFrame(lines)
    purchases["ordered_at"] = pd.to_datetime(purchases["ordered_at"], utc=True).dt.as_unit("us")
    orders = pd.DataFrame(orders_rows)
    orders["ordered_at"] = pd.to_datetime(orders["ordered_at"], utc=True).dt.as_unit("us")
    events = _events(rng, as_of_utc)
    stores = pd.DataFrame(
        [(sid, lat, lon) for sid, (lat, lon) in STORES.items()], columns=["store_id", "latitude", "longitude"]
    )
    lake = Lake(*(folder / f"{name}.parquet" for name in ("features", "purchases", "orders", "events", "stores")))
    features.to_parquet(lake.features, index=False)
    purchases.to_parquet(lake.purchases, index=False)
    orders.to_parquet(lake.orders, index=False)
    events.to_parquet(lake.events, index=False)
    stores.to_parquet(lake.stores, index=False)
    return lake


def _events(rng: random.Random, as_of_utc: datetime) -> pd.DataFrame:
    """Web events shaped like unified/web_events, with URLs and item lists that probe string handling."""
    paths = {  # each page and the path unify stores for it (page_path)
        "https://shop.vn/": "/",
        "https://shop.vn": "/",  # empty path is the home page
        "https://shop.vn/?utm=x#top": "/",
        "https://shop.vn/sale?utm=x": "/sale",
        "https://shop.vn/Sale/balo": "/Sale/balo",
        "/blog/tips": "/blog/tips",
        "https://shop.vn/BLOG/a#top": "/BLOG/a",
    }
    pages = list(paths)
    items = [("P1", "backpack"), ("P1, P2", "Backpack, wallet"), ("P3,P4", "backpack,hat"), ("P2", "wallet")]
    rows: list[dict[str, Any]] = []
    for i in range(N_CUSTOMERS + 5):
        key = f"C{i:03d}" if i < N_CUSTOMERS else None  # the last five are anonymous visitors
        if key is not None and i % 3 == 2:
            continue  # never visited the web shop
        first = as_of_utc - timedelta(days=rng.randint(1, 120))
        for n in range(rng.randint(1, 12)):
            name = rng.choice(["page_view", "page_view", "view_item", "view_item", "add_to_cart", "quiz_done"])
            at = first if n < 2 else first + timedelta(seconds=rng.randint(1, 119 * 86_400))
            ids, cats = rng.choice(items) if name in {"view_item", "add_to_cart"} else (None, None)
            rows.append(
                {
                    "customer_key": key,
                    "user_pseudo_id": f"ps{i}",
                    "session_id": f"s{i}-{n // 3}",
                    "event_at": min(at, as_of_utc + timedelta(hours=1)),
                    "event_name": "page_view" if n < 2 else name,  # two page views tie at the first instant
                    "page_location": rng.choice(pages),
                    "item_ids": ids,
                    "item_categories": cats,
                    "device_category": rng.choice(["mobile", "desktop"]),
                    "traffic_source": rng.choice(["google", "facebook", "(direct)"]),
                }
            )
    events = pd.DataFrame(rows)
    events["event_at"] = pd.to_datetime(events["event_at"], utc=True).dt.as_unit("us")
    events["page_path"] = events["page_location"].map(paths)
    return events.astype({c: "string" for c in events.columns if c != "event_at"})


def _generic(rng: random.Random, kind: str) -> Any:
    if rng.random() < 0.15:
        return None
    return {
        "string": lambda: rng.choice(["alpha", "Beta", "gamma", ""]),
        "integer": lambda: rng.randint(0, 10),
        "number": lambda: round(rng.uniform(0, 10), 2),
        "boolean": lambda: rng.random() < 0.5,
        "date": lambda: date(2020, 1, 1) + timedelta(days=rng.randint(0, 2500)),
        "timestamp": lambda: datetime(2025, 1, 1, tzinfo=ZoneInfo("UTC")) + timedelta(seconds=rng.randint(0, 6e7)),
    }[kind]()


def _typed(col: pd.Series, kind: str) -> pd.Series:
    """The Parquet types the feature build writes: nullable ints/bools, dates, UTC microseconds."""
    if kind == "integer":
        return col.astype("Int64")
    if kind == "number":
        return col.astype("Float64")
    if kind == "boolean":
        return col.astype("boolean")
    if kind == "string":
        return col.astype("string")
    if kind == "timestamp":
        return pd.to_datetime(col, utc=True).dt.as_unit("us")
    return col  # dates stay datetime.date objects -> Parquet date32


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    return _build_lake(tmp_path_factory.mktemp("parity"))


@dataclass(frozen=True)
class Results:
    duckdb: dict[str, set[str]]
    spark: dict[str, set[str]]
    spark_file_list: dict[str, set[str]]


@pytest.fixture(scope="module")
def results(lake: Lake) -> Results:
    """Memberships per engine, computed once; the Spark session lives only for this module."""
    segments = _segments()
    duck = connect("duckdb")
    try:
        on_duckdb = evaluate_memberships(duck, *lake.paths(), WINDOW, segments, **lake.optional())
    finally:
        duck.disconnect()
    spark = connect("spark")  # a missing Java raises here with an explanation: the tests fail, never skip
    try:
        on_spark = evaluate_memberships(spark, *lake.paths(), WINDOW, segments, **lake.optional())
        # The lake hands engines a list of files (a partition's manifest); two halves read as one table.
        file_list = evaluate_memberships(spark, [lake.features, lake.features], lake.purchases, WINDOW, segments[:2])
    finally:
        spark.disconnect()
    return Results(on_duckdb, on_spark, file_list)


def test_every_segment_has_identical_members_on_duckdb_and_spark(results: Results) -> None:
    duck, spark = results.duckdb, results.spark
    assert set(duck) == set(spark) == {s.name for s in _segments()}
    differing = {
        name: {"only_duckdb": sorted(duck[name] - spark[name]), "only_spark": sorted(spark[name] - duck[name])}
        for name in duck
        if duck[name] != spark[name]
    }
    assert not differing, f"engines disagree: {differing}"


def test_parity_is_not_trivially_empty_or_full(results: Results) -> None:
    duck = results.duckdb
    assert len(duck["x_orders_eq_0"] | duck["x_not_repeat"] | duck["x_orders_gt"]) == N_CUSTOMERS
    extra = {n: duck[f"x_{n}"] for n in EXTRA_RULES}
    empty = sorted(n for n, m in extra.items() if not m and not n.endswith("_none"))
    assert not empty, f"rules that match nobody prove no parity; adjust the data: {empty}"
    assert all(not m for n, m in extra.items() if n.endswith("_none"))
    full = sorted(n for n, m in extra.items() if len(m) == N_CUSTOMERS)
    assert not full, f"rules that match everybody prove little: {full}"
    configured = [s.name for s in load_segments(settings.PROJECT_ROOT / "config").segments]
    empty_configured = [n for n in configured if not duck[n]]
    assert len(empty_configured) <= 0.2 * len(configured), f"configured segments empty on test data: {empty_configured}"


def test_boundaries_land_where_the_business_day_says(results: Results) -> None:
    """Anchors parity to correct answers, so two engines cannot agree on the same wrong result."""
    duck = results.duckdb
    before, after = duck["x_last_purchase_lt_local_day"], duck["x_last_purchase_gte_local_day"]
    assert "C001" in before and "C001" not in after  # 1 s before local midnight of 2026-11-01
    assert "C002" in after and "C002" not in before  # exactly local midnight
    never_90d = duck["x_purchased_never_in_90d"]
    assert "C003" not in never_90d  # ordered at the last microsecond of the run date: inside the window
    assert "C004" in never_90d  # ordered at the as-of instant: outside every window
    assert duck["x_email_contains_underscore"] == {f"C{i:03d}" for i in range(1, N_CUSTOMERS, 4)}
    assert duck["x_email_contains_case"] == {f"C{i:03d}" for i in range(0, N_CUSTOMERS, 4)}


def test_a_file_list_reads_as_one_table_on_spark(results: Results) -> None:
    first_two = list(results.spark)[:2]
    assert results.spark_file_list == {n: results.spark[n] for n in first_two}


def test_extra_rules_cover_every_operator_rule_kind_and_option() -> None:
    """When the rule language grows, this names what the parity test does not exercise yet.

    Windows are exempt (they become instants in Python before any engine sees them), and so are
    Count's comparison keys (they compile exactly like the field operators checked here).
    """
    nodes = [node for seg in _segments() for node in _walk(seg.rule)]
    used_ops = {n.op for n in nodes if isinstance(n, Compare)}
    assert set(OPERATORS) - used_ops == set(), "add a rule using these operators to EXTRA_RULES"
    kinds = set(_model_types(typing.get_args(Rule)[0]))
    missing_kinds = {k.__name__ for k in kinds} - {type(n).__name__ for n in nodes}
    assert missing_kinds == set(), "add a rule of these kinds to EXTRA_RULES"
    options: set[tuple[str, str]] = set()
    pending = [t for k in kinds for f in k.model_fields.values() for t in _model_types(f.annotation)]
    seen: set[type[BaseModel]] = set(kinds) | {Window, Count}
    while pending:
        spec = pending.pop()
        if spec in seen:
            continue
        seen.add(spec)
        options |= {(spec.__name__, name) for name in spec.model_fields}
        pending += [t for f in spec.model_fields.values() for t in _model_types(f.annotation)]
    used = {(type(n).__name__, name) for n in nodes for name in n.model_fields_set}
    assert options - used == set(), "add rules using these options to EXTRA_RULES"
