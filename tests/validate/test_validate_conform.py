"""Casting raw text to canonical types: bad values are set aside with a reason, never nulled silently."""

from __future__ import annotations

from datetime import date

import pandas as pd

from tasks.tables import TABLES
from tasks.validate.conform import conform


def _contacts(**overrides: list[object]) -> pd.DataFrame:
    base: dict[str, list[object]] = {
        "contact_id": ["C1", "C2", "C3"],
        "customer_id": ["K1", "K2", "K3"],
        "full_name": ["Nguyễn An", "Lê Bình", None],
        "email": ["a@b.vn", None, "c@d.vn"],
        "phone": ["0912345678", None, None],
        "gender": ["female", "male", None],
        "birthday": ["1990-05-17", "31/02/2020", None],
        "province": ["Hà Nội", None, "Huế"],
        "email_opt_in": ["true", "maybe", "0"],
        "sms_opt_in": ["yes", "no", None],
        "ads_opt_in": ["1", "false", "F"],
        "member_since": ["2020-01-01", "2021-02-03", None],
        "nps_score": ["9", "", "10"],
        "csat_score": ["5", None, "4.0"],
        "updated_at": ["2026-11-01T10:00:00+07:00", "2026-11-02T00:00:00Z", None],
        "_source": ["crm/contacts.csv"] * 3,
        "_row": [1, 2, 3],
    }
    base.update(overrides)
    return pd.DataFrame(base)


def test_casts_and_rejects_with_reasons() -> None:
    out = conform(_contacts(), TABLES["contacts"])
    assert out.rejects == {1: ["cast.birthday: not a valid date", "cast.email_opt_in: not a valid boolean"]}
    f = out.frame
    assert f.loc[0, "birthday"] == date(1990, 5, 17)
    assert f["email_opt_in"].tolist()[0] is True and f["email_opt_in"].tolist()[2] is False
    assert f["ads_opt_in"].tolist() == [True, False, False]
    assert pd.isna(f.loc[1, "sms_opt_in"]) is False and f.loc[1, "sms_opt_in"] == False  # noqa: E712
    assert pd.isna(f.loc[2, "sms_opt_in"])
    assert str(f["nps_score"].dtype) == "Int64"
    assert f["nps_score"].tolist()[0] == 9 and pd.isna(f.loc[1, "nps_score"])  # blank is missing, not a reject
    assert f.loc[2, "csat_score"] == 4
    assert f.loc[0, "updated_at"] == pd.Timestamp("2026-11-01T03:00:00", tz="UTC")
    assert f["_row"].tolist() == [1, 2, 3]
    assert out.missing_required == [] and out.extra_columns == []


def test_integer_with_letters_or_fraction_is_rejected() -> None:
    raw = pd.DataFrame({"order_id": ["O1", "O2", "O3"], "total_vnd": ["12a", "1000", "12.5"]})
    out = conform(raw, TABLES["orders"])
    assert out.rejects[0] == ["cast.total_vnd: not a valid integer"]
    assert out.rejects[2] == ["cast.total_vnd: not a valid integer"]
    assert 1 not in out.rejects
    assert out.frame.loc[1, "total_vnd"] == 1000


def test_bad_timestamp_is_rejected() -> None:
    raw = pd.DataFrame({"order_id": ["O1", "O2"], "ordered_at": ["2026-11-24T10:00:00Z", "yesterday"]})
    out = conform(raw, TABLES["orders"])
    assert out.rejects == {1: ["cast.ordered_at: not a valid timestamp"]}


def test_missing_required_and_extra_columns_are_listed() -> None:
    raw = _contacts().drop(columns=["email", "gender"]).assign(loyalty_tier=["gold", None, None])
    out = conform(raw, TABLES["contacts"])
    assert out.missing_required == ["email"]
    assert "gender" in out.missing_optional and "email" not in out.missing_optional
    assert out.extra_columns == ["loyalty_tier"]
    assert "loyalty_tier" not in out.frame.columns
    assert out.frame["email"].isna().all()
