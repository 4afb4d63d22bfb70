"""Customer features as of the run date, computed in DuckDB over the lake.

Everything is set-based SQL written here (user input never reaches it; the run date, time zone and
windows are bound parameters). Days are business-time-zone calendar days: an order's day is its
local date in the business time zone, "last N days" are the N days ending with the run date, and
``recency_days`` is the number of calendar days from the last order's day to the run date.
"""

from __future__ import annotations

import logging

import duckdb
import pandas as pd

from tasks.current import register_current
from tasks.features.catalog import COLUMNS
from tasks.lake import Lake
from tasks.settings import RunWindow
from tasks.tables import TableRef
from tasks.unify.profiles import UNIFIED

log = logging.getLogger(__name__)

FEATURE_SOURCE = "audiences"
FEATURE_TABLE = "customer_features"

_SQL = """
WITH o AS (
    SELECT customer_id AS customer_key, order_id, store_id, channel, ordered_at, total_vnd, discount_vnd,
           CAST(timezone($tz, ordered_at) AS DATE) AS order_day
    FROM orders
    WHERE customer_id IS NOT NULL AND ordered_at < $as_of
),
agg AS (
    SELECT customer_key,
           count(*) AS orders,
           sum(total_vnd) AS monetary_total,
           avg(total_vnd) AS avg_order_value,
           min(ordered_at) AS first_purchase_at,
           max(ordered_at) AS last_purchase_at,
           date_diff('day', max(order_day), $run_date) AS recency_days,
           count(*) FILTER (WHERE order_day > $run_date - 30) AS orders_last_30d,
           count(*) FILTER (WHERE order_day > $run_date - 90) AS orders_last_90d,
           count(*) FILTER (WHERE order_day > $run_date - 365) AS orders_last_365d,
           coalesce(sum(total_vnd) FILTER (WHERE order_day > $run_date - 30), 0) AS spend_last_30d,
           coalesce(sum(total_vnd) FILTER (WHERE order_day > $run_date - 90), 0) AS spend_last_90d,
           coalesce(sum(total_vnd) FILTER (WHERE order_day > $run_date - 365), 0) AS spend_last_365d,
           avg(CASE WHEN discount_vnd > 0 THEN 1.0 ELSE 0.0 END) AS discount_share
    FROM o GROUP BY customer_key
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
w AS (
    SELECT user_id AS customer_key, event_name, session_id, device_category, traffic_source, event_at,
           CAST(timezone($tz, event_at) AS DATE) AS event_day
    FROM web_events
    WHERE user_id IS NOT NULL AND event_at < $as_of
),
web AS (
    SELECT customer_key,
           count(DISTINCT session_id) FILTER (WHERE event_day > $run_date - 30) AS web_sessions_30d,
           count(*) FILTER (WHERE event_name = 'page_view' AND event_day > $run_date - 30) AS page_views_30d,
           count(*) FILTER (WHERE event_name = 'view_item' AND event_day > $run_date - 30) AS product_views_30d,
           count(*) FILTER (WHERE event_name = 'add_to_cart' AND event_day > $run_date - 30) AS add_to_cart_30d,
           arg_max(traffic_source, event_at) AS traffic_source
    FROM w GROUP BY customer_key
),
surveys AS (
    SELECT customer_id AS customer_key,
           arg_max(nps_score, answered_at) FILTER (WHERE nps_score IS NOT NULL) AS nps_latest,
           arg_max(csat_score, answered_at) FILTER (WHERE csat_score IS NOT NULL) AS csat_latest,
           avg(nps_score) AS nps_avg,
           avg(csat_score) AS csat_avg,
           count(*) AS survey_answers
    FROM survey_responses
    WHERE customer_id IS NOT NULL AND answered_at < $as_of
    GROUP BY customer_id
),
device_pref AS (
    SELECT customer_key, device_category FROM (
        SELECT customer_key, device_category,
               row_number() OVER (PARTITION BY customer_key ORDER BY count(*) DESC, device_category) AS rn
        FROM w WHERE device_category IS NOT NULL GROUP BY customer_key, device_category) WHERE rn = 1
)
SELECT p.customer_key, p.customer_id, p.full_name, p.email, p.phone, p.gender,
       p.birthday,
       CAST(month(p.birthday) AS INTEGER) AS birth_month,
       CAST(year($run_date) - year(p.birthday)
            - CASE WHEN (month($run_date), day($run_date)) < (month(p.birthday), day(p.birthday))
                   THEN 1 ELSE 0 END AS INTEGER) AS age,
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
       dp.device_category, web.traffic_source
FROM customers p
LEFT JOIN agg a USING (customer_key)
LEFT JOIN store_pref sp USING (customer_key)
LEFT JOIN channel_pref cp USING (customer_key)
LEFT JOIN web USING (customer_key)
LEFT JOIN device_pref dp USING (customer_key)
LEFT JOIN surveys sv USING (customer_key)
ORDER BY p.customer_key
"""


def compute_features(con: duckdb.DuckDBPyConnection, window: RunWindow) -> pd.DataFrame:
    """Run the feature query on views ``customers``, ``orders``, ``web_events`` (and, when a survey
    source is configured, ``survey_responses``) already in ``con``."""
    views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    if "survey_responses" not in views:  # no survey tool: the answers inside CRM contacts are used alone
        con.execute(
            "CREATE TEMP VIEW survey_responses AS SELECT NULL::VARCHAR AS customer_id, "
            "NULL::TIMESTAMPTZ AS answered_at, NULL::BIGINT AS nps_score, NULL::BIGINT AS csat_score WHERE false"
        )
    params = {"tz": window.tz.key, "as_of": window.as_of, "run_date": window.run_date}
    frame = con.execute(_SQL, params).df()
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise RuntimeError(f"feature query lost documented column(s) {missing}; update features/catalog.py")
    return frame[COLUMNS]


def build_features(lake: Lake, window: RunWindow, refs: dict[str, TableRef]) -> dict[str, int]:
    day = window.run_date
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.read_parquet(lake.local_files("unified", UNIFIED, "customers", day)).create_view("customers")
        register_current(con, lake, refs["orders"].source, "orders", day)
        register_current(con, lake, refs["web_events"].source, "web_events", day)
        if "survey_responses" in refs:
            register_current(con, lake, refs["survey_responses"].source, "survey_responses", day)
        frame = compute_features(con, window)
    finally:
        con.close()
    lake.write("features", FEATURE_SOURCE, FEATURE_TABLE, day, frame)
    buyers = int((frame["orders"] > 0).sum())
    log.info("built features for %d customers (%d with orders)", len(frame), buyers)
    return {"customers": len(frame), "with_orders": buyers}
