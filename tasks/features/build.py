"""Customer features as of the run date, computed in DuckDB over the lake.

Everything is set-based SQL written here (user input never reaches it; the run date, time zone and
windows are bound parameters, and configured CRM attribute names are checked identifiers).

Days. A day is a calendar day in the business time zone: an order's (or web event's) day is its
local date there, and only what happened before the run's as-of instant (the start of the day after
the run date) counts. "Last N days" (7, 30, 90, 365) are the N calendar days ending with the run
date, so the run date is day 1 and the day N days before it is already outside the window: with run
date 2026-11-24, "last 30 days" is 2026-10-26 .. 2026-11-24. ``recency_days`` is the number of
calendar days from the last order's day to the run date (0 = bought on the run date), ``tenure_days``
the number from ``member_since`` to the run date, and ``age`` the whole years completed on the run
date.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import duckdb
import pandas as pd

from tasks import settings
from tasks.current import register_current
from tasks.features.catalog import COLUMNS, Feature, Kind, crm_features, load_features_config
from tasks.lake import Lake
from tasks.settings import RunWindow
from tasks.tables import TableRef
from tasks.unify.profiles import UNIFIED

log = logging.getLogger(__name__)

FEATURE_SOURCE = "audiences"
FEATURE_TABLE = "customer_features"

SQL_TYPES: dict[Kind, str] = {
    "string": "VARCHAR",
    "integer": "BIGINT",
    "number": "DOUBLE",
    "boolean": "BOOLEAN",
    "date": "DATE",
    "timestamp": "TIMESTAMPTZ",
}

# What the query reads from each input view. A view may lack optional columns (a source that never
# sent voucher codes, a profile partition written before a column existed) or be missing altogether
# (no survey tool, no purchase lines); the query then sees typed empty values instead of failing.
INPUTS: dict[str, dict[str, str]] = {
    "customers": {
        "customer_key": "VARCHAR",
        "customer_id": "VARCHAR",
        "full_name": "VARCHAR",
        "email": "VARCHAR",
        "phone": "VARCHAR",
        "gender": "VARCHAR",
        "birthday": "DATE",
        "province": "VARCHAR",
        "email_opt_in": "BOOLEAN",
        "sms_opt_in": "BOOLEAN",
        "ads_opt_in": "BOOLEAN",
        "member_since": "DATE",
        "nps_latest": "BIGINT",
        "csat_latest": "BIGINT",
        "occupation": "VARCHAR",
        "marital_status": "VARCHAR",
        "income_band": "VARCHAR",
        "customer_type": "VARCHAR",
        "company": "VARCHAR",
        "industry": "VARCHAR",
        "company_size": "VARCHAR",
        "latitude": "DOUBLE",
        "longitude": "DOUBLE",
    },
    "orders": {
        "order_id": "VARCHAR",
        "customer_id": "VARCHAR",
        "store_id": "VARCHAR",
        "channel": "VARCHAR",
        "ordered_at": "TIMESTAMPTZ",
        "total_vnd": "BIGINT",
        "discount_vnd": "BIGINT",
        "voucher_code": "VARCHAR",
    },
    "purchases": {
        "customer_key": "VARCHAR",
        "ordered_at": "TIMESTAMPTZ",
        "product_id": "VARCHAR",
        "category": "VARCHAR",
    },
    "web_events": {
        "user_id": "VARCHAR",
        "event_at": "TIMESTAMPTZ",
        "event_name": "VARCHAR",
        "session_id": "BIGINT",
        "page_location": "VARCHAR",
        "device_category": "VARCHAR",
        "browser": "VARCHAR",
        "traffic_source": "VARCHAR",
        "item_ids": "VARCHAR",
    },
    "survey_responses": {
        "customer_id": "VARCHAR",
        "answered_at": "TIMESTAMPTZ",
        "nps_score": "BIGINT",
        "csat_score": "BIGINT",
    },
    "stores": {
        "store_id": "VARCHAR",
        "latitude": "DOUBLE",
        "longitude": "DOUBLE",
        "opened_on": "DATE",
    },
}

EARTH_RADIUS_KM = 6371.0

_SQL = """
WITH p AS (
    SELECT *,
           CAST(year($run_date) - year(birthday)
                - CASE WHEN (month($run_date), day($run_date)) < (month(birthday), day(birthday))
                       THEN 1 ELSE 0 END AS INTEGER) AS age
    FROM in_customers
),
o AS (
    SELECT km.customer_key, o.order_id, o.store_id, o.channel, o.ordered_at, o.total_vnd, o.discount_vnd,
           coalesce(trim(o.voucher_code), '') <> '' AS has_voucher,
           CAST(timezone($tz, o.ordered_at) AS DATE) AS order_day
    FROM in_orders o JOIN in_keymap km ON km.customer_id = o.customer_id
    WHERE o.ordered_at < $as_of
),
agg AS (
    SELECT customer_key,
           count(*) AS orders,
           sum(total_vnd) AS monetary_total,
           avg(total_vnd) AS avg_order_value,
           min(ordered_at) AS first_purchase_at,
           max(ordered_at) AS last_purchase_at,
           date_diff('day', max(order_day), $run_date) AS recency_days,
           count(*) FILTER (WHERE order_day > $run_date - 7) AS orders_last_7d,
           count(*) FILTER (WHERE order_day > $run_date - 30) AS orders_last_30d,
           count(*) FILTER (WHERE order_day > $run_date - 90) AS orders_last_90d,
           count(*) FILTER (WHERE order_day > $run_date - 365) AS orders_last_365d,
           coalesce(sum(total_vnd) FILTER (WHERE order_day > $run_date - 7), 0) AS spend_last_7d,
           coalesce(sum(total_vnd) FILTER (WHERE order_day > $run_date - 30), 0) AS spend_last_30d,
           coalesce(sum(total_vnd) FILTER (WHERE order_day > $run_date - 90), 0) AS spend_last_90d,
           coalesce(sum(total_vnd) FILTER (WHERE order_day > $run_date - 365), 0) AS spend_last_365d,
           count(*) FILTER (WHERE has_voucher AND order_day > $run_date - 30) AS vouchers_used_30d,
           count(*) FILTER (WHERE has_voucher AND order_day > $run_date - 90) AS vouchers_used_90d,
           count(*) FILTER (WHERE has_voucher AND order_day > $run_date - 365) AS vouchers_used_365d,
           avg(CASE WHEN discount_vnd > 0 THEN 1.0 ELSE 0.0 END) AS discount_share
    FROM o GROUP BY customer_key
),
rfm AS (
    -- Quintiles over buyers only; equal values are split by customer_key so a rerun gives the same scores.
    SELECT customer_key,
           ntile(5) OVER (ORDER BY recency_days DESC, customer_key) AS r_score,
           ntile(5) OVER (ORDER BY orders, customer_key) AS f_score,
           ntile(5) OVER (ORDER BY monetary_total, customer_key) AS m_score
    FROM agg
),
store_pref AS (
    SELECT customer_key, store_id AS preferred_store FROM (
        SELECT customer_key, store_id,
               row_number() OVER (PARTITION BY customer_key ORDER BY count(*) DESC, store_id) AS rn
        FROM o GROUP BY customer_key, store_id) WHERE rn = 1
),
channel_pref AS (
    SELECT customer_key, channel AS preferred_channel FROM (
        SELECT customer_key, channel,
               row_number() OVER (PARTITION BY customer_key ORDER BY count(*) DESC, channel) AS rn
        FROM o GROUP BY customer_key, channel) WHERE rn = 1
),
pl AS (
    SELECT customer_key, product_id, category, CAST(timezone($tz, ordered_at) AS DATE) AS order_day
    FROM in_purchases
    WHERE customer_key IS NOT NULL AND ordered_at < $as_of
),
bought AS (
    SELECT customer_key,
           string_agg(DISTINCT category, ',' ORDER BY category)
               FILTER (WHERE order_day > $run_date - 30) AS categories_last_30d,
           string_agg(DISTINCT category, ',' ORDER BY category)
               FILTER (WHERE order_day > $run_date - 90) AS categories_last_90d,
           string_agg(DISTINCT category, ',' ORDER BY category)
               FILTER (WHERE order_day > $run_date - 365) AS categories_last_365d,
           string_agg(DISTINCT product_id, ',' ORDER BY product_id)
               FILTER (WHERE order_day > $run_date - 30) AS products_last_30d
    FROM pl GROUP BY customer_key
),
w AS (
    SELECT km.customer_key, e.event_name, e.session_id, e.device_category, e.browser, e.traffic_source, e.event_at,
           e.page_location, e.item_ids, CAST(timezone($tz, e.event_at) AS DATE) AS event_day
    FROM in_web_events e JOIN in_keymap km ON km.customer_id = e.user_id
    WHERE e.event_at < $as_of
),
web AS (
    SELECT customer_key,
           count(DISTINCT session_id) FILTER (WHERE event_day > $run_date - 7) AS web_sessions_7d,
           count(DISTINCT session_id) FILTER (WHERE event_day > $run_date - 30) AS web_sessions_30d,
           count(DISTINCT session_id) FILTER (WHERE event_day > $run_date - 90) AS web_sessions_90d,
           count(*) FILTER (WHERE event_name = 'page_view' AND event_day > $run_date - 7) AS page_views_7d,
           count(*) FILTER (WHERE event_name = 'page_view' AND event_day > $run_date - 30) AS page_views_30d,
           count(*) FILTER (WHERE event_name = 'page_view' AND event_day > $run_date - 90) AS page_views_90d,
           count(*) FILTER (WHERE event_name = 'view_item' AND event_day > $run_date - 7) AS product_views_7d,
           count(*) FILTER (WHERE event_name = 'view_item' AND event_day > $run_date - 30) AS product_views_30d,
           count(*) FILTER (WHERE event_name = 'view_item' AND event_day > $run_date - 90) AS product_views_90d,
           count(*) FILTER (WHERE event_name = 'add_to_cart' AND event_day > $run_date - 7) AS add_to_cart_7d,
           count(*) FILTER (WHERE event_name = 'add_to_cart' AND event_day > $run_date - 30) AS add_to_cart_30d,
           count(*) FILTER (WHERE event_name = 'add_to_cart' AND event_day > $run_date - 90) AS add_to_cart_90d,
           arg_max(traffic_source, event_at) AS traffic_source
    FROM w GROUP BY customer_key
),
device_pref AS (
    SELECT customer_key, device_category FROM (
        SELECT customer_key, device_category,
               row_number() OVER (PARTITION BY customer_key ORDER BY count(*) DESC, device_category) AS rn
        FROM w WHERE device_category IS NOT NULL GROUP BY customer_key, device_category) WHERE rn = 1
),
browser_pref AS (
    SELECT customer_key, browser FROM (
        SELECT customer_key, browser,
               row_number() OVER (PARTITION BY customer_key ORDER BY count(*) DESC, browser) AS rn
        FROM w WHERE browser IS NOT NULL GROUP BY customer_key, browser) WHERE rn = 1
),
first_page AS (
    SELECT customer_key, arg_min(page_location, struct_pack(t := event_at, u := page_location)) AS first_page
    FROM w WHERE event_name = 'page_view' AND page_location IS NOT NULL
    GROUP BY customer_key
),
viewed AS (
    SELECT DISTINCT customer_key, trim(item) AS product_id FROM (
        SELECT customer_key, unnest(string_split(item_ids, ',')) AS item
        FROM w WHERE event_name = 'view_item' AND event_day > $run_date - 30 AND item_ids IS NOT NULL)
    WHERE trim(item) <> ''
),
viewed_not_bought AS (
    SELECT v.customer_key, count(*) AS viewed_not_bought_30d
    FROM viewed v
    WHERE NOT EXISTS (
        SELECT 1 FROM pl
        WHERE pl.customer_key = v.customer_key AND pl.product_id = v.product_id AND pl.order_day > $run_date - 30)
    GROUP BY v.customer_key
),
st AS (
    -- Stores open on the run date, so a backfill does not measure distance to a store opened later.
    SELECT store_id, latitude, longitude FROM in_stores
    WHERE store_id IS NOT NULL AND latitude IS NOT NULL AND longitude IS NOT NULL
      AND (opened_on IS NULL OR opened_on <= $run_date)
),
nearest AS (
    -- arg_min over (distance, store id) instead of ranking the whole customer x store product
    SELECT customer_key,
           arg_min(store_id, struct_pack(d := km, s := store_id)) AS nearest_store,
           min(km) AS distance_to_nearest_store_km
    FROM (
        SELECT p.customer_key, st.store_id,
               2 * $radius_km * asin(sqrt(least(1.0,
                   power(sin(radians(st.latitude - p.latitude) / 2), 2)
                   + cos(radians(p.latitude)) * cos(radians(st.latitude))
                     * power(sin(radians(st.longitude - p.longitude) / 2), 2)))) AS km
        FROM p CROSS JOIN st
        WHERE p.latitude IS NOT NULL AND p.longitude IS NOT NULL)
    GROUP BY customer_key
),
surveys AS (
    SELECT km.customer_key,
           arg_max(nps_score, answered_at) FILTER (WHERE nps_score IS NOT NULL) AS nps_latest,
           arg_max(csat_score, answered_at) FILTER (WHERE csat_score IS NOT NULL) AS csat_latest,
           avg(nps_score) AS nps_avg,
           avg(csat_score) AS csat_avg,
           count(*) AS survey_answers
    FROM in_survey_responses s JOIN in_keymap km ON km.customer_id = s.customer_id
    WHERE s.answered_at < $as_of
    GROUP BY km.customer_key
)
SELECT p.customer_key, p.customer_id, p.full_name, p.email, p.phone, p.gender,
       p.birthday,
       CAST(month(p.birthday) AS INTEGER) AS birth_month,
       p.age,
       p.province, p.email_opt_in, p.sms_opt_in, p.ads_opt_in, p.member_since,
       CAST(coalesce(a.orders, 0) AS BIGINT) AS orders,
       CAST(coalesce(a.monetary_total, 0) AS BIGINT) AS monetary_total,
       a.avg_order_value, a.first_purchase_at, a.last_purchase_at,
       CAST(a.recency_days AS BIGINT) AS recency_days,
       CAST(coalesce(a.orders_last_30d, 0) AS BIGINT) AS orders_last_30d,
       CAST(coalesce(a.orders_last_90d, 0) AS BIGINT) AS orders_last_90d,
       CAST(coalesce(a.orders_last_365d, 0) AS BIGINT) AS orders_last_365d,
       CAST(coalesce(a.spend_last_30d, 0) AS BIGINT) AS spend_last_30d,
       CAST(coalesce(a.spend_last_90d, 0) AS BIGINT) AS spend_last_90d,
       CAST(coalesce(a.spend_last_365d, 0) AS BIGINT) AS spend_last_365d,
       a.discount_share, sp.preferred_store, cp.preferred_channel,
       CAST(coalesce(sv.nps_latest, p.nps_latest) AS BIGINT) AS nps_latest,
       CAST(coalesce(sv.csat_latest, p.csat_latest) AS BIGINT) AS csat_latest,
       coalesce(sv.nps_avg, p.nps_latest) AS nps_avg,
       coalesce(sv.csat_avg, p.csat_latest) AS csat_avg,
       CAST(coalesce(sv.survey_answers, 0) AS BIGINT) AS survey_answers,
       CAST(coalesce(web.web_sessions_30d, 0) AS BIGINT) AS web_sessions_30d,
       CAST(coalesce(web.page_views_30d, 0) AS BIGINT) AS page_views_30d,
       CAST(coalesce(web.product_views_30d, 0) AS BIGINT) AS product_views_30d,
       CAST(coalesce(web.add_to_cart_30d, 0) AS BIGINT) AS add_to_cart_30d,
       dp.device_category, web.traffic_source,
       CAST(day(p.birthday) AS INTEGER) AS birth_day,
       CASE WHEN p.age IS NULL THEN NULL
            WHEN p.age < 18 THEN '<18'
            WHEN p.age < 25 THEN '18-24'
            WHEN p.age < 35 THEN '25-34'
            WHEN p.age < 45 THEN '35-44'
            WHEN p.age < 55 THEN '45-54'
            WHEN p.age < 65 THEN '55-64'
            ELSE '65+' END AS age_band,
       p.occupation, p.marital_status, p.income_band,
       coalesce(nullif(lower(trim(p.customer_type)), ''), 'personal') AS customer_type,
       p.company, p.industry, p.company_size, p.latitude, p.longitude,
       CAST(date_diff('day', p.member_since, $run_date) AS BIGINT) AS tenure_days,
       CAST(coalesce(a.orders_last_7d, 0) AS BIGINT) AS orders_last_7d,
       CAST(coalesce(a.spend_last_7d, 0) AS BIGINT) AS spend_last_7d,
       b.categories_last_30d, b.categories_last_90d, b.categories_last_365d, b.products_last_30d,
       CAST(coalesce(a.vouchers_used_30d, 0) AS BIGINT) AS vouchers_used_30d,
       CAST(coalesce(a.vouchers_used_90d, 0) AS BIGINT) AS vouchers_used_90d,
       CAST(coalesce(a.vouchers_used_365d, 0) AS BIGINT) AS vouchers_used_365d,
       n.distance_to_nearest_store_km, n.nearest_store,
       CAST(coalesce(web.web_sessions_7d, 0) AS BIGINT) AS web_sessions_7d,
       CAST(coalesce(web.web_sessions_90d, 0) AS BIGINT) AS web_sessions_90d,
       CAST(coalesce(web.page_views_7d, 0) AS BIGINT) AS page_views_7d,
       CAST(coalesce(web.page_views_90d, 0) AS BIGINT) AS page_views_90d,
       CAST(coalesce(web.product_views_7d, 0) AS BIGINT) AS product_views_7d,
       CAST(coalesce(web.product_views_90d, 0) AS BIGINT) AS product_views_90d,
       CAST(coalesce(web.add_to_cart_7d, 0) AS BIGINT) AS add_to_cart_7d,
       CAST(coalesce(web.add_to_cart_90d, 0) AS BIGINT) AS add_to_cart_90d,
       CAST(coalesce(vnb.viewed_not_bought_30d, 0) AS BIGINT) AS viewed_not_bought_30d,
       bp.browser, fp.first_page,
       CAST(r.r_score AS BIGINT) AS r_score,
       CAST(r.f_score AS BIGINT) AS f_score,
       CAST(r.m_score AS BIGINT) AS m_score,
       CAST(r.r_score AS VARCHAR) || CAST(r.f_score AS VARCHAR) || CAST(r.m_score AS VARCHAR) AS rfm_score
       {extras}
FROM p
LEFT JOIN agg a USING (customer_key)
LEFT JOIN rfm r USING (customer_key)
LEFT JOIN store_pref sp USING (customer_key)
LEFT JOIN channel_pref cp USING (customer_key)
LEFT JOIN bought b USING (customer_key)
LEFT JOIN web USING (customer_key)
LEFT JOIN device_pref dp USING (customer_key)
LEFT JOIN browser_pref bp USING (customer_key)
LEFT JOIN first_page fp USING (customer_key)
LEFT JOIN viewed_not_bought vnb USING (customer_key)
LEFT JOIN nearest n USING (customer_key)
LEFT JOIN surveys sv USING (customer_key)
ORDER BY p.customer_key
"""


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _columns_of(con: duckdb.DuckDBPyConnection, view: str) -> set[str] | None:
    """Column names of ``view``, or None when the connection has no such view or table."""
    try:
        rel = con.execute(f"SELECT * FROM {_quote(view)} LIMIT 0")
    except duckdb.CatalogException:
        return None
    return {d[0] for d in rel.description or ()}


def _register_inputs(con: duckdb.DuckDBPyConnection, extras: Sequence[Feature]) -> None:
    """Create ``in_<view>`` views with exactly the columns and types the query expects."""
    for view, wanted in INPUTS.items():
        columns = dict(wanted)
        if view == "customers":
            columns |= {f.name: SQL_TYPES[f.kind] for f in extras}
        present = _columns_of(con, view)
        select = []
        for col, sql_type in columns.items():
            # Configured CRM attributes are free text in the CRM: a value that does not fit its type is empty.
            fn = "CAST" if col in wanted else "TRY_CAST"
            source = _quote(col) if present is not None and col in present else "NULL"
            select.append(f"{fn}({source} AS {sql_type}) AS {_quote(col)}")
        body = (
            f"SELECT {', '.join(select)} FROM {_quote(view)}"
            if present is not None
            else f"SELECT {', '.join(select)} WHERE false"
        )
        con.execute(f"CREATE OR REPLACE TEMP VIEW {_quote('in_' + view)} AS {body}")
    # Loyalty id -> customer_key from identity resolution; without it each profile maps its own id.
    body = (
        "SELECT CAST(customer_id AS VARCHAR) AS customer_id, CAST(customer_key AS VARCHAR) AS customer_key FROM keymap"
        if _columns_of(con, "keymap") is not None
        else "SELECT DISTINCT customer_id, customer_key FROM in_customers WHERE customer_id IS NOT NULL"
    )
    con.execute(f"CREATE OR REPLACE TEMP VIEW in_keymap AS {body}")


def compute_features(con: duckdb.DuckDBPyConnection, window: RunWindow, extras: Sequence[Feature] = ()) -> pd.DataFrame:
    """Run the feature query on views already in ``con``: ``customers``, ``orders`` and ``web_events``,
    and when available ``purchases`` (unified purchase lines), ``survey_responses`` and ``stores``.

    ``extras`` are the configured CRM attributes (``catalog.crm_features``): columns of ``customers``
    returned as-is, cast to their configured kind, after the built-in features.
    """
    _register_inputs(con, extras)
    extra_sql = "".join(f",\n       p.{_quote(f.name)}" for f in extras)
    params = {
        "tz": window.tz.key,
        "as_of": window.as_of,
        "run_date": window.run_date,
        "radius_km": EARTH_RADIUS_KM,
    }
    frame = con.execute(_SQL.replace("{extras}", extra_sql), params).df()
    columns = COLUMNS + [f.name for f in extras]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise RuntimeError(f"feature query lost documented column(s) {missing}; update features/catalog.py")
    return frame[columns]


def build_features(
    lake: Lake, window: RunWindow, refs: dict[str, TableRef], config_dir: Path | None = None
) -> dict[str, int]:
    day = window.run_date
    extras = crm_features(load_features_config(config_dir or settings.config_dir()))
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.read_parquet(lake.local_files("unified", UNIFIED, "customers", day)).create_view("customers")
        con.read_parquet(lake.local_files("unified", UNIFIED, "purchases", day)).create_view("purchases")
        if lake.exists("unified", UNIFIED, "keymap", day):
            con.read_parquet(lake.local_files("unified", UNIFIED, "keymap", day)).create_view("keymap")
        register_current(con, lake, refs["orders"].source, "orders", day)
        register_current(con, lake, refs["web_events"].source, "web_events", day)
        register_current(con, lake, refs["stores"].source, "stores", day)
        if "survey_responses" in refs:
            register_current(con, lake, refs["survey_responses"].source, "survey_responses", day)
        frame = compute_features(con, window, extras)
    finally:
        con.close()
    lake.write("features", FEATURE_SOURCE, FEATURE_TABLE, day, frame)
    buyers = int((frame["orders"] > 0).sum())
    log.info("built features for %d customers (%d with orders)", len(frame), buyers)
    return {"customers": len(frame), "with_orders": buyers}
