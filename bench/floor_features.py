"""The honest floor for the feature benchmark: EVERY product feature in one hand-written DuckDB query.

Why. ``bench.segments_bench`` compares the product's feature query (``tasks/features/build.py``,
``compute_features``: about 80 columns through typed views and a keymap join, into pandas, then
Parquet) with "the least a competent DuckDB user would write by hand". A floor that computes only the
17 core columns compares 80 columns of work with 17 and so overstates the product's overhead; this one
computes all of them, with the same values: the columns of ``tasks.features.catalog.COLUMNS`` in that
order, then the configured CRM attributes. It is what an expert writes for speed: one statement straight
over the Parquet files, no views, window bounds computed once in Python as instants (no per-row time
zone conversion), no casts beyond what the output types need, Parquet out with ``COPY``.

It mirrors the product's DEFINITIONS (``build.py``'s docstring and the catalog), not its SQL:

* a day is the calendar day in the business time zone; "last N days" are the N days ending with the
  run date, i.e. from the start of day ``run_date - (N - 1)``; only rows before ``as_of`` count;
  ``recency_days`` and ``tenure_days`` are calendar days to the run date, ``age`` the whole years
  completed on it;
* preferences: the store / channel with the most orders, the device / browser with the most events,
  ties to the smaller value; an order without a store (channel) or an event without a device (browser)
  is not counted, so a customer who never bought in a store has no preferred store (an empty-string id
  is still a store); ``traffic_source`` is the source of the latest event that has one (the same instant:
  the smaller source), ``first_page`` the page of the earliest page_view (ties: the smaller page);
* nearest store: haversine with R = 6371 km over the stores open on the run date, ties to the smaller
  store id; RFM: ``ntile(5)`` over buyers, ties split by customer key;
* category / product lists: the distinct values, sorted, joined with ','; ``viewed_not_bought_30d``: the
  distinct products viewed (view_item) in the last 30 days that were not bought in those days;
* survey scores: the latest answer with a score (the same instant: the lower score) / the average of
  the answers, else the CRM's ``nps_latest`` / ``csat_latest``;
* a profile without a ``customer_key`` is no customer: nothing is matched to it (its orders form no
  buyer in the RFM tiles), so it gets only its own CRM columns and zero counts;
* output types as the product's file: ``birth_month``, ``birth_day`` and ``age`` INTEGER, and the dates
  ``birthday`` and ``member_since`` as timestamps (midnight).

How it is checked: its output at size S (``bench.segdata``) against the product's, every column row by
row (both empty = equal, floats to 1e-9, instants exactly): zero mismatching rows in every column. It
was also run against the product on a handful of hand-made rows for what S barely exercises (ties, empty
values, rows on the window and as-of boundaries, an order of an unknown customer, a store opened later).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import duckdb

from bench import segdata
from tasks.features.build import EARTH_RADIUS_KM, SQL_TYPES
from tasks.features.catalog import COLUMNS, Feature
from tasks.settings import RunWindow

WINDOWS = (7, 30, 90, 365)
WEB_COUNTS = {"page_view": "page_views", "view_item": "product_views", "add_to_cart": "add_to_cart"}
AGE_BANDS = ((18, "<18"), (25, "18-24"), (35, "25-34"), (45, "35-44"), (55, "45-54"), (65, "55-64"))

# The CTE of floor_sql each computed column comes from; any other column is the customer's own ("c"), so a
# catalog column this module does not know fails the query instead of going missing.
SOURCE = {
    **dict.fromkeys(
        ["orders", "monetary_total", "avg_order_value", "first_purchase_at", "last_purchase_at", "recency_days",
         "discount_share"], "a"),
    **{f"{what}_last_{n}d": "a" for what in ("orders", "spend") for n in WINDOWS},
    **{f"vouchers_used_{n}d": "a" for n in WINDOWS[1:]},
    "preferred_store": "sp", "preferred_channel": "cp",
    "r_score": "rfm", "f_score": "rfm", "m_score": "rfm",
    "survey_answers": "sv",
    **{f"web_sessions_{n}d": "ses" for n in WINDOWS[:3]},
    **{f"{name}_{n}d": "w" for name in WEB_COUNTS.values() for n in WINDOWS[:3]},
    "traffic_source": "w", "first_page": "w", "device_category": "dv", "browser": "br",
    **{f"categories_last_{n}d": "pc" for n in WINDOWS[1:]},
    "products_last_30d": "pp", "viewed_not_bought_30d": "vnb",
    "distance_to_nearest_store_km": "ns", "nearest_store": "ns",
}  # fmt: skip

# Counts and sums: 0 (not empty) for a customer without orders, web activity or survey answers.
ZERO_WHEN_EMPTY = {
    "orders",
    "monetary_total",
    "survey_answers",
    "viewed_not_bought_30d",
    *(f"{what}_last_{n}d" for what in ("orders", "spend") for n in WINDOWS),
    *(f"vouchers_used_{n}d" for n in WINDOWS[1:]),
    *(f"{name}_{n}d" for name in ("web_sessions", *WEB_COUNTS.values()) for n in WINDOWS[:3]),
}


def _ts(at: datetime) -> str:
    return f"TIMESTAMPTZ '{at.isoformat()}'"


def _select_list(window: RunWindow, extras: Sequence[Feature]) -> str:
    """The output columns in the product's order."""
    bands = " ".join(f"WHEN c.age < {below} THEN '{label}'" for below, label in AGE_BANDS)
    expr = {
        "birthday": "c.birthday::TIMESTAMP",
        "member_since": "c.member_since::TIMESTAMP",
        "birth_month": "month(c.birthday)::INTEGER",
        "birth_day": "day(c.birthday)::INTEGER",
        "age_band": f"CASE {bands} WHEN c.age IS NOT NULL THEN '65+' END",
        "customer_type": "coalesce(nullif(lower(trim(c.customer_type)), ''), 'personal')",
        "tenure_days": f"DATE '{window.run_date}' - c.member_since",
        "nps_latest": "coalesce(sv.nps, c.nps_latest)",
        "csat_latest": "coalesce(sv.csat, c.csat_latest)",
        "nps_avg": "coalesce(sv.nps_avg, c.nps_latest)",
        "csat_avg": "coalesce(sv.csat_avg, c.csat_latest)",
        "rfm_score": "rfm.r_score::VARCHAR || rfm.f_score::VARCHAR || rfm.m_score::VARCHAR",
    }
    out = []
    for name in COLUMNS:
        e = expr.get(name) or f"{SOURCE.get(name, 'c')}.{name}"
        out.append(f"coalesce({e}, 0) AS {name}" if name in ZERO_WHEN_EMPTY else f"{e} AS {name}")
    out += [f'TRY_CAST(c."{f.name}" AS {SQL_TYPES[f.kind]}) AS "{f.name}"' for f in extras]
    return ",\n    ".join(out)


def floor_sql(data: Path, out: Path, window: RunWindow, extras: Sequence[Feature] = ()) -> str:
    """One ``COPY (SELECT ...) TO out`` computing every product feature straight over the Parquet files."""

    def src(table: str) -> str:
        return f"read_parquet('{segdata.files(data, table)}')"

    since = {n: _ts(window.day_start(window.run_date - timedelta(days=n - 1))) for n in WINDOWS}
    as_of, run, tz = _ts(window.as_of), window.run_date, window.tz.key
    order_windows = ",\n      ".join(
        f"count(*) FILTER (WHERE ordered_at >= {since[n]}) AS orders_last_{n}d, "
        f"sum(total_vnd) FILTER (WHERE ordered_at >= {since[n]})::BIGINT AS spend_last_{n}d"
        + (f", count(*) FILTER (WHERE ordered_at >= {since[n]} AND has_voucher) AS vouchers_used_{n}d" if n > 7 else "")
        for n in WINDOWS
    )
    web_counts = ",\n      ".join(
        f"count(*) FILTER (WHERE event_name = '{event}' AND event_at >= {since[n]}) AS {name}_{n}d"
        for event, name in WEB_COUNTS.items()
        for n in WINDOWS[:3]
    )
    sessions = ", ".join(f"count(*) FILTER (WHERE last_at >= {since[n]}) AS web_sessions_{n}d" for n in WINDOWS[:3])
    categories = ",\n      ".join(
        f"array_to_string(list_sort(list(category){f' FILTER (WHERE last_at >= {since[n]})' if n < 365 else ''}), ',')"
        f" AS categories_last_{n}d"
        for n in WINDOWS[1:]
    )
    birthday_passed = f"month(birthday) * 100 + day(birthday) <= {run.month * 100 + run.day}"
    # No keymap in the benchmark: the product then maps orders.customer_id, web_events.user_id and
    # survey_responses.customer_id to customers.customer_key through the customer_id of the profiles that
    # have a key, so the floor joins those ids to c.keyed_id (the customer_id of a profile with a key). RFM
    # needs the key itself (buyers are customers, ties go by key): one join of the per-buyer rows.
    # viewed_not_bought_30d matches the events' user_id with the purchase lines' customer_key directly,
    # which relies on customer_key == customer_id (true in the bench data; the product maps user_id to the
    # key first).
    return f"""
COPY (
  WITH a AS (
    SELECT customer_id, count(*) AS orders, sum(total_vnd)::BIGINT AS monetary_total,
      avg(total_vnd) AS avg_order_value, min(ordered_at) AS first_purchase_at, max(ordered_at) AS last_purchase_at,
      DATE '{run}' - CAST(timezone('{tz}', max(ordered_at)) AS DATE) AS recency_days,
      {order_windows},
      avg(CASE WHEN discount_vnd > 0 THEN 1.0 ELSE 0.0 END) AS discount_share
    FROM (SELECT *, trim(voucher_code) <> '' AS has_voucher FROM {src("orders")})
    WHERE customer_id IS NOT NULL AND ordered_at < {as_of}
    GROUP BY customer_id
  ),
  rfm AS (
    -- quintiles over the customers who ordered, ties split by customer_key
    SELECT customer_key,
      ntile(5) OVER (ORDER BY recency_days DESC, customer_key) AS r_score,
      ntile(5) OVER (ORDER BY orders, customer_key) AS f_score,
      ntile(5) OVER (ORDER BY monetary_total, customer_key) AS m_score
    FROM a JOIN (SELECT customer_id, customer_key FROM {src("customers")} WHERE customer_key IS NOT NULL)
      USING (customer_id)
  ),
  oc AS (
    SELECT customer_id, store_id, channel, count(*) AS n FROM {src("orders")}
    WHERE customer_id IS NOT NULL AND ordered_at < {as_of} GROUP BY ALL
  ),
  -- most orders, then the smaller value; arg_min skips a NULL store / channel (so do dv and br below)
  sp AS (
    SELECT customer_id, arg_min(store_id, (-n, store_id)) AS preferred_store
    FROM (SELECT customer_id, store_id, sum(n) AS n FROM oc GROUP BY ALL) GROUP BY customer_id
  ),
  cp AS (
    SELECT customer_id, arg_min(channel, (-n, channel)) AS preferred_channel
    FROM (SELECT customer_id, channel, sum(n) AS n FROM oc GROUP BY ALL) GROUP BY customer_id
  ),
  pl AS (
    SELECT customer_key, category, product_id, ordered_at FROM {src("purchases")}
    WHERE customer_key IS NOT NULL AND ordered_at >= {since[365]} AND ordered_at < {as_of}
  ),
  pc AS (
    SELECT customer_key,
      {categories}
    FROM (SELECT customer_key, category, max(ordered_at) AS last_at FROM pl WHERE category IS NOT NULL GROUP BY ALL)
    GROUP BY customer_key
  ),
  bought AS (
    SELECT DISTINCT customer_key, product_id FROM pl WHERE ordered_at >= {since[30]} AND product_id IS NOT NULL
  ),
  pp AS (
    SELECT customer_key, array_to_string(list_sort(list(product_id)), ',') AS products_last_30d
    FROM bought GROUP BY customer_key
  ),
  we AS NOT MATERIALIZED (
    SELECT * FROM {src("web_events")} WHERE user_id IS NOT NULL AND event_at < {as_of}
  ),
  w AS (
    SELECT user_id,
      {web_counts},
      arg_min(traffic_source, (-epoch_us(event_at), traffic_source)) AS traffic_source,
      arg_min(page_location, (event_at, page_location)) FILTER (WHERE event_name = 'page_view') AS first_page
    FROM we GROUP BY user_id
  ),
  ses AS (
    SELECT user_id, {sessions}
    FROM (SELECT user_id, session_id, max(event_at) AS last_at FROM we WHERE session_id IS NOT NULL GROUP BY ALL)
    GROUP BY user_id
  ),
  db AS (SELECT user_id, device_category, browser, count(*) AS n FROM we GROUP BY ALL),
  dv AS (
    SELECT user_id, arg_min(device_category, (-n, device_category)) AS device_category
    FROM (SELECT user_id, device_category, sum(n) AS n FROM db GROUP BY ALL) GROUP BY user_id
  ),
  br AS (
    SELECT user_id, arg_min(browser, (-n, browser)) AS browser
    FROM (SELECT user_id, browser, sum(n) AS n FROM db GROUP BY ALL) GROUP BY user_id
  ),
  viewed AS (
    SELECT DISTINCT user_id AS customer_key, trim(unnest(string_split(item_ids, ','))) AS product_id
    FROM we WHERE event_name = 'view_item' AND event_at >= {since[30]}
  ),
  vnb AS (
    SELECT customer_key, count(*) AS viewed_not_bought_30d
    FROM viewed ANTI JOIN bought USING (customer_key, product_id)
    WHERE product_id <> ''
    GROUP BY customer_key
  ),
  ns AS (
    -- every customer with coordinates against every open store (a few dozen): haversine, nearest first
    SELECT customer_key, min(km) AS distance_to_nearest_store_km, arg_min(store_id, (km, store_id)) AS nearest_store
    FROM (
      SELECT c.customer_key, s.store_id, 2 * {EARTH_RADIUS_KM} * asin(sqrt(least(1,
          sin((s.lat - c.lat) / 2) ^ 2 + c.cos_lat * s.cos_lat * sin((s.lon - c.lon) / 2) ^ 2))) AS km
      FROM (
        SELECT customer_key, radians(latitude) AS lat, radians(longitude) AS lon, cos(radians(latitude)) AS cos_lat
        FROM {src("customers")} WHERE latitude IS NOT NULL AND longitude IS NOT NULL
      ) c, (
        SELECT store_id, radians(latitude) AS lat, radians(longitude) AS lon, cos(radians(latitude)) AS cos_lat
        FROM {src("stores")}
        WHERE store_id IS NOT NULL AND latitude IS NOT NULL AND longitude IS NOT NULL
          AND (opened_on IS NULL OR opened_on <= DATE '{run}')
      ) s
    )
    GROUP BY customer_key
  ),
  sv AS (
    SELECT customer_id,
      arg_min(nps_score, (-epoch_us(answered_at), nps_score)) AS nps,
      arg_min(csat_score, (-epoch_us(answered_at), csat_score)) AS csat,
      avg(nps_score) AS nps_avg, avg(csat_score) AS csat_avg, count(*) AS survey_answers
    FROM {src("survey_responses")} WHERE answered_at < {as_of} GROUP BY customer_id
  )
  SELECT
    {_select_list(window, extras)}
  FROM (
    SELECT *, ({run.year} - year(birthday) - CASE WHEN {birthday_passed} THEN 0 ELSE 1 END)::INTEGER AS age,
      CASE WHEN customer_key IS NOT NULL THEN customer_id END AS keyed_id
    FROM {src("customers")}
  ) c
  LEFT JOIN a ON a.customer_id = c.keyed_id
  LEFT JOIN sp ON sp.customer_id = c.keyed_id
  LEFT JOIN cp ON cp.customer_id = c.keyed_id
  LEFT JOIN sv ON sv.customer_id = c.keyed_id
  LEFT JOIN w ON w.user_id = c.keyed_id
  LEFT JOIN ses ON ses.user_id = c.keyed_id
  LEFT JOIN dv ON dv.user_id = c.keyed_id
  LEFT JOIN br ON br.user_id = c.keyed_id
  LEFT JOIN rfm USING (customer_key)
  LEFT JOIN pc USING (customer_key)
  LEFT JOIN pp USING (customer_key)
  LEFT JOIN vnb USING (customer_key)
  LEFT JOIN ns USING (customer_key)
) TO '{out}' (FORMAT parquet)
"""


def run_floor(data: Path, out: Path, window: RunWindow, extras: Sequence[Feature] = ()) -> None:
    """Run :func:`floor_sql` on a fresh in-memory connection, instants in UTC as the product's."""
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(floor_sql(data, out, window, extras))
    finally:
        con.close()
