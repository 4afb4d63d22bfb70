"""One profile per customer from CRM contacts and POS orders.

The walking skeleton keys customers by the loyalty id (``customer_id``) that POS orders, CRM
contacts and logged-in web events share; identity resolution across emails, phones and web ids
(issue 4) replaces ``customer_key`` assignment here without changing the output's shape.
"""

from __future__ import annotations

import logging
from datetime import date

import duckdb
import pandas as pd

from tasks.current import current_frame, register_current
from tasks.lake import Lake
from tasks.normalize.contact import normalize_email, normalize_phone
from tasks.normalize.province import canonical_province
from tasks.normalize.url import page_path_sql
from tasks.settings import RunWindow
from tasks.tables import TableRef

log = logging.getLogger(__name__)

UNIFIED = "audiences"


# Contact columns build_profiles maps itself; every other contact column is carried as-is.
_MAPPED = (
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
)
# Optional CRM attributes every profile has (empty when the CRM does not send them), so the feature
# query can rely on their presence.
TEXT_ATTRIBUTES = (
    "occupation",
    "marital_status",
    "income_band",
    "customer_type",
    "company",
    "industry",
    "company_size",
)
COORDINATES = ("latitude", "longitude")
PROFILE_ATTRIBUTES = TEXT_ATTRIBUTES + COORDINATES


def _text(s: pd.Series) -> pd.Series:
    """Trimmed text with blanks as missing: a CSV cell of spaces is no more an answer than an empty one."""
    text = s.astype("string").str.strip()
    return text.mask(text == "")


def build_profiles(contacts: pd.DataFrame, orders: pd.DataFrame) -> pd.DataFrame:
    """One row per customer: the latest CRM contact, plus POS-only buyers with empty attributes.

    Contact columns beyond the mapped ones (``interests``, ``commute_mode``, anything a CRM adds) are
    carried unchanged so config/features.yaml can expose them as rule fields without code.
    """
    latest = contacts.dropna(subset=["customer_id"]).sort_values("updated_at", na_position="first")
    latest = latest.drop_duplicates("customer_id", keep="last")
    prof = pd.DataFrame(
        {
            "customer_key": latest["customer_id"].astype("string"),
            "customer_id": latest["customer_id"].astype("string"),
            "full_name": latest["full_name"].astype("string"),
            "email": latest["email"].map(lambda v: normalize_email(v) if isinstance(v, str) else None),
            "phone": latest["phone"].map(lambda v: normalize_phone(v) if isinstance(v, str) else None),
            "gender": latest["gender"].astype("string"),
            "birthday": latest["birthday"],
            "province": latest["province"].map(lambda v: canonical_province(v) if isinstance(v, str) else None),
            "email_opt_in": latest["email_opt_in"],
            "sms_opt_in": latest["sms_opt_in"],
            "ads_opt_in": latest["ads_opt_in"],
            "member_since": latest["member_since"],
            "nps_latest": latest["nps_score"],
            "csat_latest": latest["csat_score"],
        }
    )
    for col in TEXT_ATTRIBUTES:
        prof[col] = (
            _text(latest[col]) if col in latest.columns else pd.Series(pd.NA, index=latest.index, dtype="string")
        )
    for col in COORDINATES:
        values = latest[col] if col in latest.columns else pd.Series(float("nan"), index=latest.index)
        prof[col] = pd.to_numeric(values, errors="coerce").astype("float64")
    # Lower-cased so "Business" from one CRM user and "business" from another are one value in rules.
    prof["customer_type"] = prof["customer_type"].str.lower()
    lineage = {"_source", "_row"}
    carried = [c for c in latest.columns if c not in _MAPPED and c not in PROFILE_ATTRIBUTES and c not in lineage]
    for col in carried:
        prof[col] = latest[col]
    buyers = pd.Index(orders["customer_id"].dropna().unique()).difference(pd.Index(prof["customer_id"]))
    if len(buyers):
        # POS-only customers (no CRM contact yet) still get a profile; their attributes stay empty.
        extra = pd.DataFrame({"customer_key": buyers.astype("string"), "customer_id": buyers.astype("string")})
        prof = pd.concat([prof, extra], ignore_index=True)
    for col in ("email", "phone", "province"):
        prof[col] = prof[col].astype("string")
    for col in TEXT_ATTRIBUTES:
        prof[col] = prof[col].astype("string")
    for col in COORDINATES:
        prof[col] = prof[col].astype("float64")
    for col in ("email_opt_in", "sms_opt_in", "ads_opt_in"):
        prof[col] = prof[col].astype("boolean").fillna(False)
    return prof.sort_values("customer_key").reset_index(drop=True)


def customer_keymap(keys: pd.DataFrame, contacts: pd.DataFrame, orders: pd.DataFrame) -> pd.DataFrame:
    """(customer_id, customer_key) for every loyalty id, from the identity resolution's record keys.

    Every stage keyed by loyalty id (orders, surveys, logged-in web events) joins through this map,
    so two loyalty ids of one person count as one customer.
    """
    key_of = dict(zip(keys["record_id"], keys["customer_key"], strict=True))
    pairs = [
        (cid, key_of.get(f"crm:{contact}"))
        for contact, cid in zip(contacts["contact_id"], contacts["customer_id"], strict=True)
        if isinstance(cid, str) and isinstance(contact, str)
    ]
    pairs += [(cid, key_of.get(f"pos:{cid}")) for cid in orders["customer_id"].dropna().unique()]
    frame = pd.DataFrame(pairs, columns=["customer_id", "customer_key"]).dropna()
    return frame.drop_duplicates("customer_id").sort_values("customer_id").reset_index(drop=True)


def resolve_identities(
    contacts: pd.DataFrame, orders: pd.DataFrame, web: pd.DataFrame, day: date
) -> tuple[pd.DataFrame, dict[str, int]]:
    from tasks.unify.identity import IdentityStore, identity_records, load_identity_config, resolve

    records = identity_records(contacts, orders, web)
    res = resolve(records, load_identity_config(), IdentityStore(), day.isoformat())
    keymap = customer_keymap(res.keys, contacts, orders)
    stats = {"identity_merges": len(res.merges), "identifiers_refused": int(res.refused["records"].sum())}
    return keymap, stats


def unify(lake: Lake, window: RunWindow, refs: dict[str, TableRef]) -> dict[str, int]:
    day = window.run_date
    contacts = current_frame(lake, refs["contacts"].source, "contacts", day)
    orders = current_frame(lake, refs["orders"].source, "orders", day)
    web = current_frame(lake, refs["web_events"].source, "web_events", day)
    keymap, identity_stats = resolve_identities(contacts, orders, web[["user_pseudo_id", "user_id"]], day)
    lake.write("unified", UNIFIED, "keymap", day, keymap)
    key_of = dict(zip(keymap["customer_id"], keymap["customer_key"], strict=True))
    profiles = build_profiles(contacts, orders)
    profiles["customer_key"] = profiles["customer_id"].map(key_of).fillna(profiles["customer_id"]).astype("string")
    # Two loyalty ids resolved to one person: one profile (the first id's CRM record).
    profiles = profiles.drop_duplicates("customer_key").sort_values("customer_key").reset_index(drop=True)
    lake.write("unified", UNIFIED, "customers", day, profiles)
    lines = current_frame(lake, refs["order_lines"].source, "order_lines", day)
    products = current_frame(lake, refs["products"].source, "products", day)
    purchases = lines.merge(orders[["order_id", "customer_id", "ordered_at"]], on="order_id", how="inner").merge(
        products[["product_id", "category"]], on="product_id", how="left"
    )
    purchases["customer_key"] = purchases["customer_id"].map(key_of)
    purchases = purchases[["customer_key", "order_id", "ordered_at", "product_id", "category", "line_total_vnd"]]
    # In time order, as the orders and web events: a windowed rule then reads only the row groups whose
    # time range reaches into its window.
    purchases = purchases.sort_values(["ordered_at", "order_id"], kind="stable").reset_index(drop=True)
    lake.write("unified", UNIFIED, "purchases", day, purchases)
    lake.write("unified", UNIFIED, "orders", day, unified_orders(orders, key_of))
    orphan_lines = len(lines) - len(purchases)
    events = unified_web_events(lake, refs["web_events"].source, day)
    events["customer_key"] = events["customer_key"].map(key_of)
    lake.write("unified", UNIFIED, "web_events", day, events)
    log.info("unified %d customer profiles, %d purchase lines", len(profiles), len(purchases))
    return {
        "customers": len(profiles),
        "purchase_lines": len(purchases),
        "lines_without_clean_order": orphan_lines,
        "web_events": len(events),
        **identity_stats,
    }


ORDER_COLUMNS = [
    "customer_key",
    "order_id",
    "ordered_at",
    "total_vnd",
    "discount_vnd",
    "store_id",
    "channel",
    "voucher_code",
]


def unified_orders(orders: pd.DataFrame, key_of: dict[str, str]) -> pd.DataFrame:
    """One row per order with the customer's key, in time order.

    Rules that count orders or sum what customers paid ("3+ orders in 90 days", "spent 1,000,000 VND
    this year") read this instead of the purchase lines: a row per order rather than per line, and the
    totals after discounts, as the ``orders`` and ``spend_last_*`` features count them. Guest orders
    (no known customer) keep an empty key, like their lines in ``purchases``.
    """
    out = orders.reindex(columns=[c for c in ORDER_COLUMNS if c != "customer_key"])
    for col in ("order_id", "store_id", "channel", "voucher_code"):  # text even where a source lacks it
        out[col] = out[col].astype("string")
    out.insert(0, "customer_key", orders["customer_id"].map(key_of).astype("string"))
    return out.sort_values(["ordered_at", "order_id"], kind="stable").reset_index(drop=True)


def unified_web_events(lake: Lake, source: str, day: date) -> pd.DataFrame:
    """Web events keyed by customer, for rules such as "viewed X but did not buy it".

    Anonymous events stay in (customer_key empty): they still count for site-wide analysis, and
    identity resolution can attach them later through the pseudo id. ``page_path`` is the page's path
    (tasks/normalize/url.py), extracted once here rather than by every rule on every page view.

    Ordered by event name, then time: every web rule names its event and most have a window, so the
    Parquet reader skips the row groups of other events and of other times ("clicked the
    call-to-action last month" reads a sliver of the table, not every page view).
    """
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        register_current(con, lake, source, "web_events", day)
        return con.execute(
            f"""
            SELECT user_id AS customer_key, user_pseudo_id, session_id, event_at, event_name, page_location,
                   {page_path_sql("page_location")} AS page_path,
                   item_ids, item_categories, device_category, browser, traffic_source
            FROM web_events ORDER BY event_name, event_at
            """
        ).df()
    finally:
        con.close()
