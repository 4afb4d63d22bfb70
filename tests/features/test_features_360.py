"""Exact values of the customer-360 features on hand-made frames.

Run date 2026-11-24 in Asia/Ho_Chi_Minh (UTC+7): as_of = 2026-11-24T17:00:00Z, and a local day D starts at
D-1 17:00 UTC. Frames go through Parquet, as in build_features, so DuckDB sees production column types.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import duckdb
import pandas as pd
import pytest

from tasks.config.loader import ConfigError
from tasks.features.build import compute_features
from tasks.features.catalog import (
    COLUMNS,
    FEATURES,
    Feature,
    FeaturesConfig,
    crm_features,
    features,
    load_features_config,
)
from tasks.sample import SampleData
from tasks.sample.generate import PROVINCES
from tasks.settings import RunWindow
from tasks.unify.profiles import build_profiles

WINDOW = RunWindow(date(2026, 11, 24), ZoneInfo("Asia/Ho_Chi_Minh"))
RUN = WINDOW.run_date
KM_PER_DEGREE = 6371.0 * math.pi / 180  # along a meridian haversine is exactly R * delta-latitude


def local(days_before: int, hour: int = 10) -> pd.Timestamp:
    """UTC instant of ``hour``:00 local time, ``days_before`` business days before the run date."""
    day = RUN - timedelta(days=days_before)
    return pd.Timestamp(f"{day.isoformat()}T{hour:02d}:00:00+07:00").tz_convert("UTC")


def contact(cid: str, **kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "contact_id": f"C-{cid}",
        "customer_id": cid,
        "full_name": f"Khách {cid}",
        "email": f"{cid.lower()}@shop.vn",
        "phone": "0912345678",
        "gender": "female",
        "birthday": None,
        "province": "Hồ Chí Minh",
        "email_opt_in": True,
        "sms_opt_in": False,
        "ads_opt_in": True,
        "member_since": date(2020, 1, 1),
        "nps_score": None,
        "csat_score": None,
        "updated_at": pd.Timestamp("2026-01-01", tz="UTC"),
    }
    row.update(kw)
    return row


def contacts_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    for col in ("email_opt_in", "sms_opt_in", "ads_opt_in"):
        frame[col] = frame[col].astype("boolean")
    for col in ("nps_score", "csat_score"):
        frame[col] = frame[col].astype("Int64")
    return frame


def orders_frame(rows: list[tuple[str, str, pd.Timestamp, int, int, str | None]]) -> pd.DataFrame:
    """Rows of (customer, order_id, ordered_at, total, discount, voucher_code)."""
    frame = pd.DataFrame(
        rows, columns=["customer_id", "order_id", "ordered_at", "total_vnd", "discount_vnd", "voucher_code"]
    )
    frame["ordered_at"] = pd.to_datetime(frame["ordered_at"], utc=True)
    frame["store_id"] = "S1"
    frame["channel"] = "store"
    frame[["total_vnd", "discount_vnd"]] = frame[["total_vnd", "discount_vnd"]].astype("Int64")
    frame["voucher_code"] = frame["voucher_code"].astype("string")
    return frame


def web_frame(rows: list[tuple[str, str, int, pd.Timestamp, str, str | None, str]]) -> pd.DataFrame:
    """Rows of (user_id, event_name, session_id, event_at, page_location, item_ids, browser)."""
    frame = pd.DataFrame(
        rows, columns=["user_id", "event_name", "session_id", "event_at", "page_location", "item_ids", "browser"]
    )
    frame["event_at"] = pd.to_datetime(frame["event_at"], utc=True)
    frame["session_id"] = frame["session_id"].astype("Int64")
    frame["device_category"] = "mobile"
    frame["traffic_source"] = "google"
    frame["item_ids"] = frame["item_ids"].astype("string")
    return frame


def purchases_frame(rows: list[tuple[str, str, pd.Timestamp, str, str]]) -> pd.DataFrame:
    """Rows of (customer_key, order_id, ordered_at, product_id, category), as unify writes them."""
    frame = pd.DataFrame(rows, columns=["customer_key", "order_id", "ordered_at", "product_id", "category"])
    frame["ordered_at"] = pd.to_datetime(frame["ordered_at"], utc=True)
    frame["line_total_vnd"] = pd.Series([100] * len(frame), dtype="Int64")
    return frame


EMPTY_WEB = web_frame([])


def compute(
    tmp: Path,
    contacts: pd.DataFrame,
    orders: pd.DataFrame,
    web: pd.DataFrame = EMPTY_WEB,
    extra_views: dict[str, pd.DataFrame] | None = None,
    extras: tuple[Feature, ...] = (),
) -> pd.DataFrame:
    views = {"customers": build_profiles(contacts, orders), "orders": orders, "web_events": web}
    views |= extra_views or {}
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone='UTC'")
        for name, frame in views.items():
            path = tmp / f"{name}.parquet"
            frame.to_parquet(path, index=False)
            con.read_parquet(str(path)).create_view(name)
        return compute_features(con, WINDOW, extras).set_index("customer_key", drop=False)
    finally:
        con.close()


# --- purchases, vouchers and windows ----------------------------------------------------------------------------

ORDERS = [
    ("BUY", "O1", local(0), 100, 10, "TET2026"),  # run date: in every window
    ("BUY", "O2", local(6, hour=0), 200, 0, None),  # 00:00 local, 6 days before: last day of the 7-day window
    ("BUY", "O3", pd.Timestamp("2026-11-17T16:59:59Z"), 400, 5, " "),  # local 11-17 23:59: 7 days before, out of 7d
    ("BUY", "O4", local(29), 800, 5, "BLACKFRIDAY"),  # in 30d
    ("BUY", "O5", pd.Timestamp("2026-10-25T16:59:59Z"), 1, 5, "XMAS"),  # local 10-25: 30 days before, out of 30d
    ("BUY", "O6", local(200), 1, 5, "MEMBER10"),  # in 365d
    ("BUY", "O7", local(365), 1, 5, "OLD"),  # 365 days before: outside every window
    ("BUY", "O8", pd.Timestamp("2026-11-24T17:00:00Z"), 1, 5, "FUTURE"),  # = as_of: not yet happened
]

PURCHASES = [
    ("BUY", "O1", local(0), "P-010", "wallet"),
    ("BUY", "O4", local(29), "P-001", "backpack"),
    ("BUY", "O4", local(29), "P-011", "wallet"),
    ("BUY", "O4", local(29), "P-011", "wallet"),  # the same product twice is listed once
    ("BUY", "O5", pd.Timestamp("2026-10-25T16:59:59Z"), "P-020", "handbag"),  # 30 days before: 90d, not 30d
    ("BUY", "O6", local(200), "P-030", "apparel"),
    ("BUY", "O6", local(200), "P-031", None),  # a product missing from the catalogue has no category
    ("BUY", "O7", local(365), "P-040", "shoes"),  # outside 365d
    ("BUY", "O8", pd.Timestamp("2026-11-24T17:00:00Z"), "P-050", "accessories"),  # at as_of: ignored
    # viewed-not-bought: P-003 was bought, but 40 days ago, so viewing it in the last 30 days still counts
    ("WEB", "O9", local(40), "P-003", "wallet"),
    ("WEB", "O10", local(3), "P-002", "wallet"),
]

WEB = [
    # user, event, session, at, page, item_ids, browser
    ("WEB", "session_start", 1, local(100, hour=8), "https://shop.vn/landing", None, "Safari"),
    ("WEB", "page_view", 1, local(100, hour=9), "https://shop.vn/sale", None, "Safari"),  # first page_view ever
    ("WEB", "page_view", 2, local(60), "https://shop.vn/p/P-004", None, "Chrome"),
    ("WEB", "view_item", 2, local(60), "https://shop.vn/p/P-004", "P-004", "Chrome"),  # 60 days before: not 30d
    ("WEB", "page_view", 3, local(10), "https://shop.vn/c/wallet", None, "Chrome"),
    ("WEB", "view_item", 3, local(10), "https://shop.vn/p/P-003", "P-003", "Chrome"),
    ("WEB", "view_item", 4, local(0), "https://shop.vn/p/P-001", "P-001,P-002", "Safari"),
    ("WEB", "view_item", 4, local(0, hour=11), "https://shop.vn/p/P-003", "P-003", "Chrome"),
    ("WEB", "page_view", 4, local(0), "https://shop.vn/", None, "Chrome"),
    ("WEB", "add_to_cart", 4, local(0), "https://shop.vn/p/P-005", "P-005", "Chrome"),  # not a view
    ("WEB", "page_view", 5, pd.Timestamp("2026-11-24T17:00:00Z"), "https://shop.vn/x", None, "Edge"),  # as_of
]


@pytest.fixture(scope="module")
def feats(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    contacts = contacts_frame([contact("BUY"), contact("WEB"), contact("NONE", member_since=None)])
    orders = orders_frame([*ORDERS, ("WEB", "O9", local(40), 1, 0, None), ("WEB", "O10", local(3), 1, 0, None)])
    return compute(
        tmp_path_factory.mktemp("f360"),
        contacts,
        orders,
        web_frame(WEB),
        {"purchases": purchases_frame(PURCHASES)},
    )


def test_seven_day_window_ends_on_the_run_date(feats: pd.DataFrame) -> None:
    row = feats.loc["BUY"]
    assert row["orders_last_7d"] == 2
    assert row["spend_last_7d"] == 300
    assert row["orders_last_30d"] == 4 and row["orders"] == 7


def test_vouchers_per_window_count_orders_with_a_code(feats: pd.DataFrame) -> None:
    row = feats.loc["BUY"]
    assert row["vouchers_used_30d"] == 2  # O1, O4 (O3's code is blank)
    assert row["vouchers_used_90d"] == 3  # + O5
    assert row["vouchers_used_365d"] == 4  # + O6; O7 is 365 days before, O8 at as_of
    assert feats.loc["WEB", "vouchers_used_365d"] == 0
    assert feats.loc["NONE", "vouchers_used_30d"] == 0


def test_categories_and_products_per_window_are_sorted_distinct_lists(feats: pd.DataFrame) -> None:
    row = feats.loc["BUY"]
    assert row["categories_last_30d"] == "backpack,wallet"
    assert row["categories_last_90d"] == "backpack,handbag,wallet"
    assert row["categories_last_365d"] == "apparel,backpack,handbag,wallet"
    assert row["products_last_30d"] == "P-001,P-010,P-011"
    assert pd.isna(feats.loc["NONE", "categories_last_365d"])
    assert pd.isna(feats.loc["NONE", "products_last_30d"])


def test_viewed_not_bought_counts_distinct_items_viewed_and_not_bought_in_30_days(feats: pd.DataFrame) -> None:
    # viewed in 30d: P-001, P-002, P-003 (twice); P-002 bought 3 days ago; P-004 viewed 60 days ago;
    # P-005 only added to cart.
    assert feats.loc["WEB", "viewed_not_bought_30d"] == 2
    assert feats.loc["BUY", "viewed_not_bought_30d"] == 0


def test_web_windows_browser_and_first_page(feats: pd.DataFrame) -> None:
    row = feats.loc["WEB"]
    assert (row["web_sessions_7d"], row["web_sessions_30d"], row["web_sessions_90d"]) == (1, 2, 3)
    assert (row["page_views_7d"], row["page_views_30d"], row["page_views_90d"]) == (1, 2, 3)
    assert (row["product_views_7d"], row["product_views_30d"], row["product_views_90d"]) == (2, 3, 4)
    assert (row["add_to_cart_7d"], row["add_to_cart_90d"]) == (1, 1)
    assert row["browser"] == "Chrome"  # 7 Chrome events before as_of vs 3 Safari; Edge is at as_of
    assert row["first_page"] == "https://shop.vn/sale"  # session_start is not a page_view
    assert pd.isna(feats.loc["BUY", "browser"]) and pd.isna(feats.loc["BUY", "first_page"])


def test_tenure_counts_days_from_member_since(feats: pd.DataFrame) -> None:
    assert feats.loc["BUY", "tenure_days"] == (RUN - date(2020, 1, 1)).days == 2519
    assert pd.isna(feats.loc["NONE", "tenure_days"])


# --- profile attributes, age bands, business customers -----------------------------------------------------------

AGES = {  # customer -> (birthday, expected age band); a birthday on the run date counts
    "A17": (date(2008, 11, 25), "<18"),
    "A18": (date(2008, 11, 24), "18-24"),
    "A24": (date(2001, 11, 25), "18-24"),
    "A25": (date(2001, 11, 24), "25-34"),
    "A34": (date(1991, 11, 25), "25-34"),
    "A35": (date(1991, 11, 24), "35-44"),
    "A44": (date(1981, 11, 25), "35-44"),
    "A45": (date(1981, 11, 24), "45-54"),
    "A54": (date(1971, 11, 25), "45-54"),
    "A55": (date(1971, 11, 24), "55-64"),
    "A64": (date(1961, 11, 25), "55-64"),
    "A65": (date(1961, 11, 24), "65+"),
}

BUSINESS = {
    "customer_type": " Business ",
    "company": "Công ty TNHH Sao Mai",
    "industry": "events",
    "company_size": "10-49",
    "occupation": "office worker",
    "marital_status": "married",
    "income_band": ">40M",
    "latitude": 10.0,
    "longitude": 106.0,
    "member_since": RUN,
    "birthday": date(1990, 3, 7),
}

STORES = pd.DataFrame(
    {
        "store_id": ["S-FAR", "S-NEAR", "S-LATER", "S-NOWHERE"],
        "latitude": [9.8, 10.1, 10.05, None],
        "longitude": [106.0, 106.0, 106.0, None],
        "opened_on": [date(2016, 1, 1), None, date(2026, 11, 25), date(2016, 1, 1)],  # S-LATER opens tomorrow
    }
)


@pytest.fixture(scope="module")
def people(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    rows = [contact(cid, birthday=b) for cid, (b, _) in AGES.items()]
    rows += [
        contact("BIZ", **BUSINESS),
        contact("FAR", latitude=9.7, longitude=106.0, customer_type="personal"),
        contact("NOWHERE", latitude=None, longitude=106.0, customer_type=""),
    ]
    contacts = contacts_frame(rows)
    orders = orders_frame([("POSONLY", "X1", local(1), 5, 0, None)])
    return compute(tmp_path_factory.mktemp("people"), contacts, orders, extra_views={"stores": STORES})


def test_age_band_edges(people: pd.DataFrame) -> None:
    got = {cid: people.loc[cid, "age_band"] for cid in AGES}
    assert got == {cid: band for cid, (_, band) in AGES.items()}
    assert people.loc["A17", "age"] == 17 and people.loc["A65", "age"] == 65
    assert pd.isna(people.loc["FAR", "age_band"])  # no birthday


def test_birth_day_is_the_day_of_month(people: pd.DataFrame) -> None:
    assert people.loc["BIZ", "birth_day"] == 7
    assert people.loc["BIZ", "birth_month"] == 3
    assert pd.isna(people.loc["FAR", "birth_day"])


def test_business_customer_carries_company_fields(people: pd.DataFrame) -> None:
    row = people.loc["BIZ"]
    assert row["customer_type"] == "business"
    assert (row["company"], row["industry"], row["company_size"]) == ("Công ty TNHH Sao Mai", "events", "10-49")
    assert (row["occupation"], row["marital_status"], row["income_band"]) == ("office worker", "married", ">40M")
    assert row["tenure_days"] == 0


def test_personal_is_the_default_customer_type(people: pd.DataFrame) -> None:
    assert people.loc["FAR", "customer_type"] == "personal"
    assert people.loc["NOWHERE", "customer_type"] == "personal"  # blank in the CRM
    assert people.loc["POSONLY", "customer_type"] == "personal"  # no CRM contact at all
    assert pd.isna(people.loc["FAR", "company"])


def test_nearest_store_distance_skips_stores_not_yet_open(people: pd.DataFrame) -> None:
    biz = people.loc["BIZ"]
    assert biz["nearest_store"] == "S-NEAR"  # S-LATER would be nearer but opens after the run date
    assert biz["distance_to_nearest_store_km"] == pytest.approx(0.1 * KM_PER_DEGREE, abs=1e-9)  # 11.12 km
    assert (biz["latitude"], biz["longitude"]) == (10.0, 106.0)
    far = people.loc["FAR"]
    assert far["nearest_store"] == "S-FAR"
    assert far["distance_to_nearest_store_km"] == pytest.approx(0.1 * KM_PER_DEGREE, abs=1e-9)
    assert pd.isna(people.loc["NOWHERE", "distance_to_nearest_store_km"])  # latitude missing
    assert pd.isna(people.loc["NOWHERE", "nearest_store"])
    assert pd.isna(people.loc["POSONLY", "distance_to_nearest_store_km"])


def test_distance_is_great_circle_away_from_the_meridian(tmp_path: Path) -> None:
    # Hồ Chí Minh City to Hà Nội, both store coordinates from the sample: about 1,138 km by air.
    stores = pd.DataFrame(
        {"store_id": ["S009"], "latitude": [21.0245], "longitude": [105.8556], "opened_on": [date(2016, 8, 8)]}
    )
    contacts = contacts_frame([contact("HCM", latitude=10.7743, longitude=106.7038)])
    got = compute(tmp_path, contacts, orders_frame([]), extra_views={"stores": stores})
    lat1, lon1, lat2, lon2 = map(math.radians, (10.7743, 106.7038, 21.0245, 105.8556))
    a = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    expected = 2 * 6371.0 * math.asin(math.sqrt(a))
    assert got.loc["HCM", "distance_to_nearest_store_km"] == pytest.approx(expected, rel=1e-12)
    assert 1130 < expected < 1145


def test_without_a_stores_view_distance_is_empty(tmp_path: Path) -> None:
    contacts = contacts_frame([contact("HCM", latitude=10.7743, longitude=106.7038)])
    got = compute(tmp_path, contacts, orders_frame([]))
    assert pd.isna(got.loc["HCM", "distance_to_nearest_store_km"])
    assert list(got.columns) == COLUMNS


# --- RFM -------------------------------------------------------------------------------------------------------

# customer -> (orders, days since the last order, total per order); K3/K4 tie on orders and on spend
RFM_INPUT = {
    "K0": (1, 0, 100),
    "K1": (2, 5, 100),
    "K2": (3, 10, 100),
    "K3": (4, 20, 100),
    "K4": (4, 30, 100),
    "K5": (5, 40, 50),
    "K6": (6, 50, 200),
    "K7": (7, 60, 200),
    "K8": (8, 70, 300),
    "K9": (9, 80, 300),
}
RFM_EXPECTED = {  # (r, f, m)
    "K0": (5, 1, 1),
    "K1": (5, 1, 1),
    "K2": (4, 2, 2),
    "K3": (4, 2, 3),
    "K4": (3, 3, 3),  # same orders as K3 but a later key: the tie is split at the quintile edge
    "K5": (3, 3, 2),  # spend 250 ranks between K1 (200) and K2 (300)
    "K6": (2, 4, 4),
    "K7": (2, 4, 4),
    "K8": (1, 5, 5),
    "K9": (1, 5, 5),
}


@pytest.fixture(scope="module")
def rfm(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    orders = []
    for cid, (n, days, total) in RFM_INPUT.items():
        # the last order on `days` before the run date, earlier ones further back
        orders += [(cid, f"{cid}-{i}", local(days + i), total, 0, None) for i in range(n)]
    contacts = contacts_frame([contact(cid) for cid in [*RFM_INPUT, "NOBUY"]])
    return compute(tmp_path_factory.mktemp("rfm"), contacts, orders_frame(orders))


def test_rfm_quintiles_over_buyers(rfm: pd.DataFrame) -> None:
    got = {cid: (rfm.loc[cid, "r_score"], rfm.loc[cid, "f_score"], rfm.loc[cid, "m_score"]) for cid in RFM_INPUT}
    assert got == RFM_EXPECTED
    assert rfm.loc["K0", "rfm_score"] == "511"
    assert rfm.loc["K3", "rfm_score"] == "423"
    assert rfm.loc["K9", "rfm_score"] == "155"
    assert rfm.loc["K4", "recency_days"] == 30 and rfm.loc["K5", "monetary_total"] == 250


def test_rfm_is_empty_for_non_buyers(rfm: pd.DataFrame) -> None:
    row = rfm.loc["NOBUY"]
    assert pd.isna(row["r_score"]) and pd.isna(row["f_score"]) and pd.isna(row["m_score"])
    assert pd.isna(row["rfm_score"])


# --- configured CRM attributes -----------------------------------------------------------------------------------

EXTRAS = FeaturesConfig(
    crm_attributes={
        "interests": "string",
        "works_remotely": "boolean",
        "pet_owner": "boolean",  # not a canonical contacts column: carried because the contacts frame has it
        "loyalty_points": "integer",
    }
)


def test_configured_crm_attributes_flow_through_typed(tmp_path: Path) -> None:
    rows = [
        contact("K1", interests="running;travel", works_remotely=True, pet_owner="yes", loyalty_points="120"),
        contact("K2", interests=None, works_remotely=False, pet_owner="no", loyalty_points="12a"),
    ]
    contacts = contacts_frame(rows)
    contacts["works_remotely"] = contacts["works_remotely"].astype("boolean")
    extras = crm_features(EXTRAS)
    got = compute(tmp_path, contacts, orders_frame([("K9", "X", local(1), 5, 0, None)]), extras=extras)
    assert list(got.columns) == [*COLUMNS, "interests", "works_remotely", "pet_owner", "loyalty_points"]
    k1, k2 = got.loc["K1"], got.loc["K2"]
    assert (k1["interests"], k1["works_remotely"], k1["pet_owner"], k1["loyalty_points"]) == (
        "running;travel",
        True,
        True,
        120,
    )
    assert pd.isna(k2["interests"])
    assert (k2["works_remotely"], k2["pet_owner"]) == (False, False)
    assert pd.isna(k2["loyalty_points"])  # "12a" is not an integer: empty, not a failed run
    assert pd.isna(got.loc["K9", "interests"])  # POS-only buyer


def test_configured_attribute_missing_from_contacts_is_an_empty_column(tmp_path: Path) -> None:
    extras = crm_features(FeaturesConfig(crm_attributes={"commute_mode": "string"}))
    got = compute(tmp_path, contacts_frame([contact("K1")]), orders_frame([]), extras=extras)
    assert got["commute_mode"].isna().all() and list(got.columns)[-1] == "commute_mode"


def test_runtime_catalog_adds_configured_attributes(tmp_path: Path) -> None:
    (tmp_path / "features.yaml").write_text(
        "crm_attributes:\n  interests: string\n  works_remotely: boolean\n", encoding="utf-8"
    )
    catalog = features(tmp_path)
    assert catalog[: len(FEATURES)] == FEATURES
    assert [(f.name, f.kind) for f in catalog[len(FEATURES) :]] == [
        ("interests", "string"),
        ("works_remotely", "boolean"),
    ]
    assert features(tmp_path / "nowhere") == FEATURES  # the file is optional


def test_repository_features_config_exposes_the_sample_attributes() -> None:
    from tasks import settings

    config = load_features_config(settings.PROJECT_ROOT / "config")
    assert config.crm_attributes == {"interests": "string", "commute_mode": "string", "works_remotely": "boolean"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("crm_attributes:\n  orders: integer\n", "already a built-in feature"),
        ("crm_attributes:\n  Bad-Name: string\n", "not a usable column name"),
        ("crm_attributes:\n  hobby: text\n", "crm_attributes.hobby"),
        ("crm_atributes: {}\n", "unknown key"),
    ],
)
def test_bad_features_config_fails_with_the_key(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "features.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        features(tmp_path)
    assert message in str(exc.value) and "features.yaml" in str(exc.value)


# --- wired through the pipeline on generated sample data ---------------------------------------------------------


def test_pipeline_builds_360_features_from_sample_sources(
    sample_home: Path, small_sample: SampleData, run_stages: Callable[..., Any]
) -> None:
    run = RUN.isoformat()
    run_stages(run, until="features")
    path = sample_home / "lake" / "features" / "source=audiences" / "table=customer_features" / f"dt={run}"
    got = pd.read_parquet(path).set_index("customer_id", drop=False)
    assert list(got.columns) == [*COLUMNS, "interests", "commute_mode", "works_remotely"]

    crm = small_sample.contacts.drop_duplicates("customer_id", keep=False).set_index("customer_id")
    crm = crm[crm.index.isin(got.index)]
    assert len(crm) > 300
    assert (got.loc[crm.index, "interests"].fillna("") == crm["interests"]).all()
    told = crm.index[crm["works_remotely"] != ""]
    assert (got.loc[told, "works_remotely"].astype(bool) == (crm.loc[told, "works_remotely"] == "true")).all()
    assert got.loc[crm.index[crm["works_remotely"] == ""], "works_remotely"].isna().all()
    business = crm.index[crm["customer_type"] == "business"]
    assert len(business) and got.loc[business, "company"].notna().all()
    assert (got.loc[business, "customer_type"] == "business").all()

    placed = crm.index[crm["latitude"] != ""]
    dist = got.loc[placed, "distance_to_nearest_store_km"]
    assert dist.notna().all() and got.loc[placed, "nearest_store"].str.fullmatch(r"S\d{3}").all()
    assert got.loc[crm.index[crm["latitude"] == ""], "distance_to_nearest_store_km"].isna().all()
    # homes are drawn 1-25 km from a store of their province; Nghệ An has none (Hà Nội's are ~250 km away)
    # (as written in the CRM: truth_province counts Bình Dương as Hồ Chí Minh, but those homes are in Bình Dương)
    written = {spelled: prov for prov, (_, spellings) in PROVINCES.items() for spelled in spellings}
    province = crm.loc[placed, "province"].map(written)
    nghe_an = list(province.index[province == "Nghệ An"])
    with_store = list(province.index[province.isin(["Hồ Chí Minh", "Hà Nội", "Đà Nẵng"])])
    assert with_store and (dist[with_store] <= 25.01).all()
    assert nghe_an and (dist[nghe_an] > 150).all()
    buyers = got[got["orders_last_365d"] > 0]
    assert len(buyers) and buyers["categories_last_365d"].notna().all()
    assert set(got["rfm_score"].dropna().str.len()) == {3}
    assert got.loc[got["orders"] == 0, "rfm_score"].isna().all()


# --- preferences and ties ---------------------------------------------------------------------------------------


def test_online_orders_do_not_hide_the_preferred_store(tmp_path: Path) -> None:
    """Three online orders (no store) and one at S2: the preferred store is S2, the channel online; a
    customer who never bought in a store has no preferred store."""
    orders = orders_frame(
        [("MIX", f"M{i}", local(i), 10, 0, None) for i in range(4)] + [("WEB", "W1", local(1), 10, 0, None)]
    )
    orders["store_id"] = [None, None, None, "S2", None]
    orders["channel"] = ["online", "online", "online", "store", "online"]
    feats = compute(tmp_path, contacts_frame([contact("MIX"), contact("WEB")]), orders)
    assert feats.loc["MIX", "preferred_store"] == "S2"
    assert feats.loc["MIX", "preferred_channel"] == "online"
    assert pd.isna(feats.loc["WEB", "preferred_store"])


def test_latest_source_and_survey_answer_at_the_same_instant_go_to_the_smaller_value(tmp_path: Path) -> None:
    at = local(2)
    web = web_frame([("TIE", "page_view", 1, at, "https://shop.vn/", None, "Chrome")] * 3)
    web["traffic_source"] = ["zalo", "facebook", None]
    surveys = pd.DataFrame(
        {
            "customer_id": ["TIE"] * 3,
            "answered_at": pd.to_datetime([at, at, local(5)], utc=True),
            "nps_score": pd.array([9, 7, 1], dtype="Int64"),
            "csat_score": pd.array([5, 3, 1], dtype="Int64"),
        }
    )
    for attempt in range(2):  # the same answer on every run
        (tmp_path / str(attempt)).mkdir()
        feats = compute(tmp_path / str(attempt), contacts_frame([contact("TIE")]), orders_frame([]), web,
                        {"survey_responses": surveys})  # fmt: skip
        assert feats.loc["TIE", "traffic_source"] == "facebook"
        assert feats.loc["TIE", "nps_latest"] == 7 and feats.loc["TIE", "csat_latest"] == 3


def test_first_page_and_latest_source_come_from_their_own_instants_across_sessions(tmp_path: Path) -> None:
    """The earliest page view and the latest sourced event sit in different sessions; at each instant two
    events tie and the smaller value wins. Events without a value at a later instant, or of another kind at
    an earlier one, must not take over."""
    rows = [
        ("PG", "session_start", 1, local(9), "https://shop.vn/zz", None, "Chrome"),  # earlier, not a page view
        ("PG", "page_view", 1, local(8), "https://shop.vn/b", None, "Chrome"),
        ("PG", "page_view", 2, local(8), "https://shop.vn/a", None, "Chrome"),  # same instant, other session
        ("PG", "view_item", 2, local(8), "https://shop.vn/0", None, "Chrome"),  # same instant, not a page view
        ("PG", "page_view", 2, local(3), "https://shop.vn/c", None, "Chrome"),
        ("PG", "view_item", 3, local(1), "https://shop.vn/p", None, "Chrome"),
        ("PG", "view_item", 4, local(1), "https://shop.vn/q", None, "Chrome"),
        ("PG", "page_view", 5, local(0, 9), "https://shop.vn/d", None, "Chrome"),  # latest, but no source
    ]
    web = web_frame(rows)
    web["traffic_source"] = ["organic", "organic", "organic", "organic", "organic", "zalo", "email", None]
    for attempt in range(2):  # the same answer on every run
        (tmp_path / str(attempt)).mkdir()
        feats = compute(tmp_path / str(attempt), contacts_frame([contact("PG")]), orders_frame([]), web)
        assert feats.loc["PG", "first_page"] == "https://shop.vn/a"
        assert feats.loc["PG", "traffic_source"] == "email"


def test_profile_without_a_key_is_not_a_buyer_in_the_rfm_tiles(tmp_path: Path) -> None:
    """Five buyers with 1..5 orders get f_scores 1..5; a keyless profile's orders must not take a tile."""
    rows = [(f"B{n}", f"B{n}-{i}", local(i), 10, 0, None) for n in range(1, 6) for i in range(n)]
    rows += [("GHOST", f"G{i}", local(i), 10, 0, None) for i in range(9)]
    orders = orders_frame(rows)
    contacts = contacts_frame([contact(f"B{n}") for n in range(1, 6)] + [contact("GHOST")])
    views = {"customers": build_profiles(contacts, orders), "orders": orders, "web_events": EMPTY_WEB}
    views["customers"]["customer_key"] = views["customers"]["customer_id"].where(
        views["customers"]["customer_id"] != "GHOST"
    )
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone='UTC'")
        for name, frame in views.items():
            frame.to_parquet(tmp_path / f"{name}.parquet", index=False)
            con.read_parquet(str(tmp_path / f"{name}.parquet")).create_view(name)
        feats = compute_features(con, WINDOW).dropna(subset=["customer_key"]).set_index("customer_key")
    finally:
        con.close()
    assert feats["f_score"].to_dict() == {f"B{n}": n for n in range(1, 6)}
