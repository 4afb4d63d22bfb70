"""The product's customer features written the way a pandas user would write them (issue 4's baseline).

Why: ``bench/segments_bench.py`` reports how much faster the product's feature query
(``tasks/features/build.py``) is than plain pandas. That ratio only means something if the pandas side
computes the SAME table: every column of ``tasks.features.catalog.COLUMNS`` plus the configured CRM
attributes, in the product's order, with the product's values. It must also be an honest baseline,
written as a competent pandas user would write it for speed, neither a strawman nor another engine:

* ``pd.read_parquet`` reads only the columns each part needs, pushes the as-of cut-off and the windows
  down as ``filters=``, and reads repeated strings (ids, event names, URLs) as categoricals, whose
  integer codes are what the groupbys key on (one factorisation per table instead of one per groupby);
* every aggregate is a vectorised ``groupby().agg`` with named aggregations; one value per customer is
  picked with ``idxmax`` or a ``transform("max")`` filter, sorted distinct values are comma-joined by a
  string ``groupby().sum()``, the haversine distance to every store is one numpy broadcast, and tables
  meet with ``merge``/``join``. There is no Python loop over rows or groups, and no DuckDB or polars.

Definitions mirror the product's query (see its module docstring and SQL):

* a day is the calendar day in the business time zone; "last N days" are the N days ending with the
  run date (at or after the first instant of the day N-1 days before it), and only rows before the
  as-of instant (the start of the day after the run date) count;
* ``recency_days`` counts calendar days from the last order's local day to the run date, ``tenure_days``
  from ``member_since``, ``age`` is the whole years completed on the run date;
* preferences (store, channel, device, browser) take the value with the most orders or events, ties to
  the smaller value; orders or events without the value do not count, so a customer who never bought in
  a store has no ``preferred_store``;
* ``traffic_source`` is that of the latest event that has one (two at the same instant: the smaller
  source), ``first_page`` the page of the earliest page_view (ties to the smaller URL);
* ``nps_latest``/``csat_latest`` are the latest survey answer with that score (two at the same instant:
  the lower score), falling back to the CRM's own values, as do the averages;
* the nearest store is by haversine (R = 6371 km) over stores open on the run date, ties to the smaller
  store id; r/f/m scores are ``ntile(5)`` over buyers with ties split by ``customer_key``;
* orders, web events and surveys reach a customer through its loyalty id (``customers.customer_id``:
  the product's key map when there is no ``keymap`` view, as in the benchmark, which assumes one
  profile per key), purchase lines through ``customer_key``. A profile without a ``customer_key`` is in
  no key map: it gets no activity and its orders form no buyer in the RFM tiles.

How it is checked: at size S the result was compared with the product's ``compute_features`` column by
column (both empty counts as equal, floats to 1e-9): all 81 columns match on every row. Small
adversarial data sets (ties at every pick above, empty values, profiles without a key, blank vouchers,
padded item lists, stores not yet open) match on every row and column too.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from tasks.features.build import INPUTS
from tasks.features.catalog import COLUMNS, Feature, Kind
from tasks.settings import RunWindow

WINDOWS = (7, 30, 90, 365)
WEB_WINDOWS = (7, 30, 90)
VOUCHER_WINDOWS = (30, 90, 365)
CATEGORY_WINDOWS = (30, 90, 365)
WEB_EVENTS = {"page_view": "page_views", "view_item": "product_views", "add_to_cart": "add_to_cart"}
EARTH_RADIUS_KM = 6371.0
# What the web features read from the events.
WEB_COLUMNS = [
    "user_id",
    "session_id",
    "event_at",
    "event_name",
    "page_location",
    "device_category",
    "browser",
    "traffic_source",
    "item_ids",
]
AGE_BANDS = ["<18", "18-24", "25-34", "35-44", "45-54", "55-64", "65+"]

# What the product reads from the customer profile (every built-in column it passes through or derives from).
CUSTOMER_COLUMNS = list(INPUTS["customers"])

BOOLEAN_COLUMNS = ["email_opt_in", "sms_opt_in", "ads_opt_in"]

# Counts and sums: zero (not empty) for a customer without orders, web activity or surveys, as in the product.
COUNT_COLUMNS = [
    "orders",
    "monetary_total",
    *(f"orders_last_{n}d" for n in WINDOWS),
    *(f"spend_last_{n}d" for n in WINDOWS),
    *(f"vouchers_used_{n}d" for n in VOUCHER_WINDOWS),
    "survey_answers",
    *(f"web_sessions_{n}d" for n in WEB_WINDOWS),
    *(f"{name}_{n}d" for name in WEB_EVENTS.values() for n in WEB_WINDOWS),
    "viewed_not_bought_30d",
]

# The columns the first baseline covered (kept for callers that compare only these).
CORE_COLUMNS = [
    "customer_key",
    "orders",
    "monetary_total",
    "avg_order_value",
    "first_purchase_at",
    "last_purchase_at",
    "recency_days",
    *(f"orders_last_{n}d" for n in (30, 90, 365)),
    *(f"spend_last_{n}d" for n in (30, 90, 365)),
    "discount_share",
    "web_sessions_30d",
    "page_views_30d",
    "product_views_30d",
    "add_to_cart_30d",
]


def all_columns(extras: Sequence[Feature] = ()) -> list[str]:
    """The product's columns, in its order: the catalog's built-in features, then the CRM extras."""
    return COLUMNS + [f.name for f in extras]


# --------------------------------------------------------------------------------------
# Days
# --------------------------------------------------------------------------------------


def _window_start(window: RunWindow, days: int) -> pd.Timestamp:
    """First instant of "the last ``days`` days": local midnight of the day ``days - 1`` before the run date
    (the earliest one when midnight is ambiguous, the next valid instant when a zone skips it)."""
    day = pd.Timestamp(window.run_date - timedelta(days=days - 1))
    return day.tz_localize(window.tz.key, ambiguous=True, nonexistent="shift_forward")


def _starts(window: RunWindow, days: Sequence[int]) -> dict[int, pd.Timestamp]:
    return {n: _window_start(window, n) for n in days}


def _factorized(frame: pd.DataFrame, column: str) -> tuple[pd.DataFrame, pd.Index]:
    """``frame`` with its categorical id ``column`` replaced by the integer codes (far cheaper to group by
    than strings, or than a categorical of a million ids that every ``observed=True`` groupby recodes),
    rows without an id dropped (no customer has them); and the ids, to label the aggregates with."""
    ids = frame[column].cat.categories
    frame = frame.assign(**{column: frame[column].cat.codes})
    return (frame[frame[column] >= 0] if (frame[column] < 0).any() else frame), ids


def _by_id(frame: pd.DataFrame | pd.Series, ids: pd.Index) -> pd.DataFrame:
    """A per-code aggregate (see ``_factorized``) indexed by the ids themselves."""
    out = frame.to_frame() if isinstance(frame, pd.Series) else frame
    out.index = ids.take(out.index.to_numpy())
    return out


def _most_common(counts: pd.DataFrame, by: str, value: str) -> pd.Series:
    """Per ``by``, the ``value`` (never empty) with the largest count ``n``; ties to the smaller value."""
    top = counts[counts["n"] == counts.groupby(by)["n"].transform("max")]
    return _smallest(top, by, value)


def _smallest(rows: pd.DataFrame, by: str, value: str) -> pd.Series:
    """Per ``by``, the smallest ``value`` of ``rows``: compared as strings (a categorical's ``min`` would follow
    its dictionary order) or numbers."""
    values = rows[value]
    if isinstance(values.dtype, pd.CategoricalDtype):
        values = values.astype("str")
    return values.groupby(rows[by]).min()


def _latest(rows: pd.DataFrame, by: str, at: str, value: str) -> pd.Series:
    """Per ``by``, the ``value`` of its row with the latest ``at``; rows at that same instant to the smallest
    value (a ``transform("max")`` filter, where ``idxmax`` would take whichever row came first)."""
    last = rows[rows[at] == rows.groupby(by)[at].transform("max")]
    return _smallest(last, by, value)


def _joined(pairs: pd.DataFrame, by: str, value: str) -> pd.Series:
    """Per ``by``, its distinct ``value``s sorted and joined with ',' (string concatenation in a groupby sum)."""
    pairs = pairs.assign(**{value: pairs[value].astype("str")}).sort_values(value)
    return (pairs[value] + ",").groupby(pairs[by]).sum().str[:-1]


# --------------------------------------------------------------------------------------
# Parts, each one row per id (loyalty id or customer key)
# --------------------------------------------------------------------------------------


def order_features(orders_dir: Path, window: RunWindow) -> pd.DataFrame:
    """Order aggregates, store and channel preferences and RFM inputs, indexed by loyalty id."""
    orders = pd.read_parquet(
        orders_dir,
        engine="pyarrow",
        columns=["customer_id", "store_id", "channel", "ordered_at", "total_vnd", "discount_vnd", "voucher_code"],
        filters=[("ordered_at", "<", pd.Timestamp(window.as_of))],
        read_dictionary=["customer_id", "store_id", "channel", "voucher_code"],
    )
    orders, ids = _factorized(orders, "customer_id")
    starts = _starts(window, WINDOWS)
    in_window = {n: orders["ordered_at"] >= starts[n] for n in WINDOWS}
    has_voucher = orders["voucher_code"].str.strip(" ").fillna("").ne("")
    orders = orders.assign(
        discounted=orders["discount_vnd"].fillna(0).gt(0).astype("float64"),
        **{f"in_{n}": in_window[n] for n in WINDOWS},
        **{f"spend_{n}": orders["total_vnd"].where(in_window[n], 0) for n in WINDOWS},
        **{f"voucher_{n}": has_voucher & in_window[n] for n in VOUCHER_WINDOWS},
    )
    agg = orders.groupby("customer_id").agg(
        orders=("ordered_at", "size"),
        monetary_total=("total_vnd", "sum"),
        avg_order_value=("total_vnd", "mean"),
        first_purchase_at=("ordered_at", "min"),
        last_purchase_at=("ordered_at", "max"),
        **{f"orders_last_{n}d": (f"in_{n}", "sum") for n in WINDOWS},
        **{f"spend_last_{n}d": (f"spend_{n}", "sum") for n in WINDOWS},
        **{f"vouchers_used_{n}d": (f"voucher_{n}", "sum") for n in VOUCHER_WINDOWS},
        discount_share=("discounted", "mean"),
    )
    last_day = agg["last_purchase_at"].dt.tz_convert(window.tz.key).dt.tz_localize(None).dt.normalize()
    agg["recency_days"] = (pd.Timestamp(window.run_date) - last_day).dt.days
    # Orders per customer and store (channel); orders without one (the groupby drops them) do not count.
    for column, name in (("store_id", "preferred_store"), ("channel", "preferred_channel")):
        counts = orders.groupby(["customer_id", column], observed=True).size().rename("n").reset_index()
        agg[name] = _most_common(counts, "customer_id", column)
    return _by_id(agg, ids)


def purchase_features(purchases_dir: Path, window: RunWindow) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Category and product lists per customer key, and the distinct (customer, product) pairs bought in
    the last 30 days (for ``viewed_not_bought_30d``)."""
    starts = _starts(window, CATEGORY_WINDOWS)
    lines = pd.read_parquet(
        purchases_dir,
        engine="pyarrow",
        columns=["customer_key", "product_id", "category", "ordered_at"],
        filters=[("ordered_at", ">=", starts[365]), ("ordered_at", "<", pd.Timestamp(window.as_of))],
        read_dictionary=["customer_key", "product_id", "category"],
    )
    lines, keys = _factorized(lines, "customer_key")
    # One row per customer and category with its latest purchase: in a window iff that is.
    cats = lines.groupby(["customer_key", "category"], observed=True)["ordered_at"].max().reset_index()
    lists = {
        f"categories_last_{n}d": _joined(cats[cats["ordered_at"] >= starts[n]], "customer_key", "category")
        for n in CATEGORY_WINDOWS
    }
    recent = lines.loc[lines["ordered_at"] >= starts[30], ["customer_key", "product_id"]]
    bought = recent.dropna().drop_duplicates()
    lists["products_last_30d"] = _joined(bought, "customer_key", "product_id")
    bought = bought.assign(
        customer_key=keys.take(bought["customer_key"].to_numpy()), product_id=bought["product_id"].astype("str")
    )
    return _by_id(pd.DataFrame(lists), keys), bought


def web_features(
    events_dir: Path, window: RunWindow, bought: pd.DataFrame, keymap: pd.DataFrame
) -> tuple[pd.DataFrame, pd.Series]:
    """Logged-in web activity before the as-of instant, indexed by loyalty id (user_id), and
    ``viewed_not_bought_30d`` indexed by customer key.

    ``bought`` are the (customer_key, product_id) pairs bought in the last 30 days and ``keymap`` maps
    loyalty ids to customer keys: the products viewed through a loyalty id count against those bought
    under its customer key."""
    starts = _starts(window, WEB_WINDOWS)
    events = pd.read_parquet(
        events_dir,
        engine="pyarrow",
        columns=WEB_COLUMNS,
        filters=pc.field("user_id").is_valid() & (pc.field("event_at") < pd.Timestamp(window.as_of)),
        read_dictionary=[c for c in WEB_COLUMNS if c not in ("session_id", "event_at")],  # the text columns
    )
    user = "user_id"
    events, ids = _factorized(events, user)

    # Event counts per name and window.
    named = events.loc[events["event_name"].isin(list(WEB_EVENTS)), [user, "event_name", "event_at"]]
    flags = pd.DataFrame({n: named["event_at"] >= starts[n] for n in WEB_WINDOWS})
    counts = pd.DataFrame(flags.groupby([named[user], named["event_name"]], observed=True).sum().unstack(fill_value=0))
    days, names = counts.columns.get_level_values(0), counts.columns.get_level_values(1)
    counts.columns = [f"{WEB_EVENTS[str(name)]}_{n}d" for n, name in zip(days, names, strict=True)]
    counts = counts.reindex(columns=[f"{c}_{n}d" for c in WEB_EVENTS.values() for n in WEB_WINDOWS], fill_value=0)

    # Sessions (the groupby drops an empty session id): a session is in a window when any of its events is.
    last_event = events.groupby([user, "session_id"])["event_at"].max()
    sessions = pd.DataFrame({f"web_sessions_{n}d": last_event >= starts[n] for n in WEB_WINDOWS})
    sessions = sessions.groupby(level=user).sum()

    # Most used device and browser (by events), ties to the smaller name.
    prefs = {}
    for column in ("device_category", "browser"):
        used = events.groupby([user, column], observed=True).size().rename("n").reset_index()
        prefs[column] = _most_common(used, user, column)

    # Traffic source of the latest event that has one (ties to the smaller source).
    sourced = events.loc[events["traffic_source"].notna(), [user, "event_at", "traffic_source"]]
    traffic = _latest(sourced, user, "event_at", "traffic_source")

    # Page of the earliest page_view (ties to the smaller URL).
    views = events.loc[
        (events["event_name"] == "page_view") & events["page_location"].notna(), [user, "event_at", "page_location"]
    ]
    earliest = views[views["event_at"] == views.groupby(user)["event_at"].transform("min")]
    first_page = _smallest(earliest, user, "page_location").rename("first_page")

    # Distinct products viewed in the last 30 days (item_ids split on ',') not bought in those 30 days.
    viewed = events.loc[
        (events["event_name"] == "view_item") & (events["event_at"] >= starts[30]) & events["item_ids"].notna(),
        [user, "item_ids"],
    ].drop_duplicates()
    # Each distinct item_ids string split once, then joined to the (user, item_ids) pairs that carry it.
    lists = viewed["item_ids"].cat.categories
    items = pd.DataFrame({"item_ids": lists, "product_id": lists.str.split(",")}).explode("product_id")
    items = items.assign(product_id=items["product_id"].str.strip(" ")).query("product_id != ''")
    viewed = viewed.assign(item_ids=viewed["item_ids"].astype("str"), **{user: ids.take(viewed[user].to_numpy())})
    viewed = viewed.merge(items, on="item_ids")[[user, "product_id"]].drop_duplicates()
    viewed = viewed.merge(keymap, left_on=user, right_on="customer_id")
    viewed = viewed.merge(bought, on=["customer_key", "product_id"], how="left", indicator=True)
    not_bought = viewed[viewed["_merge"] == "left_only"].groupby("customer_key").size()

    parts: list[pd.DataFrame | pd.Series] = [counts, sessions, *prefs.values(), traffic, first_page]
    return _by_id(pd.concat(parts, axis=1), ids), not_bought


def survey_features(surveys_dir: Path, window: RunWindow) -> pd.DataFrame:
    """Survey answers before the as-of instant: latest and average scores and the count, by loyalty id."""
    surveys = pd.read_parquet(
        surveys_dir,
        engine="pyarrow",
        columns=["customer_id", "answered_at", "nps_score", "csat_score"],
        filters=[("answered_at", "<", pd.Timestamp(window.as_of))],
        read_dictionary=["customer_id"],
    )
    surveys, ids = _factorized(surveys, "customer_id")
    agg = surveys.groupby("customer_id").agg(
        survey_nps_avg=("nps_score", "mean"),
        survey_csat_avg=("csat_score", "mean"),
        survey_answers=("answered_at", "size"),
    )
    # The latest answer with a score, two at the same instant to the lower score.
    for score, name in (("nps_score", "survey_nps_latest"), ("csat_score", "survey_csat_latest")):
        answered = surveys.loc[surveys[score].notna(), ["customer_id", "answered_at", score]]
        agg[name] = _latest(answered, "customer_id", "answered_at", score)
    return _by_id(agg, ids)


def nearest_store(stores_dir: Path, window: RunWindow, latitude: pd.Series, longitude: pd.Series) -> pd.DataFrame:
    """Nearest store open on the run date (haversine, ties to the smaller id) for each located customer."""
    stores = pd.read_parquet(
        stores_dir,
        engine="pyarrow",
        columns=["store_id", "latitude", "longitude", "opened_on"],
        to_pandas_kwargs={"date_as_object": False},
    ).dropna(subset=["store_id", "latitude", "longitude"])
    open_ = stores["opened_on"].isna() | (stores["opened_on"] <= pd.Timestamp(window.run_date))
    stores = stores[open_].sort_values("store_id")
    located = latitude.notna() & longitude.notna()
    out = pd.DataFrame(
        {"distance_to_nearest_store_km": np.nan, "nearest_store": pd.Series(np.nan, dtype="str")},
        index=latitude.index,
    )
    if stores.empty or not located.any():
        return out
    lat = latitude[located].to_numpy("float64")[:, None]
    lon = longitude[located].to_numpy("float64")[:, None]
    s_lat = stores["latitude"].to_numpy("float64")[None, :]
    s_lon = stores["longitude"].to_numpy("float64")[None, :]
    a = np.sin(np.radians(s_lat - lat) / 2) ** 2 + np.cos(np.radians(lat)) * np.cos(np.radians(s_lat)) * (
        np.sin(np.radians(s_lon - lon) / 2) ** 2
    )
    km = 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.minimum(1.0, a)))
    best = km.argmin(axis=1)  # the first minimum: stores are ordered by id
    out.loc[located, "distance_to_nearest_store_km"] = km[np.arange(len(best)), best]
    out.loc[located, "nearest_store"] = stores["store_id"].to_numpy()[best]
    return out


def _ntile(frame: pd.DataFrame, by: str, ascending: bool, buckets: int = 5) -> pd.Series:
    """SQL ``ntile(buckets) OVER (ORDER BY by, customer_key)``: the first ``len % buckets`` tiles get one
    row more."""
    ordered = frame.sort_values([by, "customer_key"], ascending=[ascending, True])
    pos = np.arange(len(ordered))
    size, extra = divmod(len(ordered), buckets)
    big = extra * (size + 1)
    tile = np.where(pos < big, pos // (size + 1), extra + (pos - big) // max(size, 1)) + 1
    return pd.Series(tile, index=ordered.index, dtype="int64")


def _as_kind(values: pd.Series, kind: Kind) -> pd.Series:
    """A configured CRM attribute as its kind; a value that does not fit is empty (the product's TRY_CAST)."""
    if kind == "string":
        return values.astype("str")
    if kind == "integer":
        return pd.to_numeric(values, errors="coerce").round().astype("Int64")
    if kind == "number":
        return pd.to_numeric(values, errors="coerce").astype("float64")
    if kind == "boolean":
        if pd.api.types.is_bool_dtype(values):
            return values.astype("boolean")
        text = values.astype("str").str.strip().str.lower()
        return text.map({"true": True, "t": True, "1": True, "false": False, "f": False, "0": False}).astype("boolean")
    if kind == "date":
        return pd.to_datetime(values, errors="coerce").dt.normalize()
    return pd.to_datetime(values, errors="coerce", utc=True)


# --------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------


def all_features(data: Path, window: RunWindow, extras: Sequence[Feature] = ()) -> pd.DataFrame:
    """One row per customer of ``data/customers``, the product's columns (``all_columns(extras)``) in its
    order and with its values."""
    customers = pd.read_parquet(
        data / "customers",
        engine="pyarrow",
        columns=[*CUSTOMER_COLUMNS, *(f.name for f in extras)],
        to_pandas_kwargs={"date_as_object": False},
    ).astype({"nps_latest": "Int64", "csat_latest": "Int64", **dict.fromkeys(BOOLEAN_COLUMNS, "boolean")})
    run_day = pd.Timestamp(window.run_date)
    keymap = customers[["customer_id", "customer_key"]].dropna().drop_duplicates().astype("str")

    lists, bought = purchase_features(data / "purchases", window)
    web, not_bought = web_features(data / "web_events", window, bought, keymap)
    del bought
    by_id = pd.concat(
        [order_features(data / "orders", window), web, survey_features(data / "survey_responses", window)], axis=1
    )
    del web
    by_key = pd.concat([lists, not_bought.rename("viewed_not_bought_30d")], axis=1)
    # The key map pairs each loyalty id with its profile's key, so a profile without a key gets no activity.
    customers["loyalty_id"] = customers["customer_id"].where(customers["customer_key"].notna())
    out = customers.join(by_id, on="loyalty_id").join(by_key, on="customer_key")
    del by_id, by_key, lists

    # Profile columns.
    birthday = out["birthday"]
    before_birthday = (birthday.dt.month > window.run_date.month) | (
        (birthday.dt.month == window.run_date.month) & (birthday.dt.day > window.run_date.day)
    )
    age = (window.run_date.year - birthday.dt.year - before_birthday.astype("int64")).astype("Int32")
    bands = pd.cut(age, [-np.inf, 18, 25, 35, 45, 55, 65, np.inf], right=False, labels=AGE_BANDS)
    out = out.assign(
        birth_month=birthday.dt.month.astype("Int32"),
        birth_day=birthday.dt.day.astype("Int32"),
        age=age,
        age_band=pd.Series(bands, index=out.index).astype("str"),
        customer_type=out["customer_type"].fillna("").str.strip(" ").str.lower().replace("", "personal"),
        tenure_days=(run_day - out["member_since"]).dt.days.astype("Int64"),
        # The survey file's answers first, the CRM fields as the fallback.
        nps_latest=out.pop("survey_nps_latest").fillna(out["nps_latest"]).astype("Int64"),
        csat_latest=out.pop("survey_csat_latest").fillna(out["csat_latest"]).astype("Int64"),
        nps_avg=out.pop("survey_nps_avg").fillna(out["nps_latest"].astype("float64")),
        csat_avg=out.pop("survey_csat_avg").fillna(out["csat_latest"].astype("float64")),
        **{f.name: _as_kind(out[f.name], f.kind) for f in extras},
    )
    nearest = nearest_store(data / "stores", window, out["latitude"], out["longitude"])
    out[nearest.columns] = nearest
    out[COUNT_COLUMNS] = out[COUNT_COLUMNS].fillna(0).astype("int64")
    out["recency_days"] = out["recency_days"].astype("Int64")

    # RFM quintiles over buyers only.
    buyers = out.loc[out["orders"] > 0, ["customer_key", "recency_days", "orders", "monetary_total"]]
    scores = pd.DataFrame(
        {
            "r_score": _ntile(buyers, "recency_days", ascending=False),
            "f_score": _ntile(buyers, "orders", ascending=True),
            "m_score": _ntile(buyers, "monetary_total", ascending=True),
        }
    )
    scores["rfm_score"] = (
        scores["r_score"].astype("str") + scores["f_score"].astype("str") + scores["m_score"].astype("str")
    )
    out = out.join(scores)
    return out[all_columns(extras)]


def core_features(data: Path, window: RunWindow) -> pd.DataFrame:
    """The first baseline's columns (``CORE_COLUMNS``), taken from the full computation."""
    return all_features(data, window)[CORE_COLUMNS]
