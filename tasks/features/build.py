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

import functools
import logging
import os
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

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

# DuckDB memory limit for the feature query, e.g. "2GB" (see configure_connection); unset, DuckDB's default.
MEMORY_LIMIT_ENV = "AUDIENCES_FEATURES_MEMORY_LIMIT"

# The query runs in stages: each stage's per-customer results go to a temporary table, and the last stage
# joins them to the profiles. One statement holding every aggregate and join at once peaked at 4.5 GiB
# for a million customers; in stages only one stage's hash tables are alive at a time (2.7 GiB), at about
# the same speed. Tables are named features_<stage>; prods (products bought in the last 30 days) is its
# own stage because the lines and web stages both read it.
_STAGES: tuple[tuple[str, str], ...] = (
    (
        "features_orders",
        """
WITH o AS (
    SELECT km.customer_key, o.order_id, o.store_id, o.channel, o.ordered_at, o.total_vnd, o.discount_vnd,
           coalesce(trim(o.voucher_code), '') <> '' AS has_voucher
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
           date_diff('day', LAST_DAY(ordered_at), $run_date) AS recency_days,
           count(*) FILTER (WHERE IN_LAST(7, ordered_at)) AS orders_last_7d,
           count(*) FILTER (WHERE IN_LAST(30, ordered_at)) AS orders_last_30d,
           count(*) FILTER (WHERE IN_LAST(90, ordered_at)) AS orders_last_90d,
           count(*) FILTER (WHERE IN_LAST(365, ordered_at)) AS orders_last_365d,
           coalesce(sum(total_vnd) FILTER (WHERE IN_LAST(7, ordered_at)), 0) AS spend_last_7d,
           coalesce(sum(total_vnd) FILTER (WHERE IN_LAST(30, ordered_at)), 0) AS spend_last_30d,
           coalesce(sum(total_vnd) FILTER (WHERE IN_LAST(90, ordered_at)), 0) AS spend_last_90d,
           coalesce(sum(total_vnd) FILTER (WHERE IN_LAST(365, ordered_at)), 0) AS spend_last_365d,
           count(*) FILTER (WHERE has_voucher AND IN_LAST(30, ordered_at)) AS vouchers_used_30d,
           count(*) FILTER (WHERE has_voucher AND IN_LAST(90, ordered_at)) AS vouchers_used_90d,
           count(*) FILTER (WHERE has_voucher AND IN_LAST(365, ordered_at)) AS vouchers_used_365d,
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
counted AS (
    -- Orders per customer and store, and per customer and channel, counted in one pass over the orders (two
    -- grouping sets; by_channel tells them apart). For a million customers this took 2.8 s where counting per
    -- loyalty id, store and channel, mapping to keys and regrouping per key for each preference took 3.5 s.
    SELECT km.customer_key, o.store_id, o.channel, count(*) AS n, grouping(o.store_id) AS by_channel
    FROM in_orders o JOIN in_keymap km ON km.customer_id = o.customer_id
    WHERE o.ordered_at < $as_of
    GROUP BY GROUPING SETS ((km.customer_key, o.store_id), (km.customer_key, o.channel))
),
prefs AS (
    -- The store with the most orders, ties to the smaller id, as the least (-orders, id) pair: one aggregate
    -- per customer instead of ranking every customer-store row. Orders without a store (online) do not
    -- count: a customer who mostly buys online still has the store they visit most, and only a customer
    -- who never bought in a store has none (as device and browser below). The channel likewise.
    SELECT customer_key,
           min(struct_pack(n := -n, v := store_id)) FILTER (WHERE by_channel = 0 AND store_id IS NOT NULL).v
               AS preferred_store,
           min(struct_pack(n := -n, v := channel)) FILTER (WHERE by_channel = 1 AND channel IS NOT NULL).v
               AS preferred_channel
    FROM counted GROUP BY customer_key
)
SELECT a.*, r.r_score, r.f_score, r.m_score, pr.preferred_store, pr.preferred_channel
FROM agg a
LEFT JOIN rfm r USING (customer_key)
LEFT JOIN prefs pr USING (customer_key)
""",
    ),
    (
        "features_prods",
        """
-- Products bought in the last 30 days, one row each: products_last_30d and viewed_not_bought_30d.
SELECT DISTINCT customer_key, product_id FROM in_purchases
WHERE customer_key IS NOT NULL AND ordered_at < $as_of AND IN_LAST(30, ordered_at)
""",
    ),
    (
        "features_lines",
        """
WITH cats AS (
    -- One row per customer and category, so the lists aggregate distinct values without DISTINCT. Only the
    -- last 365 days matter (the widest window of the lists).
    SELECT customer_key, category,
           bool_or(IN_LAST(30, ordered_at)) AS in_30d,
           bool_or(IN_LAST(90, ordered_at)) AS in_90d
    FROM in_purchases
    WHERE customer_key IS NOT NULL AND ordered_at < $as_of AND IN_LAST(365, ordered_at)
    GROUP BY customer_key, category
),
bought AS (
    SELECT customer_key,
           -- sorted lists joined: what string_agg(..., ',' ORDER BY ...) gives, without its per-group sort
           array_to_string(list_sort(list(category) FILTER (WHERE in_30d)), ',') AS categories_last_30d,
           array_to_string(list_sort(list(category) FILTER (WHERE in_90d)), ',') AS categories_last_90d,
           array_to_string(list_sort(list(category)), ',') AS categories_last_365d
    FROM cats WHERE category IS NOT NULL GROUP BY customer_key
),
bought_products AS (
    SELECT customer_key, array_to_string(list_sort(list(product_id)), ',') AS products_last_30d
    FROM features_prods WHERE product_id IS NOT NULL GROUP BY customer_key
)
SELECT coalesce(b.customer_key, bpr.customer_key) AS customer_key,
       b.categories_last_30d, b.categories_last_90d, b.categories_last_365d, bpr.products_last_30d
FROM bought b FULL JOIN bought_products bpr ON bpr.customer_key = b.customer_key
""",
    ),
    (
        "features_web",
        """
WITH w AS NOT MATERIALIZED (
    -- Logged-in events (the keymap join drops the rest). Read by three consumers that each need few of its
    -- rows or columns: cheaper than materialising it.
    SELECT user_id, event_name, session_id, device_category, browser, traffic_source, event_at, page_location, item_ids
    FROM in_web_events
    WHERE event_at < $as_of AND user_id IS NOT NULL
),
wu AS (
    -- One pass over the events: partial aggregates per user, session, device and browser (about one row
    -- per session), from which every web feature below is combined. Grouped by the loyalty id and mapped
    -- to customer keys afterwards, so the keymap join sees sessions instead of events; every combination
    -- below (sums, distinct sessions, latest, earliest) gives the same whichever ids a key merges.
    SELECT user_id, session_id, device_category, browser,
           count(*) AS events,
           bool_or(IN_LAST(7, event_at)) AS in_7d,
           bool_or(IN_LAST(30, event_at)) AS in_30d,
           bool_or(IN_LAST(90, event_at)) AS in_90d,
           count(*) FILTER (WHERE event_name = 'page_view' AND IN_LAST(7, event_at)) AS page_views_7d,
           count(*) FILTER (WHERE event_name = 'page_view' AND IN_LAST(30, event_at)) AS page_views_30d,
           count(*) FILTER (WHERE event_name = 'page_view' AND IN_LAST(90, event_at)) AS page_views_90d,
           count(*) FILTER (WHERE event_name = 'view_item' AND IN_LAST(7, event_at)) AS product_views_7d,
           count(*) FILTER (WHERE event_name = 'view_item' AND IN_LAST(30, event_at)) AS product_views_30d,
           count(*) FILTER (WHERE event_name = 'view_item' AND IN_LAST(90, event_at)) AS product_views_90d,
           count(*) FILTER (WHERE event_name = 'add_to_cart' AND IN_LAST(7, event_at)) AS add_to_cart_7d,
           count(*) FILTER (WHERE event_name = 'add_to_cart' AND IN_LAST(30, event_at)) AS add_to_cart_30d,
           count(*) FILTER (WHERE event_name = 'add_to_cart' AND IN_LAST(90, event_at)) AS add_to_cart_90d,
           -- only the instants of the latest event with a source and of the earliest page view here; ``pick``
           -- fetches their values
           max(event_at) FILTER (WHERE traffic_source IS NOT NULL) AS source_at,
           min(event_at) FILTER (WHERE event_name = 'page_view' AND page_location IS NOT NULL) AS first_page_at
    FROM w GROUP BY user_id, session_id, device_category, browser
),
ws AS (
    SELECT km.customer_key, wu.* EXCLUDE (user_id) FROM wu JOIN in_keymap km ON km.customer_id = wu.user_id
),
web AS (
    SELECT customer_key,
           sum(page_views_7d) AS page_views_7d,
           sum(page_views_30d) AS page_views_30d,
           sum(page_views_90d) AS page_views_90d,
           sum(product_views_7d) AS product_views_7d,
           sum(product_views_30d) AS product_views_30d,
           sum(product_views_90d) AS product_views_90d,
           sum(add_to_cart_7d) AS add_to_cart_7d,
           sum(add_to_cart_30d) AS add_to_cart_30d,
           sum(add_to_cart_90d) AS add_to_cart_90d,
           max(source_at) AS source_at,
           min(first_page_at) AS first_page_at
    FROM ws GROUP BY customer_key
),
pick AS (
    -- The traffic source of the latest event that has one and the page of the earliest page view, each
    -- at the instant found above; two events at that same instant go to the smaller value, where arg_max
    -- would pick either, differently between runs. Carrying (instant, text) pairs through the per-session
    -- pass cost more than this second read of the events (10.5 s against 9.7 s for the stage at a million
    -- customers).
    SELECT web.customer_key,
           min(w.traffic_source) FILTER (WHERE w.event_at = web.source_at) AS traffic_source,  -- min skips NULLs
           min(w.page_location) FILTER (WHERE w.event_at = web.first_page_at AND w.event_name = 'page_view')
               AS first_page
    FROM w JOIN in_keymap km ON km.customer_id = w.user_id
    JOIN web ON web.customer_key = km.customer_key AND (w.event_at = web.source_at OR w.event_at = web.first_page_at)
    GROUP BY web.customer_key
),
sessions AS (
    -- Distinct sessions per customer: each (customer, session) once with its windows, then counted. One
    -- pass instead of a count(DISTINCT) per window, each of which builds its own distinct table.
    SELECT customer_key,
           count(*) FILTER (WHERE in_7d) AS web_sessions_7d,
           count(*) FILTER (WHERE in_30d) AS web_sessions_30d,
           count(*) FILTER (WHERE in_90d) AS web_sessions_90d
    FROM (SELECT customer_key, session_id, bool_or(in_7d) AS in_7d, bool_or(in_30d) AS in_30d, bool_or(in_90d) AS in_90d
          FROM ws WHERE session_id IS NOT NULL GROUP BY customer_key, session_id)
    GROUP BY customer_key
),
device_pref AS (
    -- The device with the most events, ties to the smaller name (as store_pref)
    SELECT customer_key, min(struct_pack(n := -events, v := device_category)).v AS device_category
    FROM (SELECT customer_key, device_category, sum(events) AS events
          FROM ws WHERE device_category IS NOT NULL GROUP BY customer_key, device_category)
    GROUP BY customer_key
),
browser_pref AS (
    SELECT customer_key, min(struct_pack(n := -events, v := browser)).v AS browser
    FROM (SELECT customer_key, browser, sum(events) AS events
          FROM ws WHERE browser IS NOT NULL GROUP BY customer_key, browser)
    GROUP BY customer_key
),
viewed AS (
    SELECT DISTINCT customer_key, trim(item) AS product_id FROM (
        SELECT km.customer_key, unnest(string_split(w.item_ids, ',')) AS item
        FROM w JOIN in_keymap km ON km.customer_id = w.user_id
        WHERE w.event_name = 'view_item' AND IN_LAST(30, event_at) AND w.item_ids IS NOT NULL)
    WHERE trim(item) <> ''
),
viewed_not_bought AS (
    SELECT v.customer_key, count(*) AS viewed_not_bought_30d
    FROM viewed v
    WHERE NOT EXISTS (
        SELECT 1 FROM features_prods b WHERE b.customer_key = v.customer_key AND b.product_id = v.product_id)
    GROUP BY v.customer_key
)
SELECT web.* EXCLUDE (source_at, first_page_at), pick.traffic_source, pick.first_page,
       ses.web_sessions_7d, ses.web_sessions_30d, ses.web_sessions_90d,
       dp.device_category, bp.browser, vnb.viewed_not_bought_30d
FROM web
LEFT JOIN pick USING (customer_key)
LEFT JOIN sessions ses USING (customer_key)
LEFT JOIN device_pref dp USING (customer_key)
LEFT JOIN browser_pref bp USING (customer_key)
LEFT JOIN viewed_not_bought vnb USING (customer_key)
""",
    ),
)

_FINAL = """
WITH p AS (
    SELECT *,
           CAST(year($run_date) - year(birthday)
                - CASE WHEN (month($run_date), day($run_date)) < (month(birthday), day(birthday))
                       THEN 1 ELSE 0 END AS INTEGER) AS age
    FROM in_customers
),
st AS (
    -- Stores open on the run date, so a backfill does not measure distance to a store opened later.
    -- cos(radians(latitude)) once per store and per customer below, not once per pair (same values).
    SELECT store_id, latitude, longitude, cos(radians(latitude)) AS cos_lat FROM in_stores
    WHERE store_id IS NOT NULL AND latitude IS NOT NULL AND longitude IS NOT NULL
      AND (opened_on IS NULL OR opened_on <= $run_date)
),
located AS (
    SELECT customer_key, latitude, longitude, cos(radians(latitude)) AS cos_lat FROM p
    WHERE latitude IS NOT NULL AND longitude IS NOT NULL
),
stores_by_id AS (
    -- Every open store in one list ordered by id, so the first of equally near stores is the smaller id.
    SELECT list(struct_pack(id := store_id, lat := latitude, lon := longitude, cos_lat := cos_lat) ORDER BY store_id)
               AS stores
    FROM st
),
nearest AS (
    -- The least (distance, store id) pair per customer, instead of ranking the whole customer x store product:
    -- the distances to every store as one list per customer (no customer x store rows to group), its
    -- minimum, and the first store at that distance. Empty when there is no open store with coordinates.
    SELECT customer_key, stores[list_position(km, list_min(km))].id AS nearest_store,
           list_min(km) AS distance_to_nearest_store_km
    FROM (
        SELECT c.customer_key, s.stores,
               list_transform(s.stores, lambda st: 2 * $radius_km * asin(sqrt(least(1.0,
                   power(sin(radians(st.lat - c.latitude) / 2), 2)
                   + c.cos_lat * st.cos_lat * power(sin(radians(st.lon - c.longitude) / 2), 2))))) AS km
        FROM located c CROSS JOIN stores_by_id s)
),
surveys AS (
    SELECT km.customer_key,
           -- the latest answer, two at the same instant to the lower score (as traffic_source)
           min(struct_pack(t := -epoch_us(answered_at), v := nps_score)) FILTER (WHERE nps_score IS NOT NULL).v
               AS nps_latest,
           min(struct_pack(t := -epoch_us(answered_at), v := csat_score)) FILTER (WHERE csat_score IS NOT NULL).v
               AS csat_latest,
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
       a.discount_share, a.preferred_store, a.preferred_channel,
       CAST(coalesce(sv.nps_latest, p.nps_latest) AS BIGINT) AS nps_latest,
       CAST(coalesce(sv.csat_latest, p.csat_latest) AS BIGINT) AS csat_latest,
       coalesce(sv.nps_avg, p.nps_latest) AS nps_avg,
       coalesce(sv.csat_avg, p.csat_latest) AS csat_avg,
       CAST(coalesce(sv.survey_answers, 0) AS BIGINT) AS survey_answers,
       CAST(coalesce(web.web_sessions_30d, 0) AS BIGINT) AS web_sessions_30d,
       CAST(coalesce(web.page_views_30d, 0) AS BIGINT) AS page_views_30d,
       CAST(coalesce(web.product_views_30d, 0) AS BIGINT) AS product_views_30d,
       CAST(coalesce(web.add_to_cart_30d, 0) AS BIGINT) AS add_to_cart_30d,
       web.device_category, web.traffic_source,
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
       CAST(coalesce(web.viewed_not_bought_30d, 0) AS BIGINT) AS viewed_not_bought_30d,
       web.browser, web.first_page,
       CAST(a.r_score AS BIGINT) AS r_score,
       CAST(a.f_score AS BIGINT) AS f_score,
       CAST(a.m_score AS BIGINT) AS m_score,
       CAST(a.r_score AS VARCHAR) || CAST(a.f_score AS VARCHAR) || CAST(a.m_score AS VARCHAR) AS rfm_score
       {extras}
FROM p
LEFT JOIN features_orders a USING (customer_key)
LEFT JOIN features_lines b USING (customer_key)
LEFT JOIN features_web web USING (customer_key)
LEFT JOIN nearest n USING (customer_key)
LEFT JOIN surveys sv USING (customer_key)

"""


# Day windows of the query ("last N days"), written IN_LAST(N, instant) in the stages; LAST_DAY(instant) is the
# aggregate "local day of the latest instant". _day_sql turns both into SQL.
WINDOW_DAYS = (7, 30, 90, 365)
_IN_LAST = re.compile(r"IN_LAST\((\d+), (\w+)\)")
_LAST_DAY = re.compile(r"LAST_DAY\((\w+)\)")
_MICROS = timedelta(microseconds=1)
_BAND = timedelta(days=2)  # a UTC offset is under 26 hours, so an instant 2 days past a boundary is on its side


def _local_day(at: datetime, tz: ZoneInfo) -> date:
    return at.astimezone(tz).date()


@functools.lru_cache(maxsize=64)
def _dates_monotonic(tz_key: str, start: datetime, end: datetime, step: timedelta) -> bool:
    """Whether the local date in ``tz_key`` never steps back between ``start`` and ``end``.

    It steps back only where the UTC offset drops across a local midnight (a "fall back" from 00:30 to
    23:30 of the day before, as some zones have done); every offset drop found between samples ``step``
    apart is located to the microsecond and checked.
    """
    tz = ZoneInfo(tz_key)
    at = start
    offset = at.astimezone(tz).utcoffset()
    while at < end:
        nxt = min(at + step, end)
        nxt_offset = nxt.astimezone(tz).utcoffset()
        if offset is None or nxt_offset is None:
            return False
        if nxt_offset < offset:
            lo, hi = at, nxt  # the offset at lo is the old one, at hi the new one
            while hi - lo > _MICROS:
                mid = lo + (hi - lo) // 2
                if mid.astimezone(tz).utcoffset() == offset:
                    lo = mid
                else:
                    hi = mid
            if _local_day(hi, tz) < _local_day(lo, tz):
                return False
        at, offset = nxt, nxt_offset
    return True


def _first_instant_of(day: date, tz: ZoneInfo) -> datetime:
    """The first instant whose local date in ``tz`` is ``day`` or later (local dates monotonic around it).

    Found by bisection rather than as local midnight, which a zone may skip (then the day starts later).
    """
    guess = datetime.combine(day, datetime.min.time(), tzinfo=tz).astimezone(UTC)
    lo, hi = guess - _BAND, guess + _BAND  # local date of lo < day <= local date of hi
    while hi - lo > _MICROS:
        mid = lo + (hi - lo) // 2
        if _local_day(mid, tz) >= day:
            hi = mid
        else:
            lo = mid
    return hi


def _day_sql(sql: str, window: RunWindow) -> tuple[str, dict[str, object]]:
    """Replace IN_LAST / LAST_DAY in ``sql``; returns the SQL and the parameters it then needs.

    Converting every row's instant to its local date (``timezone()``) costs about as much as the rest of
    the query. Where the local date never steps back as time goes on (every zone today) the same answers
    come from comparing the stored UTC instants with the first instant of each window, computed once here
    ("in the last N days" = at or after the start of the day N-1 days before the run date), and the day of
    the latest order is the local day of the latest instant. Around a zone's odd past transitions the
    query falls back to converting each row, so the result never depends on which form ran.
    """
    tz = window.tz
    params: dict[str, object] = {}
    step = timedelta(hours=1)
    starts = {n: window.run_date - timedelta(days=n - 1) for n in WINDOW_DAYS}
    bounds_ok = all(
        _dates_monotonic(tz.key, b - _BAND, b + _BAND, step)
        for b in (datetime.combine(d, datetime.min.time(), tzinfo=tz).astimezone(UTC) for d in starts.values())
    )

    def in_last(m: re.Match[str]) -> str:
        n, col = int(m.group(1)), m.group(2)
        if n not in starts:
            raise ValueError(f"IN_LAST({n}, ...) is not one of the windows {WINDOW_DAYS}")
        if not bounds_ok:
            params["tz"] = tz.key
            params["run_date"] = window.run_date
            return f"CAST(timezone($tz, {col}) AS DATE) > $run_date - {n}"
        params[f"since_{n}"] = _first_instant_of(starts[n], tz)
        return f"{col} >= $since_{n}"

    # Orders may go back to any year: check the zone's whole history up to the run (in 12-hour steps).
    history_ok = _dates_monotonic(
        tz.key, datetime(1900, 1, 1, tzinfo=UTC), window.as_of.astimezone(UTC) + _BAND, timedelta(hours=12)
    )

    def last_day(m: re.Match[str]) -> str:
        params["tz"] = tz.key
        col = m.group(1)
        return f"CAST(timezone($tz, max({col})) AS DATE)" if history_ok else f"max(CAST(timezone($tz, {col}) AS DATE))"

    return _LAST_DAY.sub(last_day, _IN_LAST.sub(in_last, sql)), params


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
        # a profile without a key is no customer: its orders must not form one extra "buyer" in the RFM tiles
        else "SELECT DISTINCT customer_id, customer_key FROM in_customers "
        "WHERE customer_id IS NOT NULL AND customer_key IS NOT NULL"
    )
    con.execute(f"CREATE OR REPLACE TEMP VIEW in_keymap AS {body}")


def configure_connection(con: duckdb.DuckDBPyConnection) -> None:
    """Settings for a connection of your own that runs the feature query.

    ``preserve_insertion_order`` is off because the query orders its result explicitly, so operators need
    not buffer rows to keep their input order; whatever DuckDB spills goes under the working area. The
    memory limit stays DuckDB's (80 % of the machine) unless ``AUDIENCES_FEATURES_MEMORY_LIMIT`` sets one.
    The staged query peaks at 2.8 GiB for a million customers without one; on the single statement it
    replaced, a 2GB limit made the query 40 % to 2.5 times slower (spilling) and a 2.5GB one failed outright
    ("failed to pin block"), so a default limit would trade speed or a failed run for memory.
    """
    spill = settings.home() / "tmp" / "duckdb"
    spill.mkdir(parents=True, exist_ok=True)
    con.execute("SET temp_directory = ?", [str(spill)])
    con.execute("SET preserve_insertion_order = false")
    limit = os.environ.get(MEMORY_LIMIT_ENV)
    if limit:
        con.execute("SET memory_limit = ?", [limit])


# Rows per Arrow batch when streaming the result out of DuckDB.
_BATCH_ROWS = 100_000


def _frame_like_duckdb(table: pa.Table) -> pd.DataFrame:
    """``table`` as the pandas frame DuckDB's ``.df()`` gives for the same result, column for column.

    The result is streamed out as Arrow rather than fetched with ``.df()``, which first materialises the
    whole result inside DuckDB and then copies it (at a million customers that doubled the peak memory).
    The dtypes stay those of ``.df()`` because the lake manifest and every reader of the feature table
    depend on them: integers and booleans with nulls become pandas' nullable types (plain numpy types
    without), dates ``datetime64[us]``, strings pandas' Arrow-backed ``str``
    (also when a column is all empty, where ``.df()`` gave object: one dtype per kind, which a file written
    by ``write_features`` can carry).
    """
    string = pd.StringDtype("pyarrow", na_value=np.nan)
    columns: dict[str, pd.Series] = {}
    for name, col in zip(table.column_names, table.columns, strict=True):
        kind = col.type
        if pa.types.is_date(kind):
            columns[name] = col.cast(pa.timestamp("us")).to_pandas()
        elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
            columns[name] = col.to_pandas(types_mapper={kind: string}.get)
        elif pa.types.is_integer(kind) and col.null_count:
            sign = "U" if pa.types.is_unsigned_integer(kind) else ""
            nullable = pd.api.types.pandas_dtype(f"{sign}Int{kind.bit_width}")
            columns[name] = col.to_pandas(types_mapper={kind: nullable}.get)
        elif pa.types.is_boolean(kind) and col.null_count:
            columns[name] = col.to_pandas(types_mapper={kind: pd.BooleanDtype()}.get)
        else:
            columns[name] = col.to_pandas()
    return pd.DataFrame(columns)


def _run_stages(
    con: duckdb.DuckDBPyConnection,
    window: RunWindow,
    extras: Sequence[Feature],
    seconds: dict[str, float] | None = None,
) -> tuple[str, dict[str, object]]:
    """Create the stage tables in ``con`` (timing each into ``seconds``); returns the final query over them
    and its parameters."""
    _register_inputs(con, extras)
    fixed = {"as_of": window.as_of, "run_date": window.run_date, "radius_km": EARTH_RADIUS_KM}

    def bound(sql: str) -> tuple[str, dict[str, object]]:
        sql, params = _day_sql(sql, window)
        params |= fixed
        return sql, {k: v for k, v in params.items() if f"${k}" in sql}  # DuckDB refuses unused parameters

    for table, stage in _STAGES:
        sql, params = bound(stage)
        started = time.perf_counter()
        con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS {sql}", params)
        took = time.perf_counter() - started
        log.info("feature stage %s: %.1fs", table, took)
        if seconds is not None:
            seconds[table] = took
    extra_sql = "".join(f",\n       p.{_quote(f.name)}" for f in extras)
    return bound(_FINAL.replace("{extras}", extra_sql))


def _drop_stages(con: duckdb.DuckDBPyConnection) -> None:
    for table, _ in _STAGES:
        con.execute(f"DROP TABLE IF EXISTS temp.main.{table}")  # never a table of the caller's


def _literal(text: str) -> str:
    """A SQL string literal (COPY's file name and options cannot be bound parameters)."""
    return "'" + text.replace("'", "''") + "'"


def _check_columns(names: Sequence[str], extras: Sequence[Feature]) -> list[str]:
    columns = COLUMNS + [f.name for f in extras]
    missing = [c for c in columns if c not in names]
    if missing:
        raise RuntimeError(f"feature query lost documented column(s) {missing}; update features/catalog.py")
    return columns


def compute_features(con: duckdb.DuckDBPyConnection, window: RunWindow, extras: Sequence[Feature] = ()) -> pd.DataFrame:
    """Run the feature query on views already in ``con``: ``customers``, ``orders`` and ``web_events``,
    and when available ``purchases`` (unified purchase lines), ``survey_responses`` and ``stores``.

    ``extras`` are the configured CRM attributes (``catalog.crm_features``): columns of ``customers``
    returned as-is, cast to their configured kind, after the built-in features. The pipeline writes the
    table with ``write_features`` instead, which never holds it in Python.
    """
    try:
        sql, params = _run_stages(con, window, extras)
        ordered = f"SELECT * FROM ({sql}) ORDER BY customer_key"
        table = con.sql(ordered, params=params).to_arrow_reader(_BATCH_ROWS).read_all()
    finally:
        _drop_stages(con)
    frame = _frame_like_duckdb(table)
    del table  # the frame holds what it needs (strings share the Arrow buffers)
    return frame[_check_columns(list(frame.columns), extras)]


@dataclass(frozen=True)
class WrittenFeatures:
    """What ``write_features`` wrote: rows, buyers, and each column's pandas dtype as ``Lake.write`` records
    it ("null" for a column without a value)."""

    rows: int
    buyers: int
    schema: dict[str, str]
    seconds: dict[str, float]  # per stage, then "result" (the join) and "write"


def write_features(
    con: duckdb.DuckDBPyConnection, window: RunWindow, path: Path, extras: Sequence[Feature] = ()
) -> WrittenFeatures:
    """``compute_features`` written by DuckDB straight to the Parquet file ``path``.

    At a million customers the pandas frame cost about 1 GiB on top of the query, and its Parquet bytes
    another copy. The file is the one pandas writes from ``compute_features``'s frame: dates as timestamps,
    and pandas metadata that gives readers the same dtypes. Those depend on which columns have empty values
    (``_frame_like_duckdb``), so the result is kept in a temporary table, its empty values counted, and the
    metadata taken from a two-row stand-in with the same emptiness put through the same conversion.
    """
    seconds: dict[str, float] = {}
    try:
        sql, params = _run_stages(con, window, extras, seconds)
        columns = _check_columns(con.sql(sql, params=params).columns, extras)
        select = ", ".join(map(_quote, columns))
        started = time.perf_counter()
        con.execute(f"CREATE OR REPLACE TEMP TABLE features_result AS SELECT {select} FROM ({sql})", params)
        seconds["result"] = time.perf_counter() - started
    finally:
        _drop_stages(con)
    try:
        result = con.table("features_result")
        types = {
            c: "TIMESTAMP" if str(t) == "DATE" else str(t) for c, t in zip(result.columns, result.types, strict=True)
        }
        cols = {c: f"CAST({_quote(c)} AS {types[c]})" for c in columns}
        (counts,) = con.sql(
            "SELECT count(*), count(*) FILTER (WHERE orders > 0), "
            + ", ".join(f"count({_quote(c)})" for c in columns)
            + " FROM features_result"
        ).fetchall()
        rows, buyers, filled = int(counts[0]), int(counts[1]), dict(zip(columns, map(int, counts[2:]), strict=True))
        # any_value is empty only when the whole column is
        first = ", ".join(f"any_value({q}) AS {_quote(c)}" for c, q in cols.items())
        second = ", ".join(
            f"CAST(NULL AS {types[c]}) AS {_quote(c)}" if filled[c] < rows else f"any_value({q}) AS {_quote(c)}"
            for c, q in cols.items()
        )
        stand_in = _frame_like_duckdb(
            con.sql(
                f"SELECT {first} FROM features_result UNION ALL SELECT {second} FROM features_result"
            ).to_arrow_table()
        )
        metadata = pa.Schema.from_pandas(stand_in, preserve_index=False).metadata[b"pandas"].decode()
        outputs = ", ".join(f"{q} AS {_quote(c)}" for c, q in cols.items())
        started = time.perf_counter()
        con.execute(
            # ordered here: with preserve_insertion_order off a table keeps no order (configure_connection)
            f"COPY (SELECT {outputs} FROM features_result ORDER BY customer_key) TO {_literal(str(path))} "
            f"(FORMAT parquet, KV_METADATA {{pandas: {_literal(metadata)}}})"
        )
        seconds["write"] = time.perf_counter() - started
    finally:
        con.execute("DROP TABLE IF EXISTS temp.main.features_result")
    schema = {c: "null" if filled[c] == 0 else str(stand_in[c].dtype) for c in columns}
    return WrittenFeatures(rows, buyers, schema, seconds)


def build_features(
    lake: Lake, window: RunWindow, refs: dict[str, TableRef], config_dir: Path | None = None
) -> dict[str, int]:
    day = window.run_date
    extras = crm_features(load_features_config(config_dir or settings.config_dir()))
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        configure_connection(con)
        con.read_parquet(lake.local_files("unified", UNIFIED, "customers", day)).create_view("customers")
        con.read_parquet(lake.local_files("unified", UNIFIED, "purchases", day)).create_view("purchases")
        if lake.exists("unified", UNIFIED, "keymap", day):
            con.read_parquet(lake.local_files("unified", UNIFIED, "keymap", day)).create_view("keymap")
        register_current(con, lake, refs["orders"].source, "orders", day)
        register_current(con, lake, refs["web_events"].source, "web_events", day)
        register_current(con, lake, refs["stores"].source, "stores", day)
        if "survey_responses" in refs:
            register_current(con, lake, refs["survey_responses"].source, "survey_responses", day)
        with tempfile.TemporaryDirectory(prefix="features-", dir=settings.home() / "tmp") as tmp:
            path = Path(tmp) / f"{FEATURE_TABLE}.parquet"
            written = write_features(con, window, path, extras)
            lake.write_file("features", FEATURE_SOURCE, FEATURE_TABLE, day, path, written.rows, written.schema)
    finally:
        con.close()
    log.info("built features for %d customers (%d with orders)", written.rows, written.buyers)
    return {"customers": written.rows, "with_orders": written.buyers}
