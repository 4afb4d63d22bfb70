"""The core customer features written the way a pandas user would write them (issue 4's baseline).

The benchmark compares the product's DuckDB feature query with this, so it has to be an honest
baseline: idiomatic pandas (column pruning and a predicate pushed into ``read_parquet``, vectorised
``groupby().agg`` with named aggregations, no Python loops over rows), and the SAME definitions as
``tasks/features/build.py`` for the columns it computes, which the benchmark checks on size S:

* a day is the calendar day in the business time zone; "last N days" are the N days ending with
  the run date (the run date is day 1); only rows before the as-of instant count;
* ``recency_days`` counts calendar days from the last order's day to the run date;
* ``discount_share`` is the share of orders with a discount; web counts are over logged-in events.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd

from tasks.settings import RunWindow

WINDOWS = (30, 90, 365)
WEB_EVENTS = {"page_view": "page_views_30d", "view_item": "product_views_30d", "add_to_cart": "add_to_cart_30d"}

# The columns this baseline (and the hand-written DuckDB floor) computes; the comparison covers only these.
CORE_COLUMNS = [
    "customer_key",
    "orders",
    "monetary_total",
    "avg_order_value",
    "first_purchase_at",
    "last_purchase_at",
    "recency_days",
    *(f"orders_last_{n}d" for n in WINDOWS),
    *(f"spend_last_{n}d" for n in WINDOWS),
    "discount_share",
    "web_sessions_30d",
    *WEB_EVENTS.values(),
]
# Counts and sums: zero (not empty) for a customer without orders or web activity, as in the product.
COUNT_COLUMNS = [
    "orders",
    "monetary_total",
    *(f"orders_last_{n}d" for n in WINDOWS),
    *(f"spend_last_{n}d" for n in WINDOWS),
    "web_sessions_30d",
    *WEB_EVENTS.values(),
]


def order_features(orders_dir: Path, window: RunWindow) -> pd.DataFrame:
    """Per-customer order aggregates, indexed by customer key."""
    as_of = pd.Timestamp(window.as_of)
    run_day = pd.Timestamp(window.run_date)
    orders = pd.read_parquet(
        orders_dir,
        columns=["customer_id", "ordered_at", "total_vnd", "discount_vnd"],
        filters=[("ordered_at", "<", as_of)],
    )
    orders = orders[orders["customer_id"].notna()]
    local_day = orders["ordered_at"].dt.tz_convert(window.tz.key).dt.tz_localize(None).dt.normalize()
    days_ago = (run_day - local_day).dt.days  # 0 = the run date
    orders = orders.assign(
        order_day=local_day,
        discounted=(orders["discount_vnd"] > 0).astype("float64"),
        **{f"in_{n}": days_ago < n for n in WINDOWS},
        **{f"spend_{n}": orders["total_vnd"].where(days_ago < n, 0) for n in WINDOWS},
    )
    agg = orders.groupby("customer_id").agg(
        orders=("total_vnd", "size"),
        monetary_total=("total_vnd", "sum"),
        avg_order_value=("total_vnd", "mean"),
        first_purchase_at=("ordered_at", "min"),
        last_purchase_at=("ordered_at", "max"),
        last_day=("order_day", "max"),
        **{f"orders_last_{n}d": (f"in_{n}", "sum") for n in WINDOWS},
        **{f"spend_last_{n}d": (f"spend_{n}", "sum") for n in WINDOWS},
        discount_share=("discounted", "mean"),
    )
    agg["recency_days"] = (run_day - agg.pop("last_day")).dt.days
    return agg


def web_features(events_dir: Path, window: RunWindow) -> pd.DataFrame:
    """Logged-in web activity in the last 30 days, indexed by customer key."""
    start = pd.Timestamp(window.day_start(window.run_date - timedelta(days=29)))
    events = pd.read_parquet(
        events_dir,
        columns=["user_id", "session_id", "event_name"],
        filters=[("event_at", ">=", start), ("event_at", "<", pd.Timestamp(window.as_of))],
    )
    events = events[events["user_id"].notna()]
    sessions = events.groupby("user_id")["session_id"].nunique().rename("web_sessions_30d")
    counts = (
        events[events["event_name"].isin(list(WEB_EVENTS))]
        .groupby(["user_id", "event_name"])
        .size()
        .unstack(fill_value=0)
        .reindex(columns=list(WEB_EVENTS), fill_value=0)
        .rename(columns=WEB_EVENTS)
    )
    return pd.concat([sessions, counts], axis=1)


def core_features(data: Path, window: RunWindow) -> pd.DataFrame:
    """One row per customer of ``data/customers``, the core feature columns, customers without
    orders or web activity getting zero counts (and empty averages and dates), as in the product."""
    customers = pd.read_parquet(data / "customers", columns=["customer_key"])
    out = customers.join(order_features(data / "orders", window), on="customer_key")
    out = out.join(web_features(data / "web_events", window), on="customer_key")
    out[COUNT_COLUMNS] = out[COUNT_COLUMNS].fillna(0).astype("int64")
    out["recency_days"] = out["recency_days"].astype("Int64")
    return out[CORE_COLUMNS]
