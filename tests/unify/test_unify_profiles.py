"""build_profiles: one normalized profile per customer_id, from CRM contacts plus POS-only buyers."""

from __future__ import annotations

from datetime import date
from typing import Any

import pandas as pd

from tasks.unify.profiles import ORDER_COLUMNS, build_profiles, unified_orders


def _contact(contact_id: str, customer_id: str | None, updated_at: str | None, **kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "contact_id": contact_id,
        "customer_id": customer_id,
        "full_name": "Nguyễn Thị Hoa",
        "email": " Hoa.Nguyen@Example.COM ",
        "phone": "091 234 5678",
        "gender": "female",
        "birthday": date(1995, 3, 8),
        "province": "TP.HCM",
        "email_opt_in": True,
        "sms_opt_in": True,
        "ads_opt_in": False,
        "member_since": date(2022, 5, 1),
        "nps_score": 8,
        "csat_score": 4,
        "updated_at": pd.Timestamp(updated_at, tz="UTC") if updated_at else pd.NaT,
    }
    row.update(kw)
    return row


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    for col in ("email_opt_in", "sms_opt_in", "ads_opt_in"):
        frame[col] = frame[col].astype("boolean")
    return frame


def _orders(*customer_ids: str | None) -> pd.DataFrame:
    return pd.DataFrame({"order_id": [f"O{i}" for i in range(len(customer_ids))], "customer_id": list(customer_ids)})


def test_latest_contact_wins_regardless_of_row_order() -> None:
    contacts = _frame(
        [
            _contact("C2", "K1", "2026-11-20", full_name="Newest", email="new@shop.vn", nps_score=10),
            _contact("C1", "K1", "2026-01-01", full_name="Oldest", email="old@shop.vn"),
            _contact("C3", "K1", None, full_name="Undated"),
            _contact("C4", "K1", "2026-06-01", full_name="Middle"),
        ]
    )
    prof = build_profiles(contacts, _orders())
    assert len(prof) == 1
    row = prof.iloc[0]
    assert row["customer_key"] == "K1"
    assert row["full_name"] == "Newest"
    assert row["email"] == "new@shop.vn"
    assert row["nps_latest"] == 10


def test_values_are_normalized() -> None:
    contacts = _frame(
        [
            _contact("C1", "K1", "2026-11-01"),
            _contact("C2", "K2", "2026-11-01", email="bad@@mail", phone="12", province="Bình Dương"),
            _contact("C3", "K3", "2026-11-01", email=None, phone="(+84) 91-234-5678", province="Atlantis"),
        ]
    )
    prof = build_profiles(contacts, _orders()).set_index("customer_key")
    assert prof.loc["K1", "email"] == "hoa.nguyen@example.com"
    assert prof.loc["K1", "phone"] == "+84912345678"
    assert prof.loc["K1", "province"] == "Hồ Chí Minh"
    assert pd.isna(prof.loc["K2", "email"]) and pd.isna(prof.loc["K2", "phone"])
    assert prof.loc["K2", "province"] == "Hồ Chí Minh"
    assert pd.isna(prof.loc["K3", "email"]) and prof.loc["K3", "phone"] == "+84912345678"
    assert pd.isna(prof.loc["K3", "province"])
    for col in ("email", "phone", "province"):
        assert str(prof[col].dtype) == "string"


def test_contact_without_customer_id_is_not_a_profile() -> None:
    contacts = _frame([_contact("C1", None, "2026-11-01"), _contact("C2", "K2", "2026-11-01")])
    prof = build_profiles(contacts, _orders())
    assert prof["customer_key"].tolist() == ["K2"]


def test_pos_only_buyer_gets_empty_profile() -> None:
    contacts = _frame([_contact("C1", "K1", "2026-11-01")])
    prof = build_profiles(contacts, _orders("K1", "K9", "K9", None)).set_index("customer_key")
    assert sorted(prof.index) == ["K1", "K9"]
    row = prof.loc["K9"]
    assert row["customer_id"] == "K9"
    for col in ("full_name", "email", "phone", "province", "birthday", "gender"):
        assert pd.isna(row[col]), col
    assert [bool(row[c]) for c in ("email_opt_in", "sms_opt_in", "ads_opt_in")] == [False, False, False]
    assert str(prof["email_opt_in"].dtype) == "boolean"
    assert not prof["email_opt_in"].isna().any()


def test_missing_opt_in_becomes_false_and_output_is_sorted() -> None:
    contacts = _frame(
        [
            _contact("C1", "K3", "2026-11-01", email_opt_in=None),
            _contact("C2", "K1", "2026-11-01"),
        ]
    )
    prof = build_profiles(contacts, _orders())
    assert prof["customer_key"].tolist() == ["K1", "K3"]
    assert prof.set_index("customer_key").loc["K3", "email_opt_in"] == False  # noqa: E712


def test_unified_orders_carry_the_customer_key_in_time_order() -> None:
    at = pd.to_datetime(["2026-03-02 10:00", "2026-03-01 09:00", "2026-03-02 10:00", "2026-03-03 08:00"], utc=True)
    orders = pd.DataFrame(
        {
            "order_id": ["O2", "O1", "O0", "O3"],
            "customer_id": ["L1", "L2", "L1", None],
            "store_id": ["S1", "S2", "S1", "S1"],
            "channel": ["store", "store", "online", "store"],
            "ordered_at": at,
            "subtotal_vnd": [100, 200, 300, 400],
            "discount_vnd": [0, 20, 0, 0],
            "total_vnd": [100, 180, 300, 400],
            "updated_at": at,
        }
    )
    out = unified_orders(orders, {"L1": "K-1", "L2": "K-1"})  # two loyalty ids resolved to one customer
    assert list(out.columns) == ORDER_COLUMNS
    # by time, then order id; the guest order keeps an empty key rather than being dropped
    assert list(out["order_id"]) == ["O1", "O0", "O2", "O3"]
    assert out["customer_key"].tolist()[:3] == ["K-1", "K-1", "K-1"] and pd.isna(out["customer_key"].iloc[3])
    assert list(out["total_vnd"]) == [180, 300, 100, 400]
    # a source without vouchers still gives the column, as text
    assert out["voucher_code"].isna().all() and out["voucher_code"].dtype == "string"
